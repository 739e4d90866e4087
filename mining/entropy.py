"""Entropy mining: classification uncertainty of the post-NMS boxes of a YOLOv8 detector.

YOLOv8 class scores are C independent sigmoids, not a distribution. Each box is given the (C+1)-way
categorical distribution q = normalise([p_1, ..., p_C, 1 - max_c p_c]): the C class probabilities plus
"not an object" (the complement of the box's own confidence). Its Shannon entropy (natural log, range
[0, ln(C+1)]) is high both when classes compete and when the box is unsure it is an object at all.
docs/mining.md explains the choice.
"""
import numpy as np
from scipy.special import entr

from mining.base import Scorer

AGGREGATIONS = ("sum", "mean", "max", "topk_mean")


def box_distribution(probs: np.ndarray) -> np.ndarray:
    """(N, C) sigmoid class probabilities -> (N, C+1) categorical distributions (rows sum to 1).

    NaN becomes 0 and values are clipped to [0, 1]. The unnormalised row sums to
    sum_c p_c + 1 - max_c p_c >= 1, so the normalisation never divides by zero.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {p.shape}")
    p = np.clip(np.nan_to_num(p, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    background = 1.0 - p.max(axis=1, initial=0.0, keepdims=True)
    q = np.concatenate([p, background], axis=1)
    return q / q.sum(axis=1, keepdims=True)


def box_entropy(probs: np.ndarray) -> np.ndarray:
    """(N, C) sigmoid class probabilities -> (N,) entropy in nats of each box's distribution."""
    return entr(box_distribution(probs)).sum(axis=1)


def image_entropy(probs: np.ndarray, aggregation: str, topk: int = 3) -> float:
    """One image's score from its boxes' (N, C) probabilities: sum, mean or max of box entropies, or topk_mean,
    the mean of the `topk` largest (of all boxes when it has fewer: a crowd neither adds up, as with sum, nor is
    one doubtful box, as with max).

    An image without detections scores 0.0 (the lowest possible value) for every aggregation.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    h = box_entropy(probs)
    if h.size == 0:
        return 0.0
    if aggregation == "topk_mean":
        return float(np.mean(np.sort(h)[-topk:]))
    return float(getattr(np, aggregation)(h))


class EntropyScorer(Scorer):
    """The same forward as inference, but NMS keeps every box down to `entropy_conf_thres`: the doubtful ones
    carry the signal, and a cut at max_det (meant for reported detections) would keep only the surest."""
    params = ("entropy_aggregation", "entropy_conf_thres", "entropy_topk")

    def __init__(self, *, entropy_aggregation: str, entropy_conf_thres: float, entropy_topk: int = 3):
        if entropy_aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {entropy_aggregation!r}")
        self.aggregation, self.conf_thres, self.topk = entropy_aggregation, entropy_conf_thres, int(entropy_topk)

    def _score(self, batch, detector) -> np.ndarray:
        found = detector.predict(batch, conf_thres=self.conf_thres, capped=False)
        return np.array([image_entropy(d.probs, self.aggregation, self.topk) for d in found])
