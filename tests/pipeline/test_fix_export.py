"""--export-fixes (executor/pipeline/fix_export.py) on small YOLO and COCO sets read by the real reader, audited
from hand-made predictions (no model): the corrected copy, only fixes at --fix-min-score applied, the originals
untouched, and all or nothing in the folder."""
import csv
import json
import os

import cv2
import numpy as np
import pytest

from executor.pipeline import fix_export
from executor.pipeline.fix_export import export_fixes
from executor.pipeline.label_audit import audit_predictions
from executor.protocol.labelled import read_labelled_set
from mining.audit import TYPES
from tests.platform import fake_detections

MODEL = ["person", "cat", "dog", "bench"]  # the model's classes; the data's are in another order
W, H = 200, 100


def image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((H, W, 3), 128, np.uint8))


def yolo(cls, x1, y1, x2, y2):
    return f"{cls} {(x1 + x2) / 2 / W:.6f} {(y1 + y2) / 2 / H:.6f} {(x2 - x1) / W:.6f} {(y2 - y1) / H:.6f}"


def detections(rows):
    return fake_detections(rows, len(MODEL))


# the predictions, per image: a.jpg's cat is really a dog, its person is right, another person is missing; b.jpg's
# first dog box is poor, its second a duplicate, its cat (line 3) spurious; c.jpg has no label file and two dogs
# (the one at 0.45 is not confident: no finding)
PREDICTIONS = {
    "a.jpg": [([10, 10, 60, 60], 0.9, 2), ([70, 60, 100, 98], 0.9, 0), ([120, 20, 180, 90], 0.8, 0)],
    "b.jpg": [([10, 10, 90, 90], 0.9, 2)],
    "c.jpg": [([20, 20, 80, 80], 0.55, 2), ([100, 20, 160, 80], 0.45, 2)],
}
LABELS = {"a.txt": [yolo(0, 10, 10, 60, 60), yolo(2, 70, 60, 100, 98)],            # data classes: cat dog person
          "b.txt": [yolo(1, 10, 10, 42, 90), yolo(1, 10, 10, 40, 90), yolo(0, 150, 10, 190, 40)]}


@pytest.fixture
def yolo_set(tmp_path):
    root = tmp_path / "data"
    for name in PREDICTIONS:
        image(root / "images" / "val" / name)
    (root / "labels" / "val").mkdir(parents=True)
    for name, lines in LABELS.items():
        (root / "labels" / "val" / name).write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text(f"path: {root}\nval: images/val\nnames: [cat, dog, person]\n")
    return root


def audited(spec, min_conf=0.5):
    samples, labelled = read_labelled_set(str(spec), MODEL)
    predictions = [detections(PREDICTIONS[os.path.basename(s.image)]) for s in samples]
    return samples, labelled, audit_predictions(samples, predictions, MODEL, min_conf, 0.01)


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_yolo_labels_are_copied_with_the_fixes_applied(yolo_set, tmp_path):
    before = snapshot(yolo_set)
    samples, labelled, audit = audited(yolo_set / "data.yaml")
    kinds = sorted((os.path.basename(f.image), f.finding.kind) for f in audit.findings)
    assert kinds == [("a.jpg", "missing"), ("a.jpg", "wrong_class"), ("b.jpg", "duplicate"), ("b.jpg", "poor_box"),
                     ("b.jpg", "spurious"), ("c.jpg", "missing")]
    out = tmp_path / "fixes"
    applied = export_fixes(str(out), audit, samples, labelled, min_score=0.5, types=TYPES)
    assert snapshot(yolo_set) == before  # the originals are untouched
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "README.txt", "fixes.csv", "labels/val/a.txt", "labels/val/b.txt", "labels/val/c.txt"]
    # a: the cat becomes a dog (data class 1), the person (data class 2) is added
    assert (out / "labels/val/a.txt").read_text().splitlines() == [
        "1" + LABELS["a.txt"][0][1:], LABELS["a.txt"][1], yolo(2, 120, 20, 180, 90)]
    # b: line 1 replaced by the prediction's box, line 2 (duplicate) and line 3 (spurious) deleted
    assert (out / "labels/val/b.txt").read_text().splitlines() == [yolo(1, 10, 10, 90, 90)]
    # c had no label file: one is made for the dog at 0.55 (the 0.45 one is no finding)
    assert (out / "labels/val/c.txt").read_text().splitlines() == [yolo(1, 20, 20, 80, 80)]
    assert applied == len(audit.findings) == 6
    rows = list(csv.DictReader((out / "fixes.csv").open()))
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, 7)] and {r["applied"] for r in rows} == {"yes"}
    text = (out / "README.txt").read_text()
    assert f"mirror {yolo_set}" in text and str(yolo_set / "images" / "val") in text
    assert "Applied: 6 of 6 findings, those of the types missing, wrong_class, poor_box, spurious, duplicate" in text


