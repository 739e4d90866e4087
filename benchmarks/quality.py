"""Mining quality: does a ranking point at the images where the model is wrong?

Per image, the model's detection errors at its working threshold (conf_thres 0.25) are counted against
ground truth: false negatives + false positives, by the project's one labelled pass (mining/truth.py: IoU >= 0.5,
class-aware, greedy by confidence; crowd and difficult objects and unlabelled classes ignored).

For a ranking (scores, higher = label first):
- Q1 `capture_images`: share of all errors inside the top 20% of images;
- Q2 `capture_objects`: share of all errors inside the images taken in score order until their
  ground-truth objects reach 20% of all objects (the image that crosses the budget is taken);
- Q3 `spearman`: Spearman rho between the score and the per-image error rate errors / max(1, objects).
Q2 is the headline (labelling cost is mostly boxes; docs/benchmarks.md says why), Q1 stands beside it.
Tied scores are broken at random; with ties, Q1/Q2 are the mean over `TIE_DRAWS` tie-breaks, which
estimates the expected capture of a labeller who picks arbitrarily among equal scores. (Ties matter
for the `detections` baseline, whose scores are small integers.)
"""
import numpy as np
from scipy.stats import spearmanr

from mining.truth import IOU_THRESHOLD, ImageErrors, count_errors  # noqa: F401 (the benchmark's words)

BUDGET = 0.2
TIE_DRAWS = 200
RANDOM_SEEDS = 10


def _orders(scores: np.ndarray, draws: int, seed: int):
    """Descending score orders: one if all scores differ, else `draws` random tie-breaks."""
    scores = np.asarray(scores, np.float64)
    if len(np.unique(scores)) == len(scores):
        yield np.argsort(-scores, kind="stable")
        return
    rng = np.random.default_rng(seed)
    for _ in range(draws):
        yield np.lexsort((rng.random(len(scores)), -scores))


def capture_images(scores, errors, fraction: float = BUDGET, draws: int = TIE_DRAWS, seed: int = 0) -> float:
    """Q1: share of all errors in the top round(fraction * N) images by score."""
    errors = np.asarray(errors, np.float64)
    total = errors.sum()
    if total == 0:
        return float("nan")
    k = int(round(fraction * len(errors)))
    return float(np.mean([errors[order[:k]].sum() / total for order in _orders(scores, draws, seed)]))


def capture_objects(scores, errors, objects, fraction: float = BUDGET, draws: int = TIE_DRAWS, seed: int = 0
                    ) -> float:
    """Q2: share of all errors in the images taken in score order until their objects reach
    `fraction` of all objects (the image that reaches the budget is included)."""
    errors = np.asarray(errors, np.float64)
    objects = np.asarray(objects, np.float64)
    total = errors.sum()
    if total == 0:
        return float("nan")
    budget = fraction * objects.sum()
    values = []
    for order in _orders(scores, draws, seed):
        spent_before = np.concatenate([[0.0], np.cumsum(objects[order])[:-1]])
        taken = order[spent_before < budget]
        values.append(errors[taken].sum() / total)
    return float(np.mean(values))


def error_rate(errors, objects) -> np.ndarray:
    return np.asarray(errors, np.float64) / np.maximum(1.0, np.asarray(objects, np.float64))


def spearman(scores, errors, objects) -> float:
    """Q3: Spearman rho (average ranks for ties) of score against errors / max(1, objects)."""
    scores = np.asarray(scores, np.float64)
    rate = error_rate(errors, objects)
    if np.ptp(scores) == 0 or np.ptp(rate) == 0:
        return float("nan")
    return float(spearmanr(scores, rate).statistic)


def metrics(scores, errors, objects) -> dict:
    return {"q1": capture_images(scores, errors), "q2": capture_objects(scores, errors, objects),
            "q3": spearman(scores, errors, objects)}


def random_baseline(keys, errors, objects, seeds: int = RANDOM_SEEDS) -> dict:
    """Mean Q1-Q3 of the project's own random scorer over seeds 0..seeds-1."""
    from mining.random_score import random_scores

    runs = [metrics(random_scores(keys, seed), errors, objects) for seed in range(seeds)]
    out = {k: float(np.mean([r[k] for r in runs])) for k in ("q1", "q2", "q3")}
    out.update({f"{k}_std": float(np.std([r[k] for r in runs])) for k in ("q1", "q2", "q3")})
    return out
