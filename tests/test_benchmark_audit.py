"""The audit benchmark's own parts (benchmarks/planted.py, benchmarks/audit.py's writers, benchmarks/audit_report.py)
without a model: the planted mistakes are what they claim, the matching and the metric count what they should, and
the written copies read back through read_labelled with the planted boxes where they were planted."""
import math
import os

import numpy as np
import pytest
from PIL import Image as PILImage

from benchmarks import audit_report
from benchmarks import planted as pl
from benchmarks.audit import write_voc, write_yolo
from executor.protocol.labelled import read_labelled


def toy_set(tmp_path, images: int = 30, classes: str = "abc") -> list[pl.Image]:
    """Images of 200x150 with three separate boxes each, of the three `classes`."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(images):
        path = tmp_path / "src" / f"im{i:02d}.jpg"
        path.parent.mkdir(exist_ok=True)
        PILImage.new("RGB", (200, 150)).save(path)
        boxes = []
        for j, x in enumerate((5, 70, 135)):
            y, w, h = int(rng.integers(5, 60)), int(rng.integers(30, 60)), int(rng.integers(30, 80))
            boxes.append(pl.Box(classes[(i + j) % 3], (float(x), float(y), float(x + w), float(y + h))))
        out.append(pl.Image(path.name, str(path), 200, 150, boxes))
    return out


def test_planting_makes_each_type_as_defined_and_is_seeded(tmp_path):
    images = toy_set(tmp_path)
    altered, planted = pl.plant(images, seed=3, rate=0.05)
    assert pl.plant(images, seed=3, rate=0.05)[1] == planted and pl.plant(images, seed=4, rate=0.05)[1] != planted
    assert all(len(i.boxes) == 3 for i in images)  # the originals are untouched
    count = round(0.05 * 90)
    assert {kind: sum(p.kind == kind for p in planted) for kind in pl.TYPES} == {kind: count for kind in pl.TYPES}
    before = {i.key: i for i in images}
    after = {i.key: i for i in altered}
    for p in planted:
        old, new = [b.xyxy for b in before[p.key].boxes], after[p.key].boxes
        if p.kind == pl.MISSING:
            assert p.xyxy in old and p.xyxy not in [b.xyxy for b in new]
        elif p.kind == pl.WRONG_CLASS:
            j = old.index(p.xyxy)
            assert new[j].cls != before[p.key].boxes[j].cls  # no box before it was deleted: indices kept
        elif p.kind == pl.POOR_BOX:
            assert p.xyxy in [b.xyxy for b in new]
            assert pl.POOR_IOU[0] <= max(pl.iou(p.xyxy, o) for o in old) <= pl.POOR_IOU[1]
        elif p.kind == pl.DUPLICATE:
            assert max(pl.iou(p.xyxy, o) for o in old) > pl.DUPLICATE_MIN_IOU
        else:
            others = [b.xyxy for b in new if b.xyxy != p.xyxy] + old
            assert not any(pl.intersects(p.xyxy, o) for o in others)
            assert p.xyxy[2] <= 200 and p.xyxy[3] <= 150
    touched = [p.xyxy for p in planted if p.kind in (pl.MISSING, pl.WRONG_CLASS)]
    assert len(touched) == len(set(touched))


def test_a_finding_hits_a_planted_mistake_of_its_type_once():
    planted = [pl.Planted(pl.MISSING, "a", (0, 0, 10, 10)), pl.Planted(pl.SPURIOUS, "a", (50, 50, 60, 60)),
               pl.Planted(pl.DUPLICATE, "b", (0, 0, 10, 11))]
    found = [pl.Found(pl.SPURIOUS, "a", 0.9, (50, 50, 60, 60)),
             pl.Found(pl.SPURIOUS, "a", 0.8, (50, 50, 60, 60)),       # the same box again: not a second hit
             pl.Found(pl.WRONG_CLASS, "a", 0.7, (50, 50, 60, 60)),    # right box, wrong type
             pl.Found(pl.MISSING, "b", 0.6, (0, 0, 10, 10)),          # right box, wrong image
             pl.Found(pl.MISSING, "a", 0.5, (1, 1, 11, 11)),          # IoU 0.68 with the deleted box
             pl.Found(pl.DUPLICATE, "b", 0.4, (0, 0, 10, 10), other=(0, 0, 10, 11))]  # the copy is its pair's other
    assert pl.hits(found, planted) == [True, False, False, False, True, True]
    assert not pl.on_planted(pl.Found(pl.POOR_BOX, "a", 1, (0, 0, 10, 10)), pl.Planted(pl.POOR_BOX, "a", (0, 0, 10, 7)))


def test_precision_at_k_breaks_ties_at_random_exactly():
    # K = 2: one above the cut (a hit), then 1 place among 4 tied of which 1 is a hit: 1 + 1/4
    assert pl.expected_hits_at_k([0.9, 0.5, 0.5, 0.5, 0.5, 0.1], [1, 0, 1, 0, 0, 1], 2) == pytest.approx(1.25)
    row = pl.at_k([0.9, 0.5, 0.5, 0.5, 0.5, 0.1], [1, 0, 1, 0, 0, 1], 2)
    assert row["precision"] == pytest.approx(0.625) and row["recall"] == pytest.approx(0.625)
    few = pl.at_k([0.9], [True], 3)  # fewer findings than planted: precision over those, recall over K
    assert few["precision"] == 1.0 and few["recall"] == pytest.approx(1 / 3)
    assert math.isnan(pl.at_k([0.9], [True], 0)["precision"])


def test_the_iou_ranking_names_the_planted_box_only():
    boxes = [("a", (0, 0, 10, 10)), ("a", (20, 20, 30, 30)), ("b", (0, 0, 10, 10))]
    planted = [pl.Planted(pl.SPURIOUS, "a", (20, 20, 30, 30))]
    assert pl.iou_baseline(boxes, [0.9, 0.0, 0.0], planted, pl.SPURIOUS)["precision"] == pytest.approx(0.5)
    assert pl.iou_baseline(boxes, [0.0, 0.2, 0.9], planted, pl.SPURIOUS)["precision"] == 0.0
    assert pl.iou_baseline(boxes, [0.9, 0.0, 0.9], planted, pl.SPURIOUS)["precision"] == 1.0


@pytest.mark.parametrize("form", ["voc", "yolo"])
def test_the_written_copy_reads_back_with_the_planted_boxes(tmp_path, form):
    images = toy_set(tmp_path, 12, "abc" if form == "voc" else "012")  # VOC names; YOLO ids, the map by index
    altered, planted = pl.plant(images, seed=0, rate=0.1)
    folder = str(tmp_path / "copy")
    spec = write_voc(altered, folder) if form == "voc" else write_yolo(altered, folder, ["a", "b", "c"])
    model = ["x", "A", "B", "C"]
    to_model = {"a": "A", "b": "B", "c": "C"} if form == "voc" else {"0": "A", "1": "B", "2": "C"}
    (tmp_path / "map.txt").write_text("".join(f"{k}\t{v}\n" for k, v in to_model.items()))
    samples, _ = read_labelled(spec, model, "val", str(tmp_path / "map.txt"))
    by_key = {os.path.basename(s.image): s for s in samples}
    for image in altered:
        sample = by_key[image.key]
        assert len(sample.boxes) == len(image.boxes)
        np.testing.assert_allclose(sample.boxes, [b.xyxy for b in image.boxes], atol=1e-3)
        assert [model[k] for k in sample.classes] == [to_model[b.cls] for b in image.boxes]
    for p in planted:
        if p.kind != pl.MISSING:
            assert max(pl.iou(p.xyxy, b) for b in by_key[p.key].boxes) >= 0.999


def test_targets_and_the_doc_section():
    row = {"planted": 4, "candidates": 40, "audit": {"precision": 0.75, "recall": 0.75, "findings": 9},
           "random": 0.1, "iou": {"precision": 0.5}}
    result = {"sets": {"s": {"types": {k: dict(row) for k in pl.TYPES}, "speed": {"ratio": 0.95},
                             "overall": {"planted": 20, "audit": {"precision": 0.6, "recall": 0.6, "findings": 40},
                                         "random": 0.35}}}}
    met = audit_report.targets(result)
    assert met["s: overall precision@K >= 0.5"] and not met["s: overall precision@K >= 2x random"]
    assert met["s: poor_box precision@K >= 1.5x the IoU ranking"] and met["s: audit images/s >= 0.9x entropy mining"]
    text = "# doc\nbefore\n" + audit_report.BEGIN + "\nold\n" + audit_report.END + "\nafter\n"
    assert audit_report.with_section(text, "NEW\n") == "# doc\nbefore\nNEW\nafter\n"
    assert audit_report.with_section("# doc\n", "NEW\n") == "# doc\n\nNEW\n"
