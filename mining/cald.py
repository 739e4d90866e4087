"""CALD (Yu et al., arXiv 2103.10374): consistency of a detector's boxes across augmented views.

For each view a and each reference box r (transformed like the view), match r to the view's prediction
of largest IoU, then
    C_r = IoU_max + 1/2 (1 - JS(q_ref, q_matched)) (conf_ref + conf_matched)      in [0, 2]
    D_a = min_r |C_r - beta|
    score = 2 - mean_a D_a                                                     in [2 - max(beta, 2-beta), 2]
q is the (C+1)-way box distribution of mining/entropy.py. A reference box that no prediction overlaps
(IoU 0, including a view with no predictions) is totally inconsistent: C_r = 0. With a segmentation model the
overlap term is the mean of the box IoU and the mask IoU of the same pair (the reference mask moved like the
view, against the matched prediction's mask): C_r = (IoU_box + IoU_mask) / 2 + ..., still in [0, 2]. The official code
selects the smallest mean D first, so the score falls with it: higher = label first. The offset 2 (the
largest C) keeps every score positive, above the -1 that marks unreadable images in result.tsv.
"""
from collections.abc import Sequence

import numpy as np
from scipy.special import rel_entr

from mining.augment import make_views, mask_views
from mining.base import Scorer, image_seed
from mining.boxes import box_iou
from mining.entropy import box_distribution

BETA = 1.3
SCORE_OFFSET = 2.0  # the largest consistency C; score = SCORE_OFFSET - mean D >= 0 for beta in [0, 2]
# Images without reference detections are ranked after every image with detections: the score of
# an image with detections is >= 2 - max(beta, 2 - beta) >= 0 for beta in [0, 2].
NO_DETECTION_SCORE = 0.0

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (M, 4), conf (M,), probs (M, C)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise Jensen-Shannon divergence (N,) in nats, in [0, ln 2], of distributions p, q (N, K)."""
    m = 0.5 * (p + q)
    js = 0.5 * rel_entr(p, m).sum(axis=1) + 0.5 * rel_entr(q, m).sum(axis=1)
    return np.clip(np.nan_to_num(js), 0.0, np.log(2.0))


def _coco_rle(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def matched_mask_iou(ref_masks: Sequence[dict], view_masks: Sequence[dict], match: np.ndarray) -> np.ndarray:
    """(N,) IoU of each reference mask with the view mask it was matched to (COCO RLEs of one image size)."""
    from pycocotools import mask as mask_utils

    refs = [_coco_rle(r) for r in ref_masks]
    matched = [_coco_rle(view_masks[m]) for m in match]
    return np.array([float(mask_utils.iou([v], [r], [0])[0, 0]) for v, r in zip(matched, refs)], np.float64)


def view_inconsistency(ref_dist: np.ndarray, ref_conf: np.ndarray, ref_boxes: np.ndarray,
                       view: Detections, beta: float, ref_masks: Sequence[dict] | None = None,
                       view_masks: Sequence[dict] | None = None) -> float:
    """D_a = min_r |C_r - beta| for one view; ref_dist (N, C+1), ref_conf (N,), ref_boxes (N, 4); with
    `ref_masks` (N RLEs moved into the view) and the view's `view_masks` (M RLEs) the overlap term also
    counts the matched pair's mask IoU."""
    boxes, conf, probs = view
    if len(boxes) == 0:
        return abs(0.0 - beta)
    iou = box_iou(ref_boxes, boxes)                       # (N, M)
    match = iou.argmax(axis=1)
    iou_max = iou[np.arange(len(match)), match]
    overlap = iou_max
    if ref_masks is not None and view_masks is not None:
        overlap = 0.5 * (iou_max + matched_mask_iou(ref_masks, view_masks, match))
    matched_conf = np.clip(np.nan_to_num(np.asarray(conf, dtype=np.float64)), 0, 1)[match]
    js = js_divergence(ref_dist, box_distribution(probs)[match])
    consistency = overlap + 0.5 * (1.0 - js) * (ref_conf + matched_conf)
    consistency = np.where(iou_max > 0, consistency, 0.0)
    return float(np.abs(consistency - beta).min())


