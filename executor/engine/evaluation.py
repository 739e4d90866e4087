"""Detection metrics on a labelled split, from our own predictions.

- mAP: COCO-style AP at IoU 0.5 (101-point interpolated precision, pycocotools), averaged over the classes
  that have ground truth: the platform's `mAP`. Also AP@[.5:.95] for the log.
- mAR: recall at IoU 0.5 with up to `max_det` detections per image, averaged over the same classes.
- tp / fp / fn at the platform's evaluate_config (iou_thr, conf_thr): detections (each box with its best
  class only, as inference reports it) with score >= conf_thr, matched greedily by score to unmatched
  ground truth of their class with IoU >= iou_thr.

Predictions are made as Ultralytics' validator makes them: images in batches of similar aspect ratio, each
batch letterboxed to one small rectangle (not the square canvas inference uses), conf 0.001, multi-label
class-aware NMS at IoU 0.7, 300 per image. So mAP agrees with `yolo val` on the same split
(tests/test_evaluation.py); square letterboxing alone moves mAP@0.5 by 0.01-0.02 on small splits.
"""
import contextlib
import io
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from executor.engine.detector import Detector
from executor.engine.images import letterbox, read_image
from executor.errors import ImageError
from executor.shared import Sample
from mining.base import Detections
from mining.truth import ImageTruth, match

log = logging.getLogger(__name__)
VAL_CONF, VAL_IOU, VAL_MAX_DET = 0.001, 0.7, 300  # Ultralytics' val defaults
UNCAPPED = 100_000  # max_det of a candidate pass: every box NMS keeps
DECODE_WORKERS = 4  # decoding threads of a labelled pass (the mining template's num_workers_per_gpu)


@dataclass
class Metrics:
    mAP: float        # AP@0.5
    mAR: float        # recall@0.5
    mAP50_95: float
    tp: int
    fp: int
    fn: int
    maskAP: float | None = None       # instance segmentation: mask AP@0.5 (pycocotools iouType 'segm')
    maskAP50_95: float | None = None

    def stage_fields(self) -> dict:
        """What result.yaml carries per stage: plain floats in [0, 1] and ints; segmentation adds maskAP and
        boxAP (= mAP, the box AP@0.5), the instance-segmentation keys of ymir-protocol §5.2."""
        fields = {"mAP": float(self.mAP), "mAR": float(self.mAR), "tp": int(self.tp), "fp": int(self.fp),
                  "fn": int(self.fn)}
        if self.maskAP is not None:
            fields.update(maskAP=float(self.maskAP), boxAP=float(self.mAP))
        return fields


def sample_truth(sample: Sample) -> ImageTruth:
    """A labelled sample as the labelled pass reads it (no ignore regions: the readers dropped crowds)."""
    return ImageTruth(sample.image, sample.boxes, sample.classes)


def count_matches(samples: Sequence[Sample], predictions: Sequence[Detections], iou_thr: float,
                  conf_thr: float) -> tuple[int, int, int]:
    """(tp, fp, fn) over the split; each ground-truth box matches at most one detection of its class."""
    tp = fp = fn = 0
    for sample, det in zip(samples, predictions):
        keep = det.conf >= conf_thr
        found = match(det.xyxy[keep], det.conf[keep], det.cls[keep], sample_truth(sample), iou_threshold=iou_thr)
        tp, fp, fn = tp + int(found.tp.sum()), fp + int(found.fp.sum()), fn + found.misses
    return tp, fp, fn


def coco_summary(images: list, annotations: list, results: list, num_classes: int, iou_type: str = "bbox",
                 max_det: int = VAL_MAX_DET) -> tuple[float, float, float]:
    """(AP@0.5, recall@0.5, AP@[.5:.95]) with pycocotools (`iou_type` 'bbox' or 'segm'), classes without ground
    truth left out; 0 when there is no ground truth or no result."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not annotations:
        log.warning("the evaluation split has no ground truth: the metrics are 0")
        return 0.0, 0.0, 0.0
    if not results:
        return 0.0, 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c} for c in range(num_classes)]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluator.params.maxDets = [1, 10, max_det]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (iou, recall points, class) at area 'all'
    recall = evaluator.eval["recall"][:, :, 0, -1]             # (iou, class)

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(np.clip(valid.mean(), 0.0, 1.0)) if valid.size else 0.0

    return mean(precision[0]), mean(recall[0]), mean(precision)


def coco_metrics(samples: Sequence[Sample], predictions: Sequence[Detections], num_classes: int,
                 max_det: int = VAL_MAX_DET) -> tuple[float, float, float]:
    """(AP@0.5, recall@0.5, AP@[.5:.95]) of the boxes with pycocotools, classes without ground truth left out."""
    images, annotations, results = [], [], []
    for image_id, (sample, det) in enumerate(zip(samples, predictions), 1):
        images.append({"id": image_id, "width": sample.width, "height": sample.height})
        for (x1, y1, x2, y2), cls in zip(sample.boxes.tolist(), sample.classes.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for (x1, y1, x2, y2), cls, score in zip(det.xyxy.tolist(), det.cls.tolist(), det.conf.tolist()):
            results.append({"image_id": image_id, "category_id": int(cls), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score)})
    return coco_summary(images, annotations, results, num_classes, "bbox", max_det)


def primary_labels(det: Detections) -> Detections:
    """Only each box's best class, as inference reports it (multi-label NMS may list a box once per class)."""
    keep = det.cls == det.probs.argmax(1) if len(det) else np.zeros(0, bool)
    return Detections(det.xyxy[keep], det.conf[keep], det.cls[keep], det.probs[keep])


