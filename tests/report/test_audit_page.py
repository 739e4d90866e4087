"""The label audit's page (executor/report/audit_collect.py, audit_page.py) from hand-made samples and predictions
on synthetic images, no model: the cards per type, worst first and capped, the counts table, the run's header, the
boxes drawn in their styles, self-contained, and a failure to write it is a warning."""
import base64
import logging
import re

import cv2
import numpy as np
import pytest

from executor.pipeline.audit_report import audit_page_data, write_audit_page
from executor.pipeline.label_audit import audit_predictions
from executor.report import audit_page
from executor.report.audit_page import ACCUSED_RGB, PREDICTION_RGB, TRUTH_RGB, audit_html, card_thumbnail, \
    crop_region
from executor.shared import Sample
from tests.platform import fake_detections

NAMES = ["cat", "dog", "bench"]
ABOUT = {"model": {"weights": "/models/best.pt", "classes": NAMES},
         "data": {"spec": "/data/data.yaml", "source": "/data/data.yaml key 'val'", "split": "val"},
         "settings": {"confident_conf": 0.5, "support_conf": 0.01}}


def write_image(path, width=320, height=240):
    """A grey image with soft noise: JPEG-friendly, and no colour of its own (the boxes' colours stand out)."""
    rng = np.random.default_rng(len(str(path)))
    grey = cv2.GaussianBlur(rng.integers(60, 190, (height, width), dtype=np.uint8), (9, 9), 0)
    cv2.imwrite(str(path), cv2.merge([grey, grey, grey]))
    return str(path)


def sample(path, boxes, classes):
    return Sample(path, 320, 240, "jpg", np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64),
                  sources=[f"{path[:-4]}.txt line {i + 1}" for i in range(len(classes))])


def detections(rows):
    return fake_detections(rows, len(NAMES))


def make_audit(tmp_path, missing_images=3):
    """`missing_images` images each with a labelled cat and a dog nobody labelled (a missing box, confidence
    falling image by image), one with a cat predicted dog (wrong class) and a spurious cat, one unreadable file."""
    samples, predictions = [], []
    for i in range(missing_images):
        samples.append(sample(write_image(tmp_path / f"m{i}.jpg"), [[20, 20, 120, 120]], [0]))
        predictions.append(detections([([20, 20, 120, 120], 0.9, 0), ([180, 60, 300, 200], 0.95 - 0.01 * i, 1)]))
    samples.append(sample(write_image(tmp_path / "w.jpg"), [[40, 40, 140, 140], [200, 100, 260, 160]], [0, 0]))
    predictions.append(detections([([40, 40, 140, 140], 0.8, 1)]))
    samples.append(sample(str(tmp_path / "gone.jpg"), [[10, 10, 50, 50], [12, 10, 50, 50]], [1, 1]))
    predictions.append(detections([([10, 10, 50, 50], 0.9, 1)]))  # a duplicate on an image deleted since
    return samples, audit_predictions(samples, predictions, NAMES, 0.5, 0.01)


def test_cards_are_grouped_by_type_worst_first_and_capped(tmp_path):
    samples, audit = make_audit(tmp_path, missing_images=5)
    data = audit_page_data(audit, samples, ABOUT, per_type=3)
    assert [len(data.cards[k]) for k in ("missing", "wrong_class", "poor_box", "spurious", "duplicate")] == \
        [3, 1, 0, 1, 1]
    assert data.hidden("missing") == 2 and data.hidden("spurious") == 0
    missing = data.cards["missing"]
    assert [c.score for c in missing] == pytest.approx([0.95, 0.94, 0.93])
    assert [c.image for c in missing] == [str(tmp_path / f"m{i}.jpg") for i in range(3)]
    assert missing[0].accused == -1 and missing[0].prediction == ((180.0, 60.0, 300.0, 200.0), "dog 0.95")
    assert missing[0].truth == [((20.0, 20.0, 120.0, 120.0), "cat")]
    assert missing[0].fix == "add a 'dog' box at [180.0, 60.0, 300.0, 200.0]"
    wrong = data.cards["wrong_class"][0]
    assert (wrong.accused, wrong.class_name, wrong.where) == (0, "cat", f"{tmp_path / 'w'}.txt line 1")
    assert '<div class="path" title="' + f"{tmp_path / 'w'}.txt line 1" + '">w.txt line 1</div>' in audit_html(data)
    assert wrong.evidence == "'dog' predicted at 0.80, IoU 1.00 with the box"
    assert wrong.fix == "change the class to 'dog'"
    assert data.cards["spurious"][0].evidence == "no prediction of any class overlaps it"
    duplicate = data.cards["duplicate"][0]
    assert duplicate.prediction is None and duplicate.evidence.startswith(
        f"overlaps {tmp_path / 'gone'}.txt line 1 of the same class by IoU 0.95")

    text = audit_html(data)
    sections = re.findall(r'<section id="([a-z_]+)">', text)
    assert sections == ["run", "counts", "how", "missing", "wrong_class", "poor_box", "spurious", "duplicate"]
    ranks = [(kind, int(rank)) for kind, rank in re.findall(r'data-section="([a-z_]+)" data-rank="(\d+)"', text)]
    assert [k for k, _ in ranks] == ["missing"] * 3 + ["wrong_class", "spurious", "duplicate"]
    assert [r for k, r in ranks if k == "missing"] == sorted(r for k, r in ranks if k == "missing")
    assert "2 more missing findings, with lower scores, are listed in audit.json" in text
    assert "unreadable: " in text or "image unreadable" in text  # gone.jpg: the placeholder and its reason


