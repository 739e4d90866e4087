import numpy as np
import pytest

from executor.engine.evaluation import coco_metrics, count_matches, primary_labels
from executor.shared import Sample
from mining.base import Detections


def sample(boxes, classes, size=(200, 100)) -> Sample:
    return Sample("x.jpg", size[0], size[1], "jpg", np.asarray(boxes, np.float32).reshape(-1, 4),
                  np.asarray(classes, np.int64))


def dets(boxes, classes, scores, num_classes=3) -> Detections:
    n = len(scores)
    probs = np.zeros((n, num_classes), np.float32)
    probs[np.arange(n), classes] = scores
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(classes, np.int64), probs)


def test_perfect_predictions_score_one():
    gt = [sample([[10, 10, 50, 50], [60, 20, 90, 80]], [0, 1]), sample([[0, 0, 30, 30]], [2])]
    pred = [dets([[10, 10, 50, 50], [60, 20, 90, 80]], [0, 1], [0.9, 0.8]), dets([[0, 0, 30, 30]], [2], [0.7])]
    ap50, ar50, ap = coco_metrics(gt, pred, 3)
    assert (ap50, ar50, ap) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))
    assert count_matches(gt, pred, 0.5, 0.005) == (3, 0, 0)


def test_missed_class_wrong_class_and_duplicates():
    gt = [sample([[10, 10, 50, 50], [60, 20, 90, 80]], [0, 1])]
    # class 0 found twice (one duplicate), class 1 predicted as class 2 (class 2 has no ground truth)
    pred = [dets([[10, 10, 50, 50], [11, 11, 50, 50], [60, 20, 90, 80]], [0, 0, 2], [0.9, 0.6, 0.8])]
    ap50, ar50, _ = coco_metrics(gt, pred, 3)
    assert ap50 == pytest.approx(0.5) and ar50 == pytest.approx(0.5)  # mean over classes 0 (1.0) and 1 (0.0)
    assert count_matches(gt, pred, 0.5, 0.005) == (1, 2, 1)
    assert count_matches(gt, pred, 0.5, 0.7) == (1, 1, 1)  # the 0.6 duplicate is below conf_thr
    assert count_matches(gt, pred, 0.99, 0.005) == (1, 2, 1)


def test_iou_threshold_decides_a_match():
    gt = [sample([[0, 0, 10, 10]], [0])]
    pred = [dets([[5, 0, 15, 10]], [0], [0.9])]  # IoU 1/3
    assert coco_metrics(gt, pred, 3)[0] == pytest.approx(0.0)
    assert count_matches(gt, pred, 0.3, 0.0) == (1, 0, 0) and count_matches(gt, pred, 0.5, 0.0) == (0, 1, 1)


def test_no_predictions_and_no_ground_truth():
    assert coco_metrics([sample([[0, 0, 10, 10]], [0])], [dets([], [], [])], 3) == (0.0, 0.0, 0.0)
    assert coco_metrics([sample([], [])], [dets([[0, 0, 10, 10]], [0], [0.9])], 3) == (0.0, 0.0, 0.0)
    assert count_matches([sample([], [])], [dets([[0, 0, 10, 10]], [0], [0.9])], 0.5, 0.0) == (0, 1, 0)


def test_primary_labels_keep_each_box_best_class():
    probs = np.array([[0.9, 0.6, 0.0], [0.9, 0.6, 0.0]], np.float32)
    det = Detections(np.array([[0, 0, 10, 10]] * 2, np.float32), np.array([0.9, 0.6], np.float32),
                     np.array([0, 1], np.int64), probs)  # one box reported once per class by multi-label NMS
    assert primary_labels(det).cls.tolist() == [0]


@pytest.mark.slow
def test_map_agrees_with_ultralytics_val(tmp_path):
    """Our pycocotools mAP@0.5 from our own predictions vs `ultralytics val` on the same split (COCO weights)."""
    from ultralytics import YOLO

    from executor.engine.evaluation import evaluate
    from executor.protocol.dataset import export_yolo, read_dataset
    from tests.platform import template_detector
    from tests.ymir_builders import WEIGHTS_DIR, write_coco_val_dataset

    names = write_coco_val_dataset(tmp_path / "in", 2, 48)
    train, val = read_dataset(str(tmp_path / "in" / "train-index.tsv"), str(tmp_path / "in" / "val-index.tsv"),
                              names, "coco:raw")
    data_yaml = export_yolo(str(tmp_path / "yolo"), (train, val), names)
    weights = str(WEIGHTS_DIR / "yolov8n.pt")
    ours = evaluate(template_detector(320, class_names=names), val.samples, 0.5, 0.005, batch_size=8)
    theirs = YOLO(weights).val(data=data_yaml, imgsz=320, batch=8, device="cpu", plots=False, split="val",
                               project=str(tmp_path), name="val", verbose=False)
    print(f"mAP@0.5 ours {ours.mAP:.4f} ultralytics {theirs.box.map50:.4f}; "
          f"mAP@[.5:.95] ours {ours.mAP50_95:.4f} ultralytics {theirs.box.map:.4f}")
    assert ours.mAP > 0.3
    assert abs(ours.mAP - theirs.box.map50) < 0.01
    assert abs(ours.mAP50_95 - theirs.box.map) < 0.01


def test_rect_batches_follow_aspect_ratio_like_ultralytics():
    from executor.engine.evaluation import rect_batches
    from executor.engine.images import letterbox
    samples = [sample([], [], size=s) for s in ((640, 480), (480, 640), (500, 500), (640, 427))]
    batches = rect_batches(samples, 320, 2)
    assert [b[0] for b in batches] == [[3, 0], [2, 1]]  # sorted by height / width
    assert batches[0][1] == (256, 352) and batches[1][1] == (352, 352)  # ceil(shape * 320 / 32 + 0.5) * 32
    canvas, box = letterbox(np.zeros((427, 640, 3), np.uint8), 320, canvas_shape=(256, 352))
    assert canvas.shape == (256, 352, 3) and box.ratio == pytest.approx(0.5)
    assert (box.pad_x, box.pad_y) == (16.0, 21.0)


def test_the_candidate_pass_keeps_every_box_down_to_its_threshold_and_reports_unreadable_images(tmp_path):
    import cv2

    from executor.engine.evaluation import UNCAPPED, predict_candidates
    from tests.pipeline.fake_detector import PixelDetector

    image = np.zeros((96, 128, 3), np.uint8)
    image[16:48, 16:48] = (0, 0, 255)   # red (BGR): the fake detector's class 0
    image[56:88, 72:104] = (0, 255, 0)  # green: class 1
    cv2.imwrite(str(tmp_path / "good.png"), image)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    samples = [Sample(str(tmp_path / name), 128, 96, "png", np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
               for name in ("good.png", "broken.jpg")]
    detector = PixelDetector("w.pt", 128, max_det=1)
    unreadable = []
    found = predict_candidates(detector, samples, 0.05, 2, lambda f: None, unreadable)
    assert unreadable == [1] and len(found[1]) == 0
    assert len(found[0]) > 1 and found[0].conf.min() >= 0.05 and {0, 1} <= set(found[0].cls.tolist())
    assert detector.max_det == 1 and UNCAPPED > len(found[0])  # the detector itself keeps its settings