def rect_batches(samples: Sequence[Sample], img_size: int, batch_size: int, stride: int = 32,
                 pad: float = 0.5) -> list[tuple[list[int], tuple[int, int]]]:
    """(sample indices, (height, width)) per batch, as Ultralytics' validator batches: images in the order of
    their file names in the exported dataset, then sorted by aspect ratio (numpy's default sort, so that ties
    fall as they do there), each batch one rectangle just large enough for its flattest / tallest image."""
    names = [f"{os.path.splitext(os.path.basename(s.image))[0]}.{s.suffix}" for s in samples]
    by_name = np.array(sorted(range(len(samples)), key=names.__getitem__), dtype=np.int64)
    ratios_by_name = np.array([samples[i].height / samples[i].width for i in by_name])
    order = by_name[ratios_by_name.argsort()]
    ratios = np.array([s.height / s.width for s in samples])
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        low, high = ratios[chunk].min(), ratios[chunk].max()
        shape = [high, 1] if high < 1 else [1, 1 / low] if low > 1 else [1, 1]
        height, width = (np.ceil(np.array(shape) * img_size / stride + pad).astype(int) * stride).tolist()
        batches.append((chunk.tolist(), (height, width)))
    return batches


def validation_batches(samples: Sequence[Sample], img_size: int, batch_size: int, stride: int,
                       progress: Callable[[float], None]) -> Iterator[tuple[list[int], np.ndarray, list]]:
    """(sample indices, canvases, letterbox maps) of Ultralytics' validation batches, readable images only
    (an image that fails to decode is skipped with a warning); progress after each batch."""
    batches = rect_batches(samples, img_size, batch_size, stride)
    for number, (indices, shape) in enumerate(batches, 1):
        good, canvases, boxes = [], [], []
        for i in indices:
            try:
                canvas, box = letterbox(read_image(samples[i].image), img_size, canvas_shape=shape)
            except ImageError as exc:
                log.warning("evaluation skips an unreadable image: %s", exc)
                continue
            good.append(i)
            canvases.append(canvas)
            boxes.append(box)
        if good:
            yield good, np.stack(canvases), boxes
        progress(number / len(batches))


def predict_samples(detector: Detector, samples: Sequence[Sample], batch_size: int,
                    progress: Callable[[float], None], unreadable: list | None = None) -> list[Detections]:
    """Detections for every sample, made in Ultralytics' validation batches (an unreadable image gets none, and its
    index goes to `unreadable` when given)."""
    found: list[Detections | None] = [None] * len(samples)
    for good, canvases, boxes in validation_batches(samples, detector.img_size, batch_size, max(detector.strides),
                                                    progress):
        for i, det in zip(good, detector.predict_canvases(canvases, boxes)):
            found[i] = det
    if unreadable is not None:
        unreadable.extend(i for i, det in enumerate(found) if det is None)
    return [Detections.empty(detector.num_classes) if det is None else det for det in found]


def predict_candidates(detector: Detector, samples: Sequence[Sample], conf_thres: float, batch_size: int,
                       progress: Callable[[float], None], unreadable: list | None = None) -> list[Detections]:
    """Every box NMS keeps down to `conf_thres` for every sample (the labelled passes: the error model's fit, the
    label audit), made as mining makes them: each image on its own canvas, in mining's loop (executor/engine/loop.py:
    batches of one canvas shape, decoded in threads), so a labelled pass reads what mining reads, at mining's speed
    (Ultralytics' validation batches pad every image to its batch's largest canvas). An unreadable image gets none,
    and its index goes to `unreadable` when given."""
    from executor.engine.loop import Unreadable, batches

    candidates = detector.with_postprocess(conf_thres, detector.iou_thres, UNCAPPED)
    where: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        where.setdefault(sample.image, []).append(i)
    found: list[Detections | None] = [None] * len(samples)
    done = 0
    for item in batches(list(where), candidates.letterbox, batch_size, DECODE_WORKERS,
                        overlap=not candidates.uses_cpu_cores):
        if isinstance(item, Unreadable):
            done += 1
        else:
            for key, det in zip(item.keys, candidates.predict(item)):
                for i in where[key]:
                    found[i] = det
            done += len(item.keys)
        progress(done / max(1, len(where)))
    if unreadable is not None:
        unreadable.extend(i for i, det in enumerate(found) if det is None)
    return [Detections.empty(detector.num_classes) if det is None else det for det in found]


def evaluate(detector: Detector, samples: Sequence[Sample], iou_thr: float, conf_thr: float, batch_size: int,
             progress: Callable[[float], None] = lambda f: None, keep: list | None = None) -> Metrics:
    """Metrics of `detector` on `samples`, predicted with Ultralytics' val post-processing (multi-label NMS);
    `keep`, a list, receives the predictions (the simulator's per-image bootstrap reads them: no second pass)."""
    validator = detector.with_postprocess(min(VAL_CONF, conf_thr), VAL_IOU, VAL_MAX_DET, multi_label=True)
    predictions = predict_samples(validator, samples, batch_size, progress)
    if keep is not None:
        keep.extend(predictions)
    ap50, ar50, ap = coco_metrics(samples, predictions, detector.num_classes, VAL_MAX_DET)
    tp, fp, fn = count_matches(samples, [primary_labels(d) for d in predictions], iou_thr, conf_thr)
    return Metrics(ap50, ar50, ap, tp, fp, fn)
