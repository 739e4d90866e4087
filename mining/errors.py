"""Error mining: the expected number of errors the model makes on an image (false positives + missed objects), from
a small model of where this detector errs, fitted on labelled images it did not train on (docs/mining.md#errors).

One forward gives every box down to a low candidate threshold (`errors_conf_thres`, uncapped, as entropy asks).
The boxes at the working threshold (`conf_thres`, the `max_det` best: what infer reports) are the kept ones; the
rest are candidates. Two plain models read features of them:
- per kept box, P(false positive): a logistic model of the box's features (BOX_FEATURES), one per class with
  enough examples of both outcomes, shrunk towards a shared one that every other class falls back to;
- per image, the expected number of missed objects: a Poisson model of the image's features (IMAGE_FEATURES),
  chiefly the score mass of the candidates under the threshold.
Without a fitted model the prior applies: P(false positive) = 1 - confidence, expected misses = the candidates'
score mass (the `expected_errors` of docs/benchmarks.md: right if the scores were calibrated).

Score = E[FP] + E[misses]; with `errors_per_cost` it is divided by the image's expected labelling cost, E[objects]
+ 1 (objects = kept boxes - E[FP] + E[misses]; the 1 is the image: never free), for budgets that pay per box.

The fitted model is plain numbers in JSON (`ErrorModel.to_dict`), written beside the weights as
`<weights stem>.errors.json` (ERRORS_SUFFIX); nothing is pickled.
"""
import json
import os
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from mining.base import Detections, Scorer
from mining.boxes import box_iou
from mining.entropy import box_entropy
from mining.truth import ImageTruth, match

FORMAT = "quarry-error-model"
VERSION = 1
ERRORS_SUFFIX = ".errors.json"
BOX_FEATURES = ("logit_conf", "margin", "class_entropy", "log_relative_size", "log1p_overlapping_candidates",
                "max_overlapping_score")
IMAGE_FEATURES = ("log1p_candidate_mass", "log1p_candidates_over_0.1", "log1p_kept_boxes")
OVERLAP_IOU = 0.5          # a candidate overlaps a kept box from this IoU on
MIN_FIT_BOXES = 20         # a fit needs this many kept boxes...
MIN_CLASS_BOXES = 20       # a class gets its own box model from this many kept boxes...
MIN_CLASS_OUTCOME = 3      # ...with at least this many of each outcome; else it uses the shared one
SHARED_PENALTY = 1.0       # L2 weight of the shared models' coefficients (features are standardised)
CLASS_PENALTY = 5.0        # L2 weight pulling a class's coefficients (and intercept) towards the shared ones


# ---------------------------------------------------------------- features of one image's detections

@dataclass
class ImageFeatures:
    """What the error model reads of one image: its kept boxes with their features, and the image's."""
    kept: np.ndarray     # (K,) indices of the kept boxes into the detections
    boxes: np.ndarray    # (K, len(BOX_FEATURES))
    cls: np.ndarray      # (K,) class of each kept box
    conf: np.ndarray     # (K,)
    image: np.ndarray    # (len(IMAGE_FEATURES),)
    mass: float          # the candidates' score mass under the threshold (the prior's expected misses)


def kept_boxes(conf: np.ndarray, conf_thres: float, max_det: int) -> np.ndarray:
    """Indices of the boxes infer would report: above conf_thres, the max_det best (NMS output is by falling
    score, so the first ones)."""
    order = np.argsort(-conf, kind="stable")
    return order[conf[order] > conf_thres][:max_det]


def image_features(det: Detections, size: tuple[int, int], conf_thres: float, max_det: int) -> ImageFeatures:
    """Features of one image's detections (every box down to the candidate threshold) of an image of `size`
    (height, width)."""
    conf = np.asarray(det.conf, np.float64)
    kept = kept_boxes(conf, conf_thres, max_det)
    below = np.setdiff1d(np.arange(len(conf)), kept)
    probs = np.asarray(det.probs, np.float64)[kept]
    top2 = -np.sort(-probs, axis=1)[:, :2] if probs.shape[1] > 1 else np.pad(probs, ((0, 0), (0, 1)))
    xyxy = np.asarray(det.xyxy, np.float64)
    area = np.clip(xyxy[kept, 2] - xyxy[kept, 0], 0, None) * np.clip(xyxy[kept, 3] - xyxy[kept, 1], 0, None)
    overlap = box_iou(xyxy[kept], xyxy) >= OVERLAP_IOU
    overlap[np.arange(len(kept)), kept] = False  # not itself
    others = np.where(overlap, conf[None, :], 0.0)
    c = np.clip(conf[kept], 1e-6, 1 - 1e-6)
    boxes = np.column_stack([
        np.log(c / (1 - c)),
        top2[:, 0] - top2[:, 1],
        box_entropy(probs) if len(kept) else np.zeros(0),
        0.5 * np.log(np.maximum(area / max(1.0, float(size[0]) * float(size[1])), 1e-8)),
        np.log1p(overlap.sum(axis=1)),
        others.max(axis=1, initial=0.0),
    ]).reshape(len(kept), len(BOX_FEATURES))
    mass = float(conf[below].sum())
    image = np.array([np.log1p(mass), np.log1p(float((conf[below] >= 0.1).sum())), np.log1p(len(kept))])
    return ImageFeatures(kept, boxes, np.asarray(det.cls, np.int64)[kept], conf[kept], image, mass)


