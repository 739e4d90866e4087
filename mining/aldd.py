"""ALDD (Aghdam et al., ICCV 2019) on the dense class-probability maps of an anchor-free YOLOv8 head.

For every class c and every pyramid level l (P_l = that level's sigmoid class map; no objectness),
on the level's own grid:
    g_l = H_b(Avg3x3(P_l)) - Avg3x3(H_b(P_l))                    local Jensen gap, >= 0
then, per 32-px cell (one cell of the coarsest level), the largest sum of the levels' gaps at any
point of the cell (each level read at its own cell containing the point):
    V = max over the cell of sum_l g_l
    score_c = mean over cells of V,   image score = sum_c w_c * score_c.
docs/mining.md explains why each level is measured on its own grid instead of being upsampled.
"""
import functools
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mining.base import Scorer

log = logging.getLogger(__name__)

AVG_POOL_KERNEL = 3   # neighbourhood in cells of each level's own grid (24 / 48 / 96 input px)
EPS = 1e-6            # probabilities are clamped to [EPS, 1 - EPS] before the logs (float32-safe)
# Elements per chunk: on CPU, chunks that stay in cache make the ~20 elementwise passes about twice as
# fast; on a GPU one chunk per batch avoids launching kernels per image.
CPU_CHUNK_ELEMENTS = 1 << 20
GPU_CHUNK_ELEMENTS = 1 << 26


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Elementwise H_b(p) = -p ln p - (1-p) ln(1-p) in nats; finite for p in [0, 1]."""
    return -_neg_entropy(p.clamp(EPS, 1.0 - EPS))


def _neg_entropy(p: torch.Tensor) -> torch.Tensor:
    """-H_b(p) for p already in (0, 1): p ln p + (1-p) ln(1-p), written to spare memory passes."""
    q = torch.sub(1.0, p)
    return torch.log(p).mul_(p).add_(torch.log(q).mul_(q))


def _box_mean(x: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) -> mean over each AVG_POOL_KERNEL^2 window, padding excluded (stride 1, same size)."""
    k, pad = x.shape[1], AVG_POOL_KERNEL // 2
    kernel = x.new_ones(k, 1, AVG_POOL_KERNEL, AVG_POOL_KERNEL)
    count = F.conv2d(x.new_ones(1, 1, *x.shape[-2:]), kernel[:1], padding=pad)
    # a depthwise conv is several times faster on CPU than avg_pool2d(count_include_pad=False)
    return F.conv2d(x, kernel, padding=pad, groups=k).div_(count)


