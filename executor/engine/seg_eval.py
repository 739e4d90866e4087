"""Instance-segmentation metrics on a labelled split, from our own predictions (the detection metrics'
counterpart, executor/engine/evaluation.py, whose batching, NMS and box metrics it shares).

- maskAP: COCO AP at mask IoU 0.5 (pycocotools, iouType 'segm', 101-point), averaged over the classes that have
  ground truth; the truth is each instance's annotated mask (RLE of its polygons or its RLE) at the original
  image's size, the prediction each detection's mask at that size.
- mAP / mAR / tp / fp / fn: of the same detections' boxes, exactly as for detection.

Predictions are made as Ultralytics' validator makes them, by the inference adapter (executor.engine, the same
as for detection): the val images in its rectangular batches, our letterbox, the segmentation model's forward,
multi-label class-aware NMS at IoU 0.7 with conf 0.001 and 300 per image, and each mask from the prototypes at
the original image's size inside its box (executor.engine.masks.box_mask_rles: the masks of Ultralytics'
process_mask + scale_masks up to a pixel at edges). Ultralytics' val compares masks at a quarter of the network
input's resolution by default; here they are compared at the original's.
"""
from typing import Callable, Sequence

from executor.engine.detector import Detector
from executor.engine.evaluation import (VAL_CONF, VAL_IOU, VAL_MAX_DET, Metrics, coco_metrics, coco_summary,
                                        count_matches, predict_samples, primary_labels)
from executor.shared import Sample
from mining.base import Detections


def mask_metrics(samples: Sequence[Sample], predictions: Sequence[Detections], num_classes: int,
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
        masks = pred.masks.rles() if pred.masks is not None else []
        for rle, cls, score in zip(masks, pred.cls.tolist(), pred.conf.tolist()):
            results.append({"image_id": image_id, "category_id": int(cls), "segmentation": rle,
                            "score": float(score)})
    return coco_summary(images, annotations, results, num_classes, "segm", max_det)


def evaluate_segmentation(detector: Detector, samples: Sequence[Sample], iou_thr: float, conf_thr: float,
                          batch_size: int, progress: Callable[[float], None] = lambda f: None) -> Metrics:
    """Mask and box metrics of a segmentation `detector` on `samples` (Ultralytics' val post-processing)."""
    validator = detector.with_postprocess(min(VAL_CONF, conf_thr), VAL_IOU, VAL_MAX_DET, multi_label=True)
    detections = predict_samples(validator, samples, batch_size, progress)
    ap50, ar50, ap = coco_metrics(samples, detections, detector.num_classes, VAL_MAX_DET)
    mask_ap50, _, mask_ap = mask_metrics(samples, detections, detector.num_classes, VAL_MAX_DET)
    tp, fp, fn = count_matches(samples, [primary_labels(d) for d in detections], iou_thr, conf_thr)
    return Metrics(ap50, ar50, ap, tp, fp, fn, maskAP=mask_ap50, maskAP50_95=mask_ap)
