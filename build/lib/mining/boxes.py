"""Box geometry shared by the whole project: the one IoU, intersection-over-area and greedy matcher.

Boxes are (N, 4) xyxy in pixel-edge coordinates; degenerate boxes (zero or negative area) overlap nothing.
"""
import numpy as np

_EPS = 1e-12


def _intersections(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    return iw * ih, _areas(a), _areas(b)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) of boxes a (N, 4) and b (M, 4); degenerate boxes give 0."""
    inter, area_a, area_b = _intersections(a, b)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.nan_to_num(inter / np.maximum(union, _EPS))


def box_ioa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the area of each box of a (N, M): how much of a[i] b[j] covers (0 for empty a[i])."""
    inter, area_a, _ = _intersections(a, b)
    area = np.broadcast_to(area_a[:, None], inter.shape)
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def greedy_match(iou: np.ndarray, iou_thr: float, allowed: np.ndarray | None = None) -> np.ndarray:
    """Match detections (rows, in decreasing score order) to ground truth (columns) greedily: each row takes
    the still unmatched allowed column of largest IoU if that IoU >= iou_thr (first column on ties).
    Returns (rows,) the matched column or -1."""
    iou = np.asarray(iou, dtype=np.float64)
    free = np.ones(iou.shape[1], bool)
    matched = np.full(iou.shape[0], -1, dtype=np.int64)
    for row in range(iou.shape[0]):
        candidates = np.where(free if allowed is None else free & allowed[row])[0]
        if len(candidates):
            best = candidates[np.argmax(iou[row, candidates])]
            if iou[row, best] >= iou_thr:
                matched[row], free[best] = best, False
    return matched
