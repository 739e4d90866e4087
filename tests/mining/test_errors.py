"""The error model (mining/errors.py): features of hand-made detections, the fits on synthetic data with known
coefficients, the fallback of a class without examples, the JSON round trip, cross-fitting and the scorer."""
import json

import numpy as np
import pytest
from scipy.special import expit

from mining.base import Detections
from mining.errors import (BOX_FEATURES, IMAGE_FEATURES, ErrorModel, ErrorsScorer, Example, ImageFeatures,
                           cross_fit_scores, errors_file, fit_error_model, fit_logistic, fit_poisson, folds,
                           image_features, read_error_model)


def detections(xyxy, conf, cls, classes=3):
    probs = np.zeros((len(conf), classes), np.float32)
    probs[np.arange(len(conf)), cls] = conf
    return Detections(np.asarray(xyxy, np.float32).reshape(-1, 4), np.asarray(conf, np.float32),
                      np.asarray(cls, np.int64), probs)


def test_features_split_kept_boxes_from_candidates():
    det = detections([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]],
                     [0.9, 0.2, 0.6, 0.05], [0, 1, 2, 0])
    f = image_features(det, (100, 100), conf_thres=0.25, max_det=100)
    assert f.kept.tolist() == [0, 2] and f.cls.tolist() == [0, 2]
    assert f.mass == pytest.approx(0.25)   # the candidates under the threshold
    assert f.boxes.shape == (2, len(BOX_FEATURES)) and f.image.shape == (len(IMAGE_FEATURES),)
    overlapping = BOX_FEATURES.index("log1p_overlapping_candidates")
    assert f.boxes[:, overlapping] == pytest.approx([np.log1p(1), 0.0])  # box 1 overlaps box 0 (IoU 0.81)
    assert f.boxes[0, BOX_FEATURES.index("max_overlapping_score")] == pytest.approx(0.2)
    assert f.boxes[0, BOX_FEATURES.index("log_relative_size")] == pytest.approx(0.5 * np.log(0.01))
    assert f.image.tolist() == pytest.approx([np.log1p(0.25), np.log1p(1), np.log1p(2)])
    # max_det keeps the best ones only
    assert image_features(det, (100, 100), 0.25, 1).kept.tolist() == [0]


def test_the_prior_is_one_minus_confidence_plus_the_candidates_mass():
    det = detections([[0, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]], [0.9, 0.6, 0.05], [0, 2, 0])
    f = image_features(det, (100, 100), 0.25, 100)
    prior = ErrorModel()
    assert prior.score(f) == pytest.approx(0.1 + 0.4 + 0.05)
    objects = 0.9 + 0.6 + 0.05
    assert prior.score(f, per_cost=True) == pytest.approx((0.1 + 0.4 + 0.05) / (objects + 1))


def test_logistic_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 3))
    truth = np.array([-0.5, 1.5, -1.0, 0.7])
    y = (rng.random(len(z)) < expit(truth[0] + z @ truth[1:])).astype(float)
    assert fit_logistic(z, y, penalty=1.0) == pytest.approx(truth, abs=0.06)


def test_poisson_fit_recovers_known_coefficients():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20000, 2))
    truth = np.array([0.3, 0.8, -0.4])
    y = rng.poisson(np.exp(truth[0] + z @ truth[1:]))
    assert fit_poisson(z, y, penalty=1.0) == pytest.approx(truth, abs=0.04)


