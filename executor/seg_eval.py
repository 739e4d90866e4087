"""Instance-segmentation metrics on a labelled split, from our own predictions (the detection metrics'
counterpart, executor/evaluation.py, whose batching, NMS and box metrics it shares).

- maskAP: COCO AP at mask IoU 0.5 (pycocotools, iouType 'segm', 101-point), averaged over the classes that have
  ground truth; the truth is each instance's annotated mask (RLE of its polygons or its RLE) at the original
  image's size, the prediction each detection's mask at that size.
- mAP / mAR / tp / fp / fn: of the same detections' boxes, exactly as for detection.

Predictions are made as Ultralytics' validator makes them: the val images in its rectangular batches, our
letterbox, Ultralytics' segmentation model forward, multi-label class-aware NMS at IoU 0.7 with conf 0.001 and
300 per image (the NMS of executor.model, carrying each box's mask coefficients), and each mask from the
prototypes at the original image's size inside its box (executor.masks.box_mask_rles: the masks of Ultralytics'
process_mask + scale_masks up to a pixel at edges). Ultralytics' val compares masks at a quarter of the network
input's resolution by default; here they are compared at the original's.
"""
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from executor.dataset import Sample
from executor.errors import ModelError
from executor.evaluation import (VAL_CONF, VAL_IOU, VAL_MAX_DET, Metrics, coco_metrics, coco_summary,
                                 count_matches, primary_labels, validation_batches)
from executor.images import Letterbox, round_up
from executor.masks import box_mask_rles
from executor.model import candidates, select_device, xywh_to_xyxy
from executor.nms import batched_nms
from executor.runtime import cpu_threads
from mining.base import Detections

log = logging.getLogger(__name__)


@dataclass
class Segmentation:
    """One image's detections (boxes in original pixels, as Detections) and their masks as COCO RLE."""
    detections: Detections
    masks: list


class Segmenter:
    """An Ultralytics segmentation checkpoint, fused, in eval mode: letterboxed canvases → (raw, prototypes)."""

    def __init__(self, weights: str, gpu_id: str, img_size: int, class_names: Sequence[str] = (), threads: int = 0):
        from ultralytics import YOLO

        self.device = select_device(gpu_id)
        try:
            model = YOLO(weights)
        except Exception as exc:
            raise ModelError(f"cannot load weights {weights}: {type(exc).__name__}: {exc}") from exc
        if model.task != "segment":
            raise ModelError(f"weights {weights} are a '{model.task}' model; a segmentation model ('segment') "
                             "is needed")
        net = model.model.fuse(verbose=False) if hasattr(model.model, "fuse") else model.model
        head = net.model[-1]
        if getattr(head, "end2end", False):
            head.end2end = False  # the dense one-to-many output that multi-label NMS works on
        self.names = [str(model.names[i]) for i in sorted(model.names)]
        if class_names:
            if len(class_names) != len(self.names):
                raise ModelError(f"config key 'class_names' has {len(class_names)} names but the model {weights} "
                                 f"predicts {len(self.names)} classes")
            self.names = list(class_names)
        self.num_masks = int(head.nm)
        self.strides = tuple(int(s) for s in head.stride.tolist())
        self.img_size = round_up(img_size, max(self.strides))
        self.net = net.to(self.device).float().eval()
        torch.set_num_threads(cpu_threads(threads))  # after loading: Ultralytics' device set-up changes it

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @torch.inference_mode()
    def forward(self, canvases: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, 3) uint8 RGB → raw (B, 4 + C + M, A) and prototypes (B, M, H/4, W/4)."""
        x = torch.from_numpy(canvases).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        out = self.net(x)
        raw, proto = out[0] if isinstance(out[0], (tuple, list)) else out[:2]
        return raw, proto

    @torch.inference_mode()
    def predict_canvases(self, canvases: np.ndarray, boxes: Sequence[Letterbox], conf_thres: float,
                         iou_thres: float, max_det: int, multi_label: bool = True) -> list[Segmentation]:
        raw, proto = self.forward(canvases)
        nc = self.num_classes
        shape = canvases.shape[1:3]
        found = []
        for pred, protos, box in zip(raw.transpose(1, 2), proto, boxes):  # (A, 4 + C + M) per image
            probs, coefficients = pred[:, 4:4 + nc], pred[:, 4 + nc:]
            anchor, cls, score = candidates(probs, conf_thres, multi_label)
            xyxy = xywh_to_xyxy(pred[anchor, :4])
            order = batched_nms(xyxy, score, cls, iou_thres)[:max_det]
            original = box.to_original(xyxy[order].float().cpu().numpy())
            det = Detections(xyxy=original, conf=score[order].float().cpu().numpy(),
                             cls=cls[order].cpu().numpy().astype(np.int64),
                             probs=probs[anchor[order]].float().cpu().numpy())
            found.append(Segmentation(det, box_mask_rles(protos, coefficients[anchor[order]], shape, box, original)))
        return found


def predict_samples(segmenter: Segmenter, samples: Sequence[Sample], batch_size: int,
                    progress: Callable[[float], None], conf_thres: float = VAL_CONF) -> list[Segmentation]:
    """Detections and masks for every sample, made in Ultralytics' validation batches (an unreadable image gets
    none)."""
    found = [Segmentation(Detections.empty(segmenter.num_classes), [])] * len(samples)
    for good, canvases, boxes in validation_batches(samples, segmenter.img_size, batch_size,
                                                    max(segmenter.strides), progress):
        for i, result in zip(good, segmenter.predict_canvases(canvases, boxes, conf_thres, VAL_IOU, VAL_MAX_DET)):
            found[i] = result
    return found


def mask_metrics(samples: Sequence[Sample], predictions: Sequence[Segmentation], num_classes: int,
                 max_det: int = VAL_MAX_DET) -> tuple[float, float, float]:
    """(mask AP@0.5, mask recall@0.5, mask AP@[.5:.95]) with pycocotools iouType 'segm'."""
    from pycocotools import mask as mask_utils

    images, annotations, results = [], [], []
    for image_id, (sample, pred) in enumerate(zip(samples, predictions), 1):
        images.append({"id": image_id, "width": sample.width, "height": sample.height})
        for rle, cls in zip(sample.masks or [], sample.classes.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls),
                                "segmentation": rle, "area": float(mask_utils.area(rle)),
                                "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
        for rle, cls, score in zip(pred.masks, pred.detections.cls.tolist(), pred.detections.conf.tolist()):
            results.append({"image_id": image_id, "category_id": int(cls), "segmentation": rle,
                            "score": float(score)})
    return coco_summary(images, annotations, results, num_classes, "segm", max_det)


def evaluate_segmentation(segmenter: Segmenter, samples: Sequence[Sample], iou_thr: float, conf_thr: float,
                          batch_size: int, progress: Callable[[float], None] = lambda f: None) -> Metrics:
    """Mask and box metrics of `segmenter` on `samples` (Ultralytics' val post-processing)."""
    predictions = predict_samples(segmenter, samples, batch_size, progress, min(VAL_CONF, conf_thr))
    detections = [p.detections for p in predictions]
    ap50, ar50, ap = coco_metrics(samples, detections, segmenter.num_classes, VAL_MAX_DET)
    mask_ap50, _, mask_ap = mask_metrics(samples, predictions, segmenter.num_classes, VAL_MAX_DET)
    tp, fp, fn = count_matches(samples, [primary_labels(d) for d in detections], iou_thr, conf_thr)
    return Metrics(ap50, ar50, ap, tp, fp, fn, maskAP=mask_ap50, maskAP50_95=mask_ap)