def test_added_and_re_classed_boxes_go_back_to_the_data_classes_through_the_class_map(yolo_set, tmp_path):
    (yolo_set / "data.yaml").write_text(f"path: {yolo_set}\nval: images/val\nnames: [kitty, doggo, human]\n")
    (tmp_path / "map.txt").write_text("kitty\tcat\ndoggo\tdog\n2\tperson\n")
    samples, labelled = read_labelled_set(str(yolo_set / "data.yaml"), MODEL, class_map=str(tmp_path / "map.txt"))
    predictions = [detections(PREDICTIONS[os.path.basename(s.image)]) for s in samples]
    audit = audit_predictions(samples, predictions, MODEL, 0.5, 0.01)
    export_fixes(str(tmp_path / "fixes"), audit, samples, labelled, min_score=0.5, types=TYPES)
    # as without a map: the kitty becomes a doggo (data class 1), a human (data class 2) is added
    assert (tmp_path / "fixes/labels/val/a.txt").read_text().splitlines() == [
        "1" + LABELS["a.txt"][0][1:], LABELS["a.txt"][1], yolo(2, 120, 20, 180, 90)]


def test_by_default_only_fixes_at_the_minimum_score_and_no_spurious_deletions_are_applied(yolo_set, tmp_path):
    samples, labelled, audit = audited(yolo_set / "data.yaml")
    out = tmp_path / "fixes"
    assert export_fixes(str(out), audit, samples, labelled, min_score=0.85) == 2  # duplicate, wrong class
    assert (out / "labels/val/b.txt").read_text().splitlines() == [LABELS["b.txt"][0], LABELS["b.txt"][2]]
    assert (out / "labels/val/a.txt").read_text().splitlines() == ["1" + LABELS["a.txt"][0][1:],
                                                                    LABELS["a.txt"][1]]  # no person added
    assert not (out / "labels/val/c.txt").exists()  # the dog at 0.55 is not added: c.txt would be new
    rows = {(r["type"], r["applied"]) for r in csv.DictReader((out / "fixes.csv").open())}
    assert ("missing", "no: score below --fix-min-score 0.85") in rows and ("duplicate", "yes") in rows
    assert ("spurious", "no: type not in --fix-types") in rows


def test_a_failure_leaves_no_folder_and_an_empty_one_is_filled(yolo_set, tmp_path, monkeypatch):
    samples, labelled, audit = audited(yolo_set / "data.yaml")
    out = tmp_path / "fixes"
    out.mkdir()

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(fix_export, "readme", broken)
    with pytest.raises(OSError):
        export_fixes(str(out), audit, samples, labelled)
    assert sorted(os.listdir(tmp_path)) == ["data", "fixes"] and os.listdir(out) == []
    monkeypatch.undo()
    export_fixes(str(out), audit, samples, labelled)
    assert (out / "README.txt").is_file()


def test_a_coco_json_gets_a_corrected_copy(tmp_path):
    root = tmp_path / "coco"
    for name in ("a.jpg", "b.jpg"):
        image(root / "images" / name)
    data = {"images": [{"id": 7, "file_name": "a.jpg", "width": W, "height": H},
                       {"id": 8, "file_name": "b.jpg", "width": W, "height": H}],
            "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "person"}],
            "annotations": [{"id": 100, "image_id": 7, "category_id": 3, "bbox": [10, 10, 50, 50], "area": 2500,
                             "iscrowd": 0},
                            {"id": 101, "image_id": 7, "category_id": 9, "bbox": [70, 60, 30, 38], "area": 1140,
                             "iscrowd": 0},
                            {"id": 102, "image_id": 8, "category_id": 5, "bbox": [10, 10, 32, 80], "area": 2560,
                             "iscrowd": 0},
                            {"id": 103, "image_id": 8, "category_id": 5, "bbox": [10, 10, 30, 80], "area": 2400,
                             "iscrowd": 0},
                            {"id": 104, "image_id": 8, "category_id": 3, "bbox": [150, 10, 40, 30], "area": 1200,
                             "iscrowd": 0}]}
    (root / "annotations.json").write_text(json.dumps(data))
    before = snapshot(root)
    samples, labelled, audit = audited(root / "annotations.json")
    out = tmp_path / "fixes"
    assert export_fixes(str(out), audit, samples, labelled) == 4  # all but the spurious box
    assert snapshot(root) == before
    fixed = json.loads((out / "annotations.json").read_text())
    assert fixed["images"] == data["images"] and fixed["categories"] == data["categories"]
    by_id = {a["id"]: a for a in fixed["annotations"]}
    assert sorted(by_id) == [100, 101, 102, 104, 105]  # 103 (duplicate) deleted, 105 added
    assert by_id[100]["category_id"] == 5 and by_id[100]["bbox"] == [10, 10, 50, 50]
    assert by_id[100]["audit"]["type"] == "wrong_class"
    assert by_id[101] == data["annotations"][1]
    assert by_id[102]["bbox"] == [10.0, 10.0, 80.0, 80.0] and by_id[102]["area"] == 6400.0
    assert by_id[105] == {"id": 105, "image_id": 7, "category_id": 9, "bbox": [120.0, 20.0, 60.0, 70.0],
                          "area": 4200.0, "iscrowd": 0, "audit": by_id[105]["audit"]}
    assert by_id[105]["audit"]["type"] == "missing"
    assert "'audit' field" in (out / "README.txt").read_text()


def test_a_ymir_index_is_refused(tmp_path):
    samples, labelled, audit = [], type("L", (), {"fmt": "ark", "index_file": "/x.tsv", "source": "the index"})(), None
    with pytest.raises(ValueError, match="YOLO label files or a COCO json"):
        export_fixes(str(tmp_path / "fixes"), audit, samples, labelled)
    assert not (tmp_path / "fixes").exists()
