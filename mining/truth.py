"""Detections against ground truth, box by box: which kept box is a true or a false positive, and how many objects
were missed. The one labelled pass of the project: the error model (mining/errors.py) learns from it, the quality
benchmark counts with it, and the evaluation's TP/FP/FN are its totals.

Matching is COCO's at one IoU: detections by falling confidence, each takes the still unmatched ground-truth box of
its class with the largest IoU if that IoU >= 0.5 (mining.boxes.greedy_match). Ignore regions (COCO crowds, VOC
difficult objects) are neither to be found nor false positives: a detection that matches no countable box but
covers one of its class is ignored, and missing one is no error. Detections of classes the labels never name
(`classes`: a COCO model finding a bench in a VOC image) are ignored too.
"""
from dataclasses import dataclass, field

import numpy as np

from mining.boxes import box_ioa, box_iou, greedy_match

IOU_THRESHOLD = 0.5


def _boxes(rows) -> np.ndarray:
    return np.asarray(rows, np.float64).reshape(-1, 4)


def _ids(rows) -> np.ndarray:
    return np.asarray(rows, np.int64).reshape(-1)


@dataclass
class ImageTruth:
    """One labelled image: the objects that count and the regions to ignore, in the detector's class indices and
    the detections' pixel frame (xyxy, pixel edges)."""
    path: str
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))         # (G, 4)
    cls: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))      # (G,)
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (I, 4) crowd / difficult
    ignore_cls: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    crowd: bool = False  # ignore regions are COCO crowds (matched by intersection over the detection's area)

    def __post_init__(self):
        self.boxes, self.cls = _boxes(self.boxes), _ids(self.cls)
        self.ignore_boxes, self.ignore_cls = _boxes(self.ignore_boxes), _ids(self.ignore_cls)
        if len(self.boxes) != len(self.cls) or len(self.ignore_boxes) != len(self.ignore_cls):
            raise ValueError(f"{self.path}: boxes and classes differ in number")

    @property
    def objects(self) -> int:
        return len(self.boxes)


@dataclass
class Outcomes:
    """Per detection (in the order given): matched a ground-truth box (`tp`) or ignored; the rest are false
    positives. `misses`: ground-truth boxes no detection matched."""
    tp: np.ndarray       # (N,) bool
    ignored: np.ndarray  # (N,) bool
    misses: int

    @property
    def fp(self) -> np.ndarray:
        return ~(self.tp | self.ignored)


@dataclass
class ImageErrors:
    tp: int
    fp: int
    fn: int
    ignored: int  # detections on crowd/difficult regions or of unlabelled classes

    @property
    def errors(self) -> int:
        return self.fp + self.fn


def match(det_xyxy, det_conf, det_cls, truth: ImageTruth, classes=None, iou_threshold: float = IOU_THRESHOLD
          ) -> Outcomes:
    """Each detection of one image a true positive, a false positive or ignored (see the module docstring)."""
    det_xyxy, det_conf, det_cls = _boxes(det_xyxy), np.asarray(det_conf, np.float64).reshape(-1), _ids(det_cls)
    order = np.argsort(-det_conf, kind="stable")
    labelled = np.ones(len(det_conf), bool) if classes is None else np.isin(det_cls, list(classes))
    order = order[labelled[order]]  # detections of classes nobody labelled take no part in the matching
    matched = greedy_match(box_iou(det_xyxy[order], truth.boxes), iou_threshold,
                           det_cls[order][:, None] == truth.cls[None, :])
    tp = np.zeros(len(det_conf), bool)
    tp[order[matched >= 0]] = True
    unmatched = order[matched < 0]
    overlap = (box_ioa if truth.crowd else box_iou)(det_xyxy[unmatched], truth.ignore_boxes)
    on_ignore = ((det_cls[unmatched][:, None] == truth.ignore_cls[None, :]) & (overlap >= iou_threshold)).any(axis=1)
    ignored = ~labelled
    ignored[unmatched[on_ignore]] = True
    return Outcomes(tp, ignored, truth.objects - int(tp.sum()))


def count_errors(det_xyxy, det_conf, det_cls, truth: ImageTruth, classes=None,
                 iou_threshold: float = IOU_THRESHOLD) -> ImageErrors:
    """TP/FP/FN of one image's detections against its truth."""
    found = match(det_xyxy, det_conf, det_cls, truth, classes, iou_threshold)
    return ImageErrors(int(found.tp.sum()), int(found.fp.sum()), found.misses, int(found.ignored.sum()))
