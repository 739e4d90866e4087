"""Algorithms against random at equal labelling cost: each curve (cost → mAP, one point per round) is linear
between its round points and is never extrapolated past them.

- gap: the mean difference a − b over the cost range both curves cover (the area between them divided by its
  width), the equal-cost analogue of the difference of two AUCs.
- label savings: the cost a curve needs to reach the reference's final mAP, as a share of the reference's final
  cost (0.6: 40 % fewer labels); None ("not reached") when it never gets there within its rounds.
"""

from typing import Sequence

import numpy as np


def common_range(xa: Sequence[float], xb: Sequence[float]) -> tuple[float, float] | None:
    low, high = max(xa[0], xb[0]), min(xa[-1], xb[-1])
    return (low, high) if high >= low else None


def gap(xa: Sequence[float], ya: Sequence[float], xb: Sequence[float], yb: Sequence[float]) -> float | None:
    """Mean of a − b over the common cost range (at a single common point: the difference there); None when the
    curves share no cost. Exact: a − b is linear between the union of both curves' points."""
    span = common_range(xa, xb)
    if span is None:
        return None
    low, high = span
    grid = np.unique([low, high, *(x for x in (*xa, *xb) if low < x < high)])
    diff = np.interp(grid, xa, ya) - np.interp(grid, xb, yb)
    if high == low:
        return float(diff[0])
    return float(np.sum((diff[1:] + diff[:-1]) / 2 * np.diff(grid)) / (high - low))


def cost_to_reach(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """The first cost at which the curve reaches `target` (between two rounds: where the line between them crosses
    it); None when no round point or segment gets there."""
    if ys[0] >= target:
        return float(xs[0])
    for i in range(1, len(xs)):
        if ys[i] >= target:
            return float(xs[i - 1] + (target - ys[i - 1]) / (ys[i] - ys[i - 1]) * (xs[i] - xs[i - 1]))
    return None


def cost_share(xs: Sequence[float], ys: Sequence[float], ref_xs: Sequence[float],
               ref_ys: Sequence[float]) -> float | None:
    """The cost this curve needs to reach the reference's final mAP, as a share of the reference's final cost."""
    reached = cost_to_reach(xs, ys, ref_ys[-1])
    return None if reached is None else reached / ref_xs[-1]
