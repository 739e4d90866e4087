import json
import os

import pytest

from executor.protocol.writers import (atomic_write_text, atomic_writer, box_record, mining_lines,
                                       write_infer_result, write_mining_result)


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    path = tmp_path / "r.txt"
    atomic_write_text(str(path), "old")

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        atomic_write_text(str(path), Boom())
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["r.txt"]


def test_the_one_atomic_writer_writes_bytes_too(tmp_path):
    """Side files (numpy) and the simulator's PNG go through the same writer: bytes land whole or not at all."""
    path = tmp_path / "side.npz"
    with atomic_writer(str(path), binary=True) as handle:
        handle.write(b"\x89first")
    with pytest.raises(RuntimeError):
        with atomic_writer(str(path), binary=True) as handle:
            handle.write(b"half")
            raise RuntimeError("killed while writing")
    assert path.read_bytes() == b"\x89first" and os.listdir(tmp_path) == ["side.npz"]


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