# ---------------------------------------------------------------- the two models

def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    scale = x.std(axis=0) if len(x) else np.ones(x.shape[1])
    return mean, np.where(scale > 1e-9, scale, 1.0)


def _fit(loss, start: np.ndarray) -> np.ndarray:
    return minimize(loss, start, jac=True, method="L-BFGS-B").x


def fit_logistic(z: np.ndarray, y: np.ndarray, penalty: float, towards: np.ndarray | None = None,
                 penalise_intercept: bool = False) -> np.ndarray:
    """[intercept, coefficients] of P(y=1) = expit(b + z·w), by penalised maximum likelihood: + penalty/2 ·
    |w - towards|^2 (and the intercept's distance too when `penalise_intercept`)."""
    towards = np.zeros(z.shape[1] + 1) if towards is None else towards
    weight = np.full(z.shape[1] + 1, penalty)
    weight[0] = penalty if penalise_intercept else 0.0
    x = np.column_stack([np.ones(len(z)), z])

    def loss(theta):
        eta = x @ theta
        nll = float(np.sum(np.logaddexp(0.0, eta) - y * eta))
        diff = theta - towards
        return nll + 0.5 * float(np.sum(weight * diff * diff)), x.T @ (expit(eta) - y) + weight * diff

    return _fit(loss, towards.copy())