def test_the_page_has_the_run_and_the_counts_and_needs_nothing_else(tmp_path):
    samples, audit = make_audit(tmp_path)
    text = audit_html(audit_page_data(audit, samples, ABOUT), "my-audit.json")
    assert "<script" not in text and "http://" not in text and "https://" not in text and "@import" not in text
    assert "Label audit · best.pt" in text and "/models/best.pt" in text and "(3 classes)" in text
    assert "/data/data.yaml key &#x27;val&#x27;" in text and "confident_conf <code>0.5</code>" in text
    counts = re.search(r'<table class="counts">(.*?)</table>', text).group(1)
    rows = [[re.sub("<.*?>", "", cell) for cell in re.findall(r"<t[dh]>(.*?)</t[dh]>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", counts)]
    assert rows == [["class", "missing", "wrong_class", "poor_box", "spurious", "duplicate", "all"],
                    ["dog", "3", "", "", "", "1", "4"],
                    ["cat", "", "1", "", "1", "", "2"],
                    ["all classes", "3", "1", "0", "1", "1", "6"]]
    images = re.findall(r'<img class="thumb" src="data:image/jpeg;base64,([^"]+)"', text)
    assert len(images) == 6
    decoded = [cv2.imdecode(np.frombuffer(base64.b64decode(b), np.uint8), cv2.IMREAD_COLOR) for b in images]
    assert all(image is not None and image.size for image in decoded)
    assert "listed in my-audit.json" not in text and "Every finding is in my-audit.json" in text


def near(image_rgb, colour, tolerance=40) -> np.ndarray:
    return np.abs(image_rgb.astype(int) - np.array(colour)).max(axis=2) <= tolerance


def test_the_thumbnail_draws_truth_green_prediction_orange_and_the_accused_box_bold(tmp_path):
    samples, audit = make_audit(tmp_path)
    data = audit_page_data(audit, samples, ABOUT)
    wrong, error = card_thumbnail(data.cards["wrong_class"][0])
    assert error is None
    assert near(wrong, ACCUSED_RGB).sum() > 100 and near(wrong, PREDICTION_RGB).sum() > 20
    missing, _ = card_thumbnail(data.cards["missing"][0])
    assert near(missing, PREDICTION_RGB).sum() > 100 and near(missing, TRUTH_RGB).sum() > 20
    assert near(missing, ACCUSED_RGB).sum() == 0  # no labelled box is accused of a missing one
    # the dashed prediction leaves gaps along its edge: a solid box would colour the whole top row of the box
    crop = crop_region([(180, 60, 300, 200)], 320, 240)
    scale = missing.shape[1] / (crop[2] - crop[0])
    top = int(round((60 - crop[1]) * scale))
    left, right = int(round((180 - crop[0]) * scale)) + 8, int(round((300 - crop[0]) * scale)) - 8
    edge = near(missing[top - 1:top + 2, left:right], PREDICTION_RGB).any(axis=0)
    assert 0.3 < edge.mean() < 0.9, edge.mean()
    _, error = card_thumbnail(data.cards["duplicate"][0])
    assert error  # gone.jpg: a placeholder with the reason


def test_crop_region_holds_the_finding_with_a_margin_inside_the_image():
    left, top, right, bottom = crop_region([(500, 400, 520, 420)], 1000, 800)
    assert left < 500 and top < 400 and right > 520 and bottom > 420
    assert right - left >= 0.3 * 800 - 1 and bottom - top >= 0.3 * 800 - 1
    assert crop_region([(0, 0, 1000, 800)], 1000, 800) == (0, 0, 1000, 800)


def test_a_failure_to_write_the_page_is_a_warning(tmp_path, caplog, monkeypatch):
    samples, audit = make_audit(tmp_path)
    out = tmp_path / "out"
    out.mkdir()

    def broken(*args):
        raise RuntimeError("no thumbnails today")

    monkeypatch.setattr(audit_page, "audit_html", broken)
    with caplog.at_level(logging.WARNING):
        assert not write_audit_page(audit, samples, ABOUT, str(out / "audit.html"), str(out / "audit.json"))
    assert "the audit page" in caplog.text and "no thumbnails today" in caplog.text
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    assert write_audit_page(audit, samples, ABOUT, str(out / "audit.html"), str(out / "audit.json"))
    assert (out / "audit.html").read_text().startswith("<!DOCTYPE html>")


def test_the_page_says_whose_images_the_model_trained_on(tmp_path):
    """Cards name their split (an in-sample one warned), the run says what is known of the model's training."""
    samples, _ = make_audit(tmp_path)
    predictions = [detections([([180, 60, 300, 200], 0.9, 1)])] * len(samples)
    audit = audit_predictions(samples, predictions, NAMES, 0.5, 0.01, split="train")
    text = audit_html(audit_page_data(audit, samples, {**ABOUT, "data": {**ABOUT["data"], "in_training_set": True}}))
    assert text.count('<span class="split warn">train: in-sample</span>') == len(audit.findings)
    assert "these images: the audit is in-sample" in text

    folds = [{"fold": 1, "images": 3, "trained_on": 2, "mAP50": 0.4191}, {"fold": 2, "images": 2, "trained_on": 3,
                                                                         "mAP50": None}]
    audit = audit_predictions(samples, predictions, NAMES, 0.5, 0.01, split="fold 2")
    text = audit_html(audit_page_data(audit, samples, {**ABOUT, "model": {**ABOUT["model"], "folds": folds}}))
    assert text.count('<span class="split">fold 2</span>') == len(audit.findings)
    assert ("cross-fitted: 2 folds, each audited by a model that never saw it (fold 1: 3 images, trained on 2, "
            "held-out mAP50 0.419; fold 2: 2 images, trained on 3)") in text
    unknown = audit_html(audit_page_data(audit, samples, {**ABOUT, "data": {**ABOUT["data"], "in_training_set": None}}))
    assert "<th>Trained on</th><td>unknown</td>" in unknown