def synthetic_examples(count: int, seed: int, classes=(0, 1), slope=3.0):
    """Images whose kept boxes are false positives with P = expit(slope * (0.5 - conf) ...) by class, and whose
    misses follow the candidates' mass: data a fitted model must read better than the prior."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(count):
        k = rng.integers(1, 6)
        boxes = rng.normal(size=(k, len(BOX_FEATURES)))
        cls = rng.choice(classes, size=k)
        # class 1's boxes are wrong far more often than class 0's at the same features
        p = expit(slope * boxes[:, 0] + np.where(cls == 1, 2.0, -1.0))
        image = rng.normal(size=len(IMAGE_FEATURES))
        features = ImageFeatures(np.arange(k), boxes, cls, rng.random(k), image, float(abs(image[0])))
        examples.append(Example(features, (rng.random(k) < p).astype(float), int(rng.poisson(np.exp(0.5 + image[0])))))
    return examples


def test_classes_get_their_own_model_and_a_class_without_examples_falls_back():
    model = fit_error_model(synthetic_examples(600, 2), ["a", "b", "c"], 0.25, 100, 0.01, "synthetic")
    assert set(model.box_per_class) == {0, 1}   # class 2 never occurs: the shared model
    f = ImageFeatures(np.arange(3), np.zeros((3, len(BOX_FEATURES))), np.array([0, 1, 2]), np.full(3, 0.5),
                      np.zeros(len(IMAGE_FEATURES)), 0.0)
    p0, p1, p2 = model.p_false_positive(f)
    assert p0 < p2 < p1   # class 0 rarely wrong, class 1 often, the unseen class in between (the shared model)
    assert p0 == pytest.approx(expit(-1.0), abs=0.1) and p1 == pytest.approx(expit(2.0), abs=0.1)
    assert model.fitted_on["images"] == 600 and model.fitted_on["source"] == "synthetic"


def test_fit_needs_both_outcomes():
    examples = synthetic_examples(20, 3)
    for e in examples:
        e.false_positive[:] = 0.0
    with pytest.raises(ValueError, match="at least 3 right and 3 wrong"):
        fit_error_model(examples, ["a", "b"], 0.25, 100, 0.01)
    with pytest.raises(ValueError, match="needs 20 kept boxes"):
        fit_error_model(synthetic_examples(3, 3), ["a", "b"], 0.25, 100, 0.01)


def test_json_round_trip_and_bad_files(tmp_path):
    model = fit_error_model(synthetic_examples(300, 4), ["a", "b"], 0.3, 50, 0.02, "synthetic")
    path = tmp_path / "best.errors.json"
    path.write_text(json.dumps(model.to_dict()))
    again = read_error_model(str(path))
    f = synthetic_examples(5, 5)[0].features
    assert again.score(f) == pytest.approx(model.score(f)) and again.score(f, True) == pytest.approx(model.score(f, True))
    assert (again.conf_thres, again.max_det, again.candidate_conf) == (0.3, 50, 0.02)
    assert errors_file("/m/best.pt") == "/m/best.errors.json" and errors_file("/m/best.onnx") == "/m/best.errors.json"
    data = model.to_dict()
    data["false_positive"]["shared"] = data["false_positive"]["shared"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="best.errors.json: not a usable error model"):
        read_error_model(str(path))
    path.write_text("{")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        read_error_model(str(path))
    with pytest.raises(ValueError, match="prior"):
        ErrorModel().to_dict()


def test_cross_fitting_never_scores_an_image_with_a_model_that_saw_it():
    examples = synthetic_examples(100, 6)
    fold_of = folds(len(examples), 5, [f"img{i}.jpg" for i in range(len(examples))])
    assert set(fold_of) == set(range(5))
    seen = []

    def fit(part):
        seen.append({id(e) for e in part})
        return fit_error_model(part, ["a", "b"], 0.25, 100, 0.01)

    scores = cross_fit_scores(examples, fold_of, fit)
    assert len(seen) == 5 and np.isfinite(scores).all() and (scores >= 0).all()
    for fold, fitted_on in zip(sorted(set(fold_of)), seen):
        scored_here = {id(examples[i]) for i in np.where(fold_of == fold)[0]}
        assert not scored_here & fitted_on


def test_a_fitted_model_ranks_errors_better_than_the_prior_on_its_kind_of_data():
    from scipy.stats import spearmanr

    train, test = synthetic_examples(800, 7), synthetic_examples(300, 8)
    model = fit_error_model(train, ["a", "b"], 0.25, 100, 0.01)
    observed = [e.false_positive.sum() + e.misses for e in test]
    fitted = spearmanr([model.score(e.features) for e in test], observed).statistic
    prior = spearmanr([ErrorModel().score(e.features) for e in test], observed).statistic
    assert fitted > prior + 0.1


class OneImageDetector:
    num_classes = 3

    def __init__(self, det):
        self.det, self.asked = det, []

    def predict(self, batch, conf_thres=None, capped=True):
        self.asked.append((conf_thres, capped))
        return [self.det for _ in batch.keys]


def test_scorer_reads_every_candidate_uncapped_with_the_model_or_the_prior():
    from mining.base import Batch

    det = detections([[0, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]], [0.9, 0.6, 0.05], [0, 2, 0])
    batch = Batch(["a.jpg"], [np.zeros((100, 100, 3), np.uint8)], np.zeros((1, 32, 32, 3), np.uint8), [None])
    detector = OneImageDetector(det)
    prior = ErrorsScorer(conf_thres=0.25, max_det=100, errors_conf_thres=0.02, errors_per_cost=False)
    assert prior.score(batch, detector) == pytest.approx([0.55])
    assert detector.asked == [(0.02, False)]
    fitted = fit_error_model(synthetic_examples(300, 9, classes=(0, 1, 2)), ["a", "b", "c"], 0.3, 100, 0.04)
    scorer = ErrorsScorer(conf_thres=0.25, max_det=100, errors_conf_thres=0.02, errors_per_cost=True,
                          error_model=fitted)
    expected = fitted.score(image_features(det, (100, 100), 0.3, 100), per_cost=True)
    assert scorer.score(batch, detector) == pytest.approx([expected])
    assert detector.asked[-1] == (0.04, False)   # a fitted model reads the thresholds it was fitted with
