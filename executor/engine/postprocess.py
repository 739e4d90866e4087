"""From the head's decoded output to `Detections`: candidates per image, NMS, boxes back through the letterbox,
masks from the prototypes; and the dense class-probability maps per head level (ALDD).
"""

from typing import Sequence

import numpy as np
import torch

from executor.engine.images import Letterbox
from executor.engine.masks import PredictedMasks
from executor.engine.nms import batched_nms
from executor.errors import ModelError
from mining.base import Detections


DEFAULT_STRIDES = (8, 16, 32)
MAX_NMS = 30000  # multi-label candidates per image before NMS, as Ultralytics' validator
# Devices where one NMS over the whole batch beats one per image: a kernel launch and a host sync per image
# cost a GPU more than the larger kernel; on CPU the kernel is O(N^2) in the boxes it sees, so per image wins.
WHOLE_BATCH_DEVICES = ("cuda",)


# ---------------------------------------------------------------- post-processing (both backends)

def class_maps(raw: torch.Tensor, canvas: tuple[int, int], strides=DEFAULT_STRIDES,
               num_classes: int | None = None) -> list[torch.Tensor]:
    """The class probabilities of `raw` (B, 4+C+M, A) for input canvases of (height, width) as one (B, C, h, w)
    map per head level (views, no copy); `num_classes` C (None: every row after the box)."""
    probs = raw[:, 4:, :] if num_classes is None else raw[:, 4:4 + num_classes, :]
    shapes = [(canvas[0] // s, canvas[1] // s) for s in strides]
    if sum(h * w for h, w in shapes) != probs.shape[2]:
        raise ModelError(f"head output has {probs.shape[2]} anchor points; expected {shapes} for an input of "
                         f"{canvas[0]}x{canvas[1]}")
    maps, start = [], 0
    for h, w in shapes:
        maps.append(probs[:, :, start:start + h * w].unflatten(2, (h, w)))
        start += h * w
    return maps


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    half = boxes[:, 2:] / 2
    return torch.cat((boxes[:, :2] - half, boxes[:, :2] + half), 1)


def candidates(probs: torch.Tensor, conf_thres: float, multi_label: bool):
    """(anchor, class, score) of the boxes NMS considers in one image's class rows `probs` (C, A): each anchor's
    best class above conf_thres, or, with `multi_label` (Ultralytics' validator), every (anchor, class) pair above
    it, the MAX_NMS best. Reductions run along the classes of the head's own layout (no transposed copy), and
    only the anchors above the threshold look for their class."""
    if not multi_label:
        best = probs.amax(0)
        anchor = torch.where(best > conf_thres)[0]
        return anchor, probs[:, anchor].argmax(0), best[anchor]  # argmax: the first of equal maxima, as max()
    anchor, cls = torch.nonzero(probs.T > conf_thres, as_tuple=True)
    score = probs[cls, anchor]
    if len(score) > MAX_NMS:
        top = score.topk(MAX_NMS).indices
        anchor, cls, score = anchor[top], cls[top], score[top]
    return anchor, cls, score


def postprocess(raw: torch.Tensor, boxes: Sequence[Letterbox], conf_thres: float, iou_thres: float,
                max_det: int | None, multi_label: bool = False, whole_batch: bool | None = None,
                num_classes: int | None = None, proto: torch.Tensor | None = None) -> list[Detections]:
    """Class-aware NMS per image on `raw` (B, 4+C+M, A), the `max_det` best kept (None: all); boxes mapped back
    to original pixels. `num_classes` C (None: no mask coefficients, C = rows - 4); with the prototypes `proto`
    (B, M, H/4, W/4) of a segmentation model each image's detections carry their masks. On a GPU (or with
    `whole_batch`) the batch goes through one NMS kernel and one host copy."""
    num_classes = raw.shape[1] - 4 if num_classes is None else num_classes
    if raw.device.type in WHOLE_BATCH_DEVICES if whole_batch is None else whole_batch:
        return _postprocess_whole_batch(raw, boxes, conf_thres, iou_thres, max_det, multi_label, num_classes, proto)
    results = []
    for i, (pred, box) in enumerate(zip(raw.transpose(1, 2), boxes)):  # (A, 4+C+M) per image
        probs = pred[:, 4:4 + num_classes]
        anchor, cls, score = candidates(raw[i, 4:4 + num_classes], conf_thres, multi_label)
        xyxy = xywh_to_xyxy(pred[anchor, :4])
        order = batched_nms(xyxy, score, cls, iou_thres)[:max_det]
        original = box.to_original(xyxy[order].float().cpu().numpy())
        coefficients = pred[anchor[order], 4 + num_classes:].float().cpu().numpy() if proto is not None else None
        results.append(Detections(
            xyxy=original,
            conf=score[order].float().cpu().numpy(),
            cls=cls[order].cpu().numpy().astype(np.int64),
            probs=probs[anchor[order]].float().cpu().numpy(),
            masks=image_masks(proto, i, coefficients, box, original),
        ))
    return results


def image_masks(proto: torch.Tensor | None, index: int, coefficients: np.ndarray | None, box: Letterbox,
                original: np.ndarray) -> PredictedMasks | None:
    """The (lazy) masks of image `index`'s detections, or None for a detection model."""
    if proto is None:
        return None
    canvas = (proto.shape[2] * 4, proto.shape[3] * 4)  # the prototypes lie at a quarter of the network input
    return PredictedMasks(proto[index], coefficients, canvas, box, original)


def _postprocess_whole_batch(raw: torch.Tensor, boxes: Sequence[Letterbox], conf_thres: float, iou_thres: float,
                             max_det: int | None, multi_label: bool, num_classes: int,
                             proto: torch.Tensor | None) -> list[Detections]:
    """`postprocess` with one NMS over the whole batch (each (image, class) its own group; boxes in float64 so the
    group offsets cost no precision) and one copy of every kept row to the host."""
    preds = raw.transpose(1, 2)  # (B, A, 4+C+M)
    picks = [candidates(rows[4:4 + num_classes], conf_thres, multi_label) for rows in raw]
    image = torch.cat([torch.full_like(anchor, i) for i, (anchor, _, _) in enumerate(picks)])
    anchor, cls, score = (torch.cat([p[k] for p in picks]) for k in range(3))
    rows = preds[image, anchor]
    xyxy = xywh_to_xyxy(rows[:, :4])
    keep = batched_nms(xyxy.double(), score.double(), image * num_classes + cls, iou_thres)  # by decreasing score
    keep = keep[torch.sort(image[keep], stable=True).indices]  # image by image, each by decreasing score
    counts = torch.bincount(image[keep], minlength=len(preds))
    if max_det is not None:  # the max_det best of each image
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(keep), device=keep.device) - starts.repeat_interleave(counts)
        keep = keep[rank < max_det]
        counts = counts.clamp(max=max_det)
    packed = torch.cat([xyxy[keep], score[keep, None], cls[keep, None].to(xyxy.dtype), rows[keep, 4:]], 1)
    host = packed.float().cpu().numpy()
    results = []
    for i, (part, box) in enumerate(zip(np.split(host, np.cumsum(counts.cpu().numpy())[:-1]), boxes)):
        original = box.to_original(part[:, :4])
        coefficients = part[:, 6 + num_classes:].copy() if proto is not None else None
        results.append(Detections(xyxy=original, conf=part[:, 4].copy(), cls=part[:, 5].astype(np.int64),
                                  probs=part[:, 6:6 + num_classes].copy(),
                                  masks=image_masks(proto, i, coefficients, box, original)))
    return results
