import os

from executor.protocol.monitor import Monitor, span


def test_monitor_line_and_spans(tmp_path):
    path = tmp_path / "monitor.txt"
    monitor = Monitor(str(path), "t1", interval=0.0)
    stamps = []
    for fraction in (0.0, 0.5, 1.0):
        span(monitor.progress, 0.5, 1.0)(fraction)
        fields = path.read_text().splitlines()[0].split("\t")
        assert len(fields) == 5 and fields[0] == "t1" and fields[3] == "2" and fields[4] == "0"
        assert float(fields[2]) == 0.5 + fraction / 2
        stamps.append(fields[1])
    assert len(set(stamps)) == 3  # the platform only notices a changed timestamp


def test_monitor_progress_is_throttled_by_time_but_the_end_is_always_written(tmp_path):
    path = tmp_path / "monitor.txt"
    monitor = Monitor(str(path), "t1", interval=3600)
    monitor.progress(0.1)  # the first write is never held back
    for i in range(1, 100):
        monitor.progress(0.1 + i / 200)
    assert float(path.read_text().split("\t")[2]) == 0.1 and monitor.percent > 0.5
    monitor.progress(1.0)
    assert float(path.read_text().split("\t")[2]) == 1.0


def test_monitor_failure_has_code_message_and_traceback(tmp_path):
    path = tmp_path / "monitor.txt"
    monitor = Monitor(str(path), "t1")
    monitor.write(0.3)
    monitor.fail(300002, "index x.tsv is empty", ["Traceback (most recent call last):\n  File a\n", "ValueError\n"])
    lines = path.read_text().splitlines()
    assert lines[0].split("\t")[2:] == ["0.3000", "4", "300002"]
    assert lines[1] == "index x.tsv is empty" and lines[2].startswith("Traceback")
    assert [f for f in os.listdir(tmp_path)] == ["monitor.txt"]  # no temp file left

