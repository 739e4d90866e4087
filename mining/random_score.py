"""Random mining: a reproducible uniform score per image key."""
from collections.abc import Sequence

import numpy as np

from mining.base import Scorer, image_seed

_MANTISSA_BITS = 53  # a float64 holds 53 bits exactly, so k / 2**53 is uniform on [0, 1) and never 1.0


def random_score(key: str, seed: int) -> float:
    """Uniform [0, 1) value that depends only on (seed, key): no state, no order, no batch dependence."""
    return (image_seed(seed, key) >> (64 - _MANTISSA_BITS)) / float(1 << _MANTISSA_BITS)


def random_scores(keys: Sequence[str], seed: int) -> np.ndarray:
    """Scores (len(keys),) float64 in [0, 1); same seed -> same ranking, another seed -> another ranking."""
    return np.array([random_score(k, seed) for k in keys], dtype=np.float64)


class RandomScorer(Scorer):
    needs_model = False
    params = ("seed",)

    def __init__(self, *, seed: int):
        self.seed = seed

    def _score(self, batch, detector) -> np.ndarray:
        return random_scores(batch.result_keys(), self.seed)