def fit_poisson(z: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """[intercept, coefficients] of E[y] = exp(b + z·w), by penalised Poisson maximum likelihood."""
    x = np.column_stack([np.ones(len(z)), z])
    weight = np.full(z.shape[1] + 1, penalty)
    weight[0] = 0.0
    start = np.zeros(z.shape[1] + 1)
    start[0] = np.log(max(float(np.mean(y)), 1e-3))

    def loss(theta):
        eta = np.clip(x @ theta, -30, 30)
        rate = np.exp(eta)
        return float(np.sum(rate - y * eta)) + 0.5 * float(np.sum(weight * theta * theta)), \
            x.T @ (rate - y) + weight * theta

    return _fit(loss, start)


@dataclass
class ErrorModel:
    """Where one detector errs (see the module docstring). `fitted` False: the prior, no numbers to read."""
    conf_thres: float = 0.25
    max_det: int = 100
    candidate_conf: float = 0.01
    class_names: list[str] = field(default_factory=list)
    fitted: bool = False
    box_mean: np.ndarray | None = None
    box_scale: np.ndarray | None = None
    box_shared: np.ndarray | None = None      # [intercept, coefficients]
    box_per_class: dict[int, np.ndarray] = field(default_factory=dict)
    image_mean: np.ndarray | None = None
    image_scale: np.ndarray | None = None
    misses: np.ndarray | None = None          # [intercept, coefficients]
    fitted_on: dict = field(default_factory=dict)

    def p_false_positive(self, f: ImageFeatures) -> np.ndarray:
        if not self.fitted:
            return 1.0 - f.conf
        z = np.column_stack([np.ones(len(f.cls)), (f.boxes - self.box_mean) / self.box_scale])
        theta = np.stack([self.box_per_class.get(int(c), self.box_shared) for c in f.cls]) if len(f.cls) else \
            np.zeros((0, z.shape[1]))
        return expit(np.sum(z * theta, axis=1))

    def expected_misses(self, f: ImageFeatures) -> float:
        if not self.fitted:
            return f.mass
        z = (f.image - self.image_mean) / self.image_scale
        return float(np.exp(np.clip(self.misses[0] + z @ self.misses[1:], -30, 30)))

    def score(self, f: ImageFeatures, per_cost: bool = False) -> float:
        """E[false positives] + E[misses] of the image; `per_cost`: divided by its expected labelling cost."""
        p_fp = self.p_false_positive(f)
        misses = self.expected_misses(f)
        errors = float(p_fp.sum()) + misses
        if not per_cost:
            return errors
        objects = float((1.0 - p_fp).sum()) + misses
        return errors / (objects + 1.0)

    # ------------------------------------------------------------ the file

    def to_dict(self) -> dict:
        if not self.fitted:
            raise ValueError("the prior is not written to a file")
        return {"format": FORMAT, "version": VERSION, "conf_thres": self.conf_thres, "max_det": self.max_det,
                "candidate_conf": self.candidate_conf, "class_names": list(self.class_names),
                "fitted_on": self.fitted_on,
                "false_positive": {"features": list(BOX_FEATURES), "mean": self.box_mean.tolist(),
                                   "scale": self.box_scale.tolist(), "shared": self.box_shared.tolist(),
                                   "per_class": {str(k): v.tolist() for k, v in sorted(self.box_per_class.items())}},
                "misses": {"features": list(IMAGE_FEATURES), "mean": self.image_mean.tolist(),
                           "scale": self.image_scale.tolist(), "coefficients": self.misses.tolist()}}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "ErrorModel":
        """The model a to_dict wrote; ValueError naming `where` for anything else."""
        try:
            if data.get("format") != FORMAT or data.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} version {VERSION} file")
            fp, misses = data["false_positive"], data["misses"]
            if list(fp["features"]) != list(BOX_FEATURES) or list(misses["features"]) != list(IMAGE_FEATURES):
                raise ValueError("its features are not this version's")
            vector = lambda v, n: _vector(v, n)  # noqa: E731
            nb, ni = len(BOX_FEATURES), len(IMAGE_FEATURES)
            return cls(float(data["conf_thres"]), int(data["max_det"]), float(data["candidate_conf"]),
                       [str(n) for n in data["class_names"]], True, vector(fp["mean"], nb), vector(fp["scale"], nb),
                       vector(fp["shared"], nb + 1),
                       {int(k): vector(v, nb + 1) for k, v in fp["per_class"].items()},
                       vector(misses["mean"], ni), vector(misses["scale"], ni),
                       vector(misses["coefficients"], ni + 1), dict(data.get("fitted_on") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{where}: not a usable error model ({exc})") from None

    def describe(self) -> str:
        if not self.fitted:
            return "the prior (P(false positive) = 1 - confidence, misses = the score mass under the threshold)"
        on = self.fitted_on
        return (f"fitted on {on.get('images', '?')} images of {on.get('source', '?')} ({on.get('boxes', '?')} "
                f"kept boxes, {on.get('false_positives', '?')} false positives, {on.get('misses', '?')} misses; "
                f"own box models for {len(self.box_per_class)} of {len(self.class_names)} classes)")


def _vector(values, size: int) -> np.ndarray:
    array = np.asarray(values, np.float64)
    if array.shape != (size,) or not np.isfinite(array).all():
        raise ValueError(f"expected {size} finite numbers, got {values!r}")
    return array


def read_error_model(path: str) -> ErrorModel:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read as JSON ({exc})") from None
    return ErrorModel.from_dict(data, path)


def errors_file(weights: str) -> str:
    """Where the error model of `weights` lives: beside it, `<stem>.errors.json`."""
    return os.path.splitext(weights)[0] + ERRORS_SUFFIX


# ---------------------------------------------------------------- fitting

@dataclass
class Example:
    """One labelled image for the fit: its features and, per kept box, whether it is a false positive (None:
    ignored, e.g. on a crowd region) and how many objects were missed."""
    features: ImageFeatures
    false_positive: np.ndarray  # (K,) float: 1.0 false positive, 0.0 true positive, nan ignored
    misses: int


def labelled_example(det: Detections, size: tuple[int, int], truth: ImageTruth, conf_thres: float, max_det: int,
                     classes=None) -> Example:
    """One image's Example: its features and the outcome of each kept box by the one labelled pass
    (mining/truth.py); a box it ignores (crowd, difficult, a class outside `classes`) is nan."""
    features = image_features(det, size, conf_thres, max_det)
    kept = features.kept
    outcome = match(det.xyxy[kept], det.conf[kept], det.cls[kept], truth, classes)
    return Example(features, np.where(outcome.ignored, np.nan, outcome.fp.astype(np.float64)), outcome.misses)


def fit_error_model(examples: list[Example], class_names, conf_thres: float, max_det: int, candidate_conf: float,
                    source: str = "") -> ErrorModel:
    """The two models fitted on `examples` (see the module docstring)."""
    boxes = np.concatenate([e.features.boxes for e in examples]) if examples else np.zeros((0, len(BOX_FEATURES)))
    cls = np.concatenate([e.features.cls for e in examples]) if examples else np.zeros(0, np.int64)
    label = np.concatenate([e.false_positive for e in examples]) if examples else np.zeros(0)
    counted = ~np.isnan(label)
    boxes, cls, label = boxes[counted], cls[counted], label[counted]
    wrong = int(label.sum())
    if len(label) < MIN_FIT_BOXES or min(wrong, len(label) - wrong) < MIN_CLASS_OUTCOME:
        raise ValueError(f"cannot fit an error model on {len(examples)} images: it needs {MIN_FIT_BOXES} kept boxes, "
                         f"at least {MIN_CLASS_OUTCOME} right and {MIN_CLASS_OUTCOME} wrong ({wrong} false positives "
                         f"of {len(label)})")
    box_mean, box_scale = _standardise(boxes)
    z = (boxes - box_mean) / box_scale
    shared = fit_logistic(z, label, SHARED_PENALTY)
    per_class = {}
    for k in np.unique(cls):
        mine = cls == k
        wrong = int(label[mine].sum())
        if mine.sum() >= MIN_CLASS_BOXES and min(wrong, int(mine.sum()) - wrong) >= MIN_CLASS_OUTCOME:
            per_class[int(k)] = fit_logistic(z[mine], label[mine], CLASS_PENALTY, shared, penalise_intercept=True)
    images = np.stack([e.features.image for e in examples])
    missed = np.array([e.misses for e in examples], np.float64)
    image_mean, image_scale = _standardise(images)
    misses = fit_poisson((images - image_mean) / image_scale, missed, SHARED_PENALTY)
    return ErrorModel(float(conf_thres), int(max_det), float(candidate_conf), [str(n) for n in class_names], True,
                      box_mean, box_scale, shared, per_class, image_mean, image_scale, misses,
                      {"images": len(examples), "boxes": int(len(label)), "false_positives": int(label.sum()),
                       "misses": int(missed.sum()), "source": source})


def folds(count: int, k: int, keys=None) -> np.ndarray:
    """Fold number (0..k-1) of each of `count` images: by a hash of its key when given (stable whatever the
    order), else round robin."""
    if keys is None:
        return np.arange(count) % k
    from mining.base import image_seed

    return np.array([image_seed(0, "fold\x00" + str(key)) % k for key in keys])


def cross_fit_models(examples: list[Example], fold_of: np.ndarray, fit) -> list[ErrorModel]:
    """The model that scores each image: fitted on the other folds only (`fit(examples) -> ErrorModel`, once per
    fold), so no image is scored by a model that saw its labels."""
    fold_of = np.asarray(fold_of)
    by_fold = {fold: fit([e for e, f in zip(examples, fold_of) if f != fold]) for fold in np.unique(fold_of)}
    return [by_fold[fold] for fold in fold_of]


def cross_fit_scores(examples: list[Example], fold_of: np.ndarray, fit, per_cost: bool = False) -> np.ndarray:
    """Each image scored by a model fitted on the other folds only (cross_fit_models)."""
    models = cross_fit_models(examples, fold_of, fit)
    return np.array([model.score(e.features, per_cost) for model, e in zip(models, examples)])


# ---------------------------------------------------------------- the scorer

class ErrorsScorer(Scorer):
    """Expected errors per image from one forward (every box down to errors_conf_thres, uncapped), read by the
    error model of the weights (`error_model`, handed over by the executor) or, without one, by the prior."""
    params = ("conf_thres", "max_det", "errors_conf_thres", "errors_per_cost")
    uses_error_model = True

    def __init__(self, *, conf_thres: float, max_det: int, errors_conf_thres: float, errors_per_cost: bool,
                 error_model: ErrorModel | None = None):
        self.model = error_model or ErrorModel(conf_thres, max_det, errors_conf_thres)
        self.per_cost = bool(errors_per_cost)

    def _score(self, batch, detector) -> np.ndarray:
        m = self.model
        found = detector.predict(batch, conf_thres=m.candidate_conf, capped=False)
        return np.array([m.score(image_features(d, size, m.conf_thres, m.max_det), self.per_cost)
                         for d, size in zip(found, batch.sizes())])
