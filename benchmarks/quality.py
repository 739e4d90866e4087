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

The errors scorer predicts the very count the benchmark makes (E[FP] + E[misses]), so besides ranking it is
checked for calibration: predicted ÷ counted errors, overall and by decile of the prediction. Its fitted model is
cross-fitted (`error_rankings`): each image is read by a model fitted on the other folds of the same set, never
by one that saw its labels.
"""
import numpy as np
from scipy.stats import spearmanr

from mining.errors import cross_fit_models, folds
from mining.truth import IOU_THRESHOLD, ImageErrors, count_errors  # noqa: F401 (the benchmark's words)

BUDGET = 0.2
TIE_DRAWS = 200
RANDOM_SEEDS = 10
FOLDS = 5      # cross-fitting of the error model: images by a hash of their key
BINS = 10      # calibration by decile of the prediction


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


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


def calibration(predicted_fp, predicted_fn, observed_fp, observed_fn, bins: int = BINS) -> dict:
    """Predicted ÷ observed errors per image (E[FP] + E[misses] against the counted FP + FN): summed over all
    images (and for each kind), summed within `bins` bins of images sorted by the prediction (lowest first,
    near-equal sizes), and Spearman rho per image. A ranking needs only the order; a ratio far from 1 says the
    numbers themselves (e.g. for an errors budget) are not to be read as counts."""
    pfp, pfn = np.asarray(predicted_fp, np.float64), np.asarray(predicted_fn, np.float64)
    ofp, ofn = np.asarray(observed_fp, np.float64), np.asarray(observed_fn, np.float64)
    predicted, observed = pfp + pfn, ofp + ofn
    order = np.argsort(predicted, kind="stable")
    by_bin = [{"images": len(b), "predicted": float(predicted[b].sum()), "observed": float(observed[b].sum()),
               "ratio": _ratio(predicted[b].sum(), observed[b].sum())} for b in np.array_split(order, bins) if len(b)]
    rho = float("nan") if np.ptp(predicted) == 0 or np.ptp(observed) == 0 else \
        float(spearmanr(predicted, observed).statistic)
    return {"predicted": float(predicted.sum()), "observed": float(observed.sum()),
            "ratio": _ratio(predicted.sum(), observed.sum()),
            "fp": {"predicted": float(pfp.sum()), "observed": float(ofp.sum()), "ratio": _ratio(pfp.sum(), ofp.sum())},
            "fn": {"predicted": float(pfn.sum()), "observed": float(ofn.sum()), "ratio": _ratio(pfn.sum(), ofn.sum())},
            "spearman": rho, "bins": by_bin}


def error_rankings(examples, keys, prior, fit, observed_fp, observed_fn, k: int = FOLDS) -> dict:
    """The errors scorer over one set's labelled examples (mining.errors.Example, one per image): its scores
    read by `prior` (ErrorModel() at the pass's thresholds) and cross-fitted (each image read by the model
    `fit(examples)` makes of the other k folds, mining.errors.folds by `keys`), each plain and per cost; and
    the calibration of both readings against the observed FP and FN."""
    fold_of = folds(len(examples), k, keys)
    readers = {"prior": [prior] * len(examples), "cross-fitted": cross_fit_models(examples, fold_of, fit)}
    scores, calibrations = {}, {}
    for name, models in readers.items():
        for per_cost in (False, True):
            row = f"errors ({name}, per cost)" if per_cost else f"errors ({name})"
            scores[row] = np.array([m.score(e.features, per_cost) for m, e in zip(models, examples)])
        calibrations[name] = calibration([m.p_false_positive(e.features).sum() for m, e in zip(models, examples)],
                                         [m.expected_misses(e.features) for m, e in zip(models, examples)],
                                         observed_fp, observed_fn)
    return {"scores": scores, "calibration": calibrations, "folds": fold_of}
