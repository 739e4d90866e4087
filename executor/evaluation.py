"""Detection metrics on a labelled split, from our own predictions.

- mAP: COCO-style AP at IoU 0.5 (101-point interpolated precision, pycocotools), averaged over the classes
  that have ground truth: the platform's `mAP`. Also AP@[.5:.95] for the log.
- mAR: recall at IoU 0.5 with up to `max_det` detections per image, averaged over the same classes.
- tp / fp / fn at the platform's evaluate_config (iou_thr, conf_thr): detections with score >= conf_thr,
  matched greedily by score to unmatched ground truth of their class with IoU >= iou_thr.

Predictions are made as Ultralytics' validator makes them (conf 0.001, NMS IoU 0.7, 300 per image), so
mAP agrees with `yolo val` on the same split (tests/test_evaluation.py).
"""
import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from executor.dataset import Sample
from executor.loop import run_batches
from executor.model import Detections, Detector

log = logging.getLogger(__name__)
VAL_CONF, VAL_IOU, VAL_MAX_DET = 0.001, 0.7, 300  # Ultralytics' val defaults


@dataclass
class Metrics:
    mAP: float        # AP@0.5
    mAR: float        # recall@0.5
    mAP50_95: float
    tp: int
    fp: int
    fn: int

    def stage_fields(self) -> dict:
        """What result.yaml carries per stage: plain floats in [0, 1] and ints."""
        return {"mAP": float(self.mAP), "mAR": float(self.mAR), "tp": int(self.tp), "fp": int(self.fp),
                "fn": int(self.fn)}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xyxy boxes."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float64)
    a, b = a.astype(np.float64), b.astype(np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def count_matches(samples: Sequence[Sample], predictions: Sequence[Detections], iou_thr: float,
                  conf_thr: float) -> tuple[int, int, int]:
    """(tp, fp, fn) over the split; each ground-truth box matches at most one detection."""
    tp = fp = fn = 0
    for sample, det in zip(samples, predictions):
        keep = det.conf >= conf_thr
        boxes, scores, classes = det.xyxy[keep], det.conf[keep], det.cls[keep]
        for cls in np.union1d(np.unique(sample.classes), np.unique(classes)):
            gt = sample.boxes[sample.classes == cls]
            mine = classes == cls
            order = np.argsort(-scores[mine], kind="stable")
            iou = box_iou(boxes[mine][order], gt)
            used = np.zeros(len(gt), bool)
            for row in iou:
                candidates = np.where(~used & (row >= iou_thr))[0]
                if len(candidates):
                    used[candidates[np.argmax(row[candidates])]] = True
                    tp += 1
                else:
                    fp += 1
            fn += int((~used).sum())
    return tp, fp, fn


def coco_metrics(samples: Sequence[Sample], predictions: Sequence[Detections], num_classes: int,
                 max_det: int = VAL_MAX_DET) -> tuple[float, float, float]:
    """(AP@0.5, recall@0.5, AP@[.5:.95]) with pycocotools, classes without ground truth left out."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, (sample, det) in enumerate(zip(samples, predictions), 1):
        images.append({"id": image_id, "width": sample.width, "height": sample.height})
        for (x1, y1, x2, y2), cls in zip(sample.boxes.tolist(), sample.classes.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for (x1, y1, x2, y2), cls, score in zip(det.xyxy.tolist(), det.cls.tolist(), det.conf.tolist()):
            results.append({"image_id": image_id, "category_id": int(cls), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score)})
    if not annotations:
        log.warning("the evaluation split has no boxes: mAP and mAR are 0")
        return 0.0, 0.0, 0.0
    if not results:
        return 0.0, 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c} for c in range(num_classes)]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.params.maxDets = [1, 10, max_det]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (iou, recall points, class) at area 'all'
    recall = evaluator.eval["recall"][:, :, 0, -1]             # (iou, class)

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(np.clip(valid.mean(), 0.0, 1.0)) if valid.size else 0.0

    return mean(precision[0]), mean(recall[0]), mean(precision)


def predict_samples(detector: Detector, samples: Sequence[Sample], batch_size: int, workers: int,
                    progress: Callable[[float], None]) -> list[Detections]:
    """Detections for every sample (an image that fails to decode now gets none, with a warning)."""
    found: dict[str, Detections] = {}

    def on_batch(batch) -> None:
        for key, det in zip(batch.keys, detector.predict(batch.canvases, batch.boxes).detections):
            found[key] = det

    keys = list(dict.fromkeys(s.image for s in samples))
    run_batches(keys, detector.img_size, batch_size, workers, on_batch, progress)
    empty = Detections.empty(detector.num_classes)
    return [found.get(s.image, empty) for s in samples]


def evaluate(detector: Detector, samples: Sequence[Sample], iou_thr: float = 0.5, conf_thr: float = 0.005,
             batch_size: int = 16, workers: int = 2, progress: Callable[[float], None] = lambda f: None) -> Metrics:
    """Metrics of `detector` on `samples`. The detector's thresholds are set to Ultralytics' val values."""
    detector.conf_thres = min(VAL_CONF, conf_thr)
    detector.iou_thres, detector.max_det = VAL_IOU, VAL_MAX_DET
    predictions = predict_samples(detector, samples, batch_size, workers, progress)
    ap50, ar50, ap = coco_metrics(samples, predictions, detector.num_classes, VAL_MAX_DET)
    tp, fp, fn = count_matches(samples, predictions, iou_thr, conf_thr)
    return Metrics(ap50, ar50, ap, tp, fp, fn)