def cald_score(ref_probs: np.ndarray, ref_conf: np.ndarray, view_boxes_ref: Sequence[np.ndarray],
               view_dets: Sequence[Detections], beta: float = BETA,
               view_masks_ref: Sequence[Sequence[dict]] | None = None,
               view_masks: Sequence[Sequence[dict]] | None = None) -> float:
    """CALD image score; higher = label first.

    ref_probs (N, C), ref_conf (N,): the reference detections of the original image.
    view_boxes_ref: per view, the reference boxes (N, 4) transformed into that view.
    view_dets: per view, its predictions (boxes (M, 4), conf (M,), probs (M, C)).
    view_masks_ref, view_masks (segmentation models): per view, the N reference masks moved into it and its M
    predicted masks, as COCO RLEs.
    Returns 2 - mean over views of min_r |C_r - beta|, or NO_DETECTION_SCORE when N == 0.
    """
    if not 0.0 <= beta <= 2.0:
        raise ValueError(f"beta must lie in [0, 2] (the range of the consistency), got {beta}")
    if len(view_boxes_ref) != len(view_dets) or len(view_dets) == 0:
        raise ValueError(f"need one reference-box array per view and at least one view, got "
                         f"{len(view_boxes_ref)} and {len(view_dets)}")
    ref_dist = box_distribution(ref_probs)
    if len(ref_dist) == 0:
        return NO_DETECTION_SCORE
    if any(np.shape(b) != (len(ref_dist), 4) for b in view_boxes_ref):
        raise ValueError(f"every view needs the {len(ref_dist)} reference boxes as ({len(ref_dist)}, 4), got "
                         f"{[np.shape(b) for b in view_boxes_ref]}")
    conf = np.clip(np.nan_to_num(np.asarray(ref_conf, dtype=np.float64)), 0, 1)
    masks = [(None, None)] * len(view_dets) if view_masks_ref is None else list(zip(view_masks_ref, view_masks))
    values = [view_inconsistency(ref_dist, conf, boxes_ref, view, beta, *mask_pair)
              for boxes_ref, view, mask_pair in zip(view_boxes_ref, view_dets, masks)]
    return SCORE_OFFSET - float(np.mean(values))


def moved_masks(rles: Sequence[dict]) -> list[list[dict]]:
    """Per view (make_views' order), the reference masks moved like the view, as COCO RLEs (one mask decoded at a
    time: memory stays one image's size whatever the instance count)."""
    from pycocotools import mask as mask_utils

    per_view: list[list[dict]] = [[] for _ in range(4)]
    for rle in rles:
        for view, moved in zip(per_view, mask_views(mask_utils.decode(_coco_rle(rle)))):
            view.append(mask_utils.encode(np.asfortranarray(moved)))
    return per_view


class CaldScorer(Scorer):
    """Reference pass, then the 4 augmented views of every image with detections, predicted by the detector;
    with a segmentation model the masks count too (mask IoU beside box IoU)."""
    params = ("seed",)

    def __init__(self, *, seed: int):
        self.seed = seed

    def _score(self, batch, detector) -> np.ndarray:
        refs = detector.predict(batch)
        scores = np.full(len(refs), NO_DETECTION_SCORE, dtype=np.float64)
        owners, moved_boxes, views = [], [], []
        originals = batch.device_images or batch.images  # views are made where the originals are
        for i, (key, image, ref) in enumerate(zip(batch.result_keys(), originals, refs)):
            if len(ref):
                rng = np.random.default_rng(image_seed(self.seed, key))
                for view, moved in make_views(image, ref.xyxy, rng):
                    owners.append(i), moved_boxes.append(moved), views.append(view)
        # in chunks of at least one image's views: an image alone in its batch does not forward its views one by one
        found = detector.predict_views(views, max(len(batch.keys), len(views) // len(set(owners)))) if views else []
        for i in sorted(set(owners)):
            mine = [k for k, owner in enumerate(owners) if owner == i]
            masks = {}
            if refs[i].masks is not None:
                masks = {"view_masks_ref": moved_masks(refs[i].masks.rles()),
                         "view_masks": [found[k].masks.rles() for k in mine]}
            scores[i] = cald_score(refs[i].probs, refs[i].conf, [moved_boxes[k] for k in mine],
                                   [(found[k].xyxy, found[k].conf, found[k].probs) for k in mine], **masks)
        return scores
