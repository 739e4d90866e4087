import json
import os

import pytest

from executor.protocol.monitor import Monitor, span
from executor.protocol.writers import (atomic_write_text, box_record, mining_lines, write_infer_result,
                                       write_mining_result)


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


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    path = tmp_path / "r.txt"
    atomic_write_text(str(path), "old")

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        atomic_write_text(str(path), Boom())
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["r.txt"]


def test_mining_lines_sorted_best_first_stable():
    lines = mining_lines([("/a.jpg", 0.1), ("/b.jpg", 0.9), ("/c.jpg", 0.1), ("/d.jpg", -1.0)])
    assert [line.split("\t")[0] for line in lines] == ["/b.jpg", "/a.jpg", "/c.jpg", "/d.jpg"]
    assert lines[0] == "/b.jpg\t0.9\n"
    with pytest.raises(ValueError, match="/x.jpg"):
        mining_lines([("/x.jpg", float("nan"))])


def test_infer_result_forms(tmp_path):
    record = box_record([10.4, 20.6, 30.5, 41.0], "cat", 0.876543219)
    assert record == {"box": {"x": 10, "y": 21, "w": 20, "h": 20}, "class_name": "cat", "score": 0.876543}
    path = tmp_path / "infer-result.json"
    write_infer_result(str(path), {"a.jpg": [record], "b.jpg": []}, "boxes")
    assert json.loads(path.read_text()) == {"detection": {"a.jpg": {"boxes": [record]}, "b.jpg": {"boxes": []}}}
    write_infer_result(str(path), {"a.jpg": []}, "annotations")
    assert json.loads(path.read_text()) == {"detection": {"a.jpg": {"annotations": []}}}
    write_mining_result(str(tmp_path / "r.tsv"), [("/p.jpg", 1.0)])
    assert (tmp_path / "r.tsv").read_text() == "/p.jpg\t1.0\n"