def level_gap(p: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) probabilities in (0, 1) -> Jensen gap H_b(Avg(p)) - Avg(H_b(p)), same shape."""
    return _box_mean(_neg_entropy(p)).sub_(_neg_entropy(_box_mean(p)))


def _cell_max(x: torch.Tensor, rh: int, rw: int) -> torch.Tensor:
    """(N, K, h, w) -> (N, K, h/rh, w/rw) max over rh x rw blocks.

    Elementwise maxima of strided views: on CPU several times faster than max_pool2d or amax.
    """
    rows = functools.reduce(torch.maximum, [x[..., i::rh, :] for i in range(rh)])
    return functools.reduce(torch.maximum, [rows[..., j::rw] for j in range(rw)])


def cell_scores(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Levels (N, K, h_l, w_l) of probabilities in (0, 1), finest first, each grid an integer
    refinement of the next -> (N, K): mean over the coarsest grid's cells of max over the cell of sum_l g_l."""
    acc = None
    for p in levels:
        gap = level_gap(p)
        if acc is not None:
            (h, w), (hc, wc) = acc.shape[-2:], gap.shape[-2:]
            if h % hc or w % wc:
                raise ValueError(f"level grids do not nest: {h}x{w} over {hc}x{wc}")
            gap = gap.add_(_cell_max(acc, h // hc, w // wc))
        acc = gap
    return acc.clamp_min_(0.0).mean(dim=(2, 3))  # gaps are >= 0; the clamp only removes float rounding


def _chunks(batch: int, classes: int, pixels: int, device: torch.device) -> Iterator[tuple[slice, slice]]:
    target = CPU_CHUNK_ELEMENTS if device.type == "cpu" else GPU_CHUNK_ELEMENTS
    per_image = max(1, classes * pixels)
    images = max(1, target // per_image)
    step = max(1, classes if per_image <= target else target // max(1, pixels))
    for i in range(0, batch, images):
        for c in range(0, classes, step):
            yield slice(i, i + images), slice(c, c + step)


def class_weights(scores: Sequence[float], num_classes: int) -> np.ndarray:
    """Per-class weights (num_classes,) float64 from class_distribution_scores.

    Empty -> all 1.0; shorter -> padded with 1.0; longer -> truncated (both with a warning).
    """
    w = np.ones(num_classes, dtype=np.float64)
    if len(scores) == 0:
        return w
    if len(scores) < num_classes:
        log.warning("class_distribution_scores has %d values for %d classes: padding with 1.0",
                    len(scores), num_classes)
    elif len(scores) > num_classes:
        log.warning("class_distribution_scores has %d values for %d classes: ignoring the extra ones",
                    len(scores), num_classes)
    n = min(len(scores), num_classes)
    w[:n] = np.asarray(scores[:n], dtype=np.float64)
    return w


@torch.no_grad()
def aldd_scores(class_maps: Sequence[torch.Tensor], class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """ALDD image scores, higher = label first.

    class_maps: L tensors (B, C, h_l, w_l) of sigmoid class probabilities, one per head level (e.g.
        strides 8, 16, 32), any order, any device; each grid must be an integer refinement of the
        next coarser one (true for strides 8/16/32 and img_size a multiple of 32).
    class_weights: (C,) or None (all ones).
    Returns (B,) float32 on the maps' device; finite, and >= 0 for non-negative weights.
    """
    if len(class_maps) == 0 or any(m.ndim != 4 or m.shape[:2] != class_maps[0].shape[:2] for m in class_maps):
        raise ValueError(f"class_maps must be L >= 1 tensors (B, C, h, w), got {[tuple(m.shape) for m in class_maps]}")
    maps = sorted(class_maps, key=lambda m: m.shape[-2] * m.shape[-1], reverse=True)
    batch, classes, h, w = maps[0].shape
    device = maps[0].device
    per_class = torch.zeros(batch, classes, dtype=torch.float32, device=device)
    # one memory layout whatever the maps' own (views of the whole head's output, or the class branch's
    # channels_last maps): a float32 convolution's last bits depend on it, and a score must not
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format  # the faster on CPU
    for images, cls in _chunks(batch, classes, h * w, device):
        per_class[images, cls] = cell_scores([m[images, cls].float().clamp(EPS, 1.0 - EPS).contiguous(
            memory_format=layout) for m in maps])
    # NaN maps (a broken model) propagate to their image's classes; report those as 0, never NaN
    per_class = torch.nan_to_num_(per_class, nan=0.0, posinf=0.0, neginf=0.0)
    if class_weights is None:
        return per_class.sum(dim=1)
    weights = torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    if weights.shape != (classes,) or not torch.isfinite(weights).all():
        raise ValueError(f"class_weights must be {classes} finite values, got {weights.tolist()}")
    return (per_class * weights).sum(dim=1)  # not a matrix product: its sums' order changes with the batch size


class AlddScorer(Scorer):
    params = ("class_distribution_scores",)

    def __init__(self, *, class_distribution_scores: Sequence[float]):
        self.scores = tuple(class_distribution_scores)
        self.weights = None

    def _score(self, batch, detector) -> np.ndarray:
        maps = detector.predict_maps(batch)
        if self.weights is None:
            weights = class_weights(self.scores, detector.num_classes)
            self.weights = torch.as_tensor(weights, dtype=torch.float32, device=maps[0].device)
        return aldd_scores(maps, self.weights).double().cpu().numpy()
