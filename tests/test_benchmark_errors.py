"""The quality benchmark's errors rows (benchmarks/quality.py error_rankings, calibration; benchmarks/__main__.py
evaluate_quality): the cross-fitted rows must never read an image with a model that saw its labels, and the
calibration is checked against numbers worked out by hand."""
import numpy as np
import pytest

from benchmarks import quality
from mining.base import Detections
from mining.errors import ErrorModel, Example, ImageFeatures, folds, labelled_example
from mining.truth import ImageTruth


def detections(boxes, conf, cls, classes=3) -> Detections:
    conf = np.asarray(conf, np.float32)
    probs = np.zeros((len(conf), classes), np.float32)
    probs[np.arange(len(conf)), cls] = conf
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), conf, np.asarray(cls, np.int64), probs)


def test_labelled_example_ignores_the_classes_a_set_does_not_label():
    truth = ImageTruth("a.jpg", [[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0])
    det = detections([[0, 0, 10, 10], [20, 20, 30, 30], [70, 70, 80, 80], [50, 50, 60, 60]],
                     [0.9, 0.6, 0.5, 0.1], [0, 0, 2, 0])
    e = labelled_example(det, (100, 100), truth, 0.25, 100, classes={0, 1})
    # kept: the three boxes above 0.25, by falling score: a true positive, a false positive, a bench nobody labels;
    # the box at 0.1 is a candidate, so the second object is missed
    assert e.features.kept.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(e.false_positive, [0.0, 1.0, np.nan])
    assert e.misses == 1
    assert np.isnan(labelled_example(det, (100, 100), truth, 0.25, 100).false_positive).sum() == 0  # all classes


def _examples(n, seed=0) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 5))
        conf = rng.uniform(0.3, 0.95, k)
        features = ImageFeatures(np.arange(k), rng.normal(size=(k, 6)), rng.integers(0, 2, k), conf,
                                 rng.normal(size=3), float(rng.uniform(0, 2)))
        out.append(Example(features, (rng.random(k) > conf).astype(float), int(rng.integers(0, 3))))
    return out


class Seer:
    """A stand-in error model that knows which examples it was fitted on: it scores an image it saw -1000, any
    other the number of images it saw."""

    def __init__(self, seen):
        self.seen = {id(e.features) for e in seen}
        self.size = len(seen)

    def score(self, features, per_cost=False):
        return -1000.0 if id(features) in self.seen else float(self.size)

    def p_false_positive(self, features):
        return np.full(len(features.conf), self.score(features) / max(1, len(features.conf)))

    def expected_misses(self, features):
        return 0.0


def test_cross_fitted_rows_never_read_an_image_with_a_model_that_saw_it():
    examples = _examples(23)
    keys = [f"img{i:03d}.jpg" for i in range(23)]
    fits = []

    def fit(chosen):
        fits.append(len(chosen))
        return Seer(chosen)

    found = quality.error_rankings(examples, keys, ErrorModel(), fit, np.zeros(23), np.zeros(23))
    fold_of = found["folds"]
    assert fold_of.tolist() == folds(23, quality.FOLDS, keys).tolist() and len(set(fold_of)) > 1
    assert len(fits) == len(set(fold_of))  # one model per fold, not per image
    expected = [float(np.sum(fold_of != f)) for f in fold_of]  # each read by the model of all the other folds
    for row in ("errors (cross-fitted)", "errors (cross-fitted, per cost)"):
        assert found["scores"][row].tolist() == expected
    assert found["calibration"]["cross-fitted"]["predicted"] == pytest.approx(sum(expected))
    # folds follow the keys, not the order
    order = np.random.default_rng(1).permutation(23)
    assert folds(23, quality.FOLDS, [keys[i] for i in order]).tolist() == fold_of[order].tolist()


def test_error_rankings_read_the_prior_and_a_real_fit():
    from mining.errors import fit_error_model

    examples = _examples(40, seed=2)
    keys = [f"{i}.jpg" for i in range(40)]
    prior = ErrorModel(0.25, 100, 0.01)
    fp = [int(np.nansum(e.false_positive)) for e in examples]
    fn = [e.misses for e in examples]
    found = quality.error_rankings(examples, keys, prior, lambda c: fit_error_model(c, ["a", "b"], 0.25, 100, 0.01),
                                   fp, fn)
    assert set(found["scores"]) == {"errors (prior)", "errors (prior, per cost)", "errors (cross-fitted)",
                                    "errors (cross-fitted, per cost)"}
    assert found["scores"]["errors (prior)"].tolist() == pytest.approx(
        [(1 - e.features.conf).sum() + e.features.mass for e in examples])
    # the cross-fitted score of an image is that of the model fitted on the other folds, exactly
    fold_of = found["folds"]
    held_out = fold_of[0]
    model = fit_error_model([e for e, f in zip(examples, fold_of) if f != held_out], ["a", "b"], 0.25, 100, 0.01)
    assert found["scores"]["errors (cross-fitted, per cost)"][0] == pytest.approx(
        model.score(examples[0].features, True))
    prior_calibration = found["calibration"]["prior"]
    assert prior_calibration["predicted"] == pytest.approx(found["scores"]["errors (prior)"].sum())
    assert prior_calibration["observed"] == sum(fp) + sum(fn)


def test_calibration_worked_out_by_hand():
    c = quality.calibration([0, 1, 2, 3], [0, 0, 1, 1], [1, 0, 1, 2], [0, 1, 1, 2], bins=2)
    # predicted per image 0, 1, 3, 4 (8); observed 1, 1, 2, 4 (8)
    assert (c["predicted"], c["observed"], c["ratio"]) == (8.0, 8.0, 1.0)
    assert c["fp"] == {"predicted": 6.0, "observed": 4.0, "ratio": 1.5}
    assert c["fn"] == {"predicted": 2.0, "observed": 4.0, "ratio": 0.5}
    # lower half by prediction: images 0 and 1 (1 predicted, 2 observed); upper half: 7 against 6
    assert c["bins"] == [{"images": 2, "predicted": 1.0, "observed": 2.0, "ratio": 0.5},
                         {"images": 2, "predicted": 7.0, "observed": 6.0, "ratio": pytest.approx(7 / 6)}]
    # ranks 1, 2, 3, 4 against 1.5, 1.5, 3, 4: 4.5 / sqrt(5 · 4.5)
    assert c["spearman"] == pytest.approx(3 / np.sqrt(10))


def test_calibration_bins_sort_by_prediction_and_survive_empty_ones():
    c = quality.calibration([3, 0, 2], [0, 0, 0], [0, 0, 5], [0, 1, 0], bins=10)
    assert [b["predicted"] for b in c["bins"]] == [0.0, 2.0, 3.0]          # 3 images: 3 bins, lowest first
    assert [b["observed"] for b in c["bins"]] == [1.0, 5.0, 0.0]
    assert np.isnan(c["bins"][2]["ratio"])                                    # nothing observed there
    assert np.isnan(quality.calibration([1, 1], [0, 0], [0, 1], [0, 0])["spearman"])  # a constant prediction


def _jpeg(path, width, height):
    from PIL import Image

    Image.new("RGB", (width, height)).save(path)


def test_evaluate_quality_gives_the_errors_rows_and_their_calibration(tmp_path):
    """The wiring end to end on a synthetic set: image sizes from the files, labels from the one labelled pass,
    the mined prior under its row name, checked against the pass's own reading."""
    from benchmarks.__main__ import evaluate_quality
    from benchmarks.gt import Dataset

    rng = np.random.default_rng(3)
    images, found = [], {}
    for i in range(30):
        path = str(tmp_path / f"{i:02d}.jpg")
        _jpeg(path, 120, 80)
        truth_boxes = [[10, 10, 40, 40], [60, 20, 100, 60]][:1 + i % 2]
        images.append(ImageTruth(path, truth_boxes, [0] * len(truth_boxes)))
        boxes = [[10, 10, 40, 40], [rng.uniform(0, 60), 0, 110, 70], [0, 50, 30, 79], [60, 20, 100, 60]]
        found[path] = detections(boxes, sorted(rng.uniform(0.02, 0.95, 4), reverse=True), [0, 0, 2, 1])
    dataset = Dataset("tiny", images, frozenset({0, 1}))
    prior = ErrorModel(0.25, 100, 0.01)
    from mining.errors import image_features

    mined = [prior.score(image_features(found[k], (80, 120), 0.25, 100)) for k in dataset.paths]
    q = evaluate_quality(dataset, found, {"errors": mined}, 0.25, 100, ["a", "b", "c"])
    assert "errors" not in q["rows"] and {"errors (prior)", "errors (prior, per cost)", "errors (cross-fitted)",
                                          "errors (cross-fitted, per cost)"} <= set(q["rows"])
    assert q["calibration"]["prior"]["mined_max_abs_diff"] == pytest.approx(0.0, abs=1e-9)
    assert q["calibration"]["prior"]["observed"] == q["totals"]["errors"]
    assert set(q["calibration"]) == {"prior", "cross-fitted"} and len(q["per_image"]["errors_fold"]) == 30
    assert "entropy_topk_mean (k=3, candidates >= 0.01)" in q["variants"]


def test_the_report_shows_the_errors_rows_and_calibration():
    from benchmarks import report

    def row(q2):
        return {"q1": 0.3, "q2": q2, "q3": 0.4}

    calibration = quality.calibration([1, 2, 3], [1, 1, 1], [1, 1, 1], [2, 1, 1], bins=3)
    q = {"rows": {"random": {"q1": 0.2, "q2": 0.2, "q3": 0.0, "q1_std": 0, "q2_std": 0, "q3_std": 0},
                  "detections": {"q1": 0.25, "q2": 0.19, "q3": 0.1},
                  "errors (prior)": row(0.3), "errors (cross-fitted, per cost)": row(0.1)},
         "variants": {}, "calibration": {"prior": calibration}}
    s = report.summarise({"quality": {"voc2007": q}, "speed": {"runs": {"errors": [{"ratio_to_p0": 0.8}]}}})
    assert s["targets"]["voc2007: errors (prior) beats random on Q2, Q1, Q3"]
    assert not s["targets"]["voc2007: errors (cross-fitted, per cost) beats random on Q2, Q1, Q3"]
    assert s["voc2007_best_meeting_targets"] == ["errors (prior)"]
    assert s["P1_errors"] == 0.8 and s["targets"]["P1 errors >= 0.90"] is False  # judged like entropy's
    assert [r[0] for r in report.quality_rows(q)][2:] == ["errors (prior)", "errors (cross-fitted, per cost)"]
    (cells,) = report.calibration_rows(q)
    # predicted 9 against 7; FP 6 / 3, FN 3 / 4; by image (lowest first) 2/3, 3/2, 4/2
    assert cells[:6] == ["prior", "9.0 / 7", "**1.29**", "2.00", "0.75", "-0.866"]
    assert cells[6] == "0.67 1.50 2.00"


def test_the_best_forward_is_the_yardstick_of_one_run_over_the_pool():
    """Issue 28's rows: P0 best (by batch size) and P1 run = one mining run's own throughput ÷ P0 best, judged for
    entropy and aldd at 0.90, CALD's times its 5 forwards at 0.85; the ONNX run is reported against the same P0."""
    from benchmarks import report

    speed = {"p0_best": {"images_per_s": 20.0, "batch": 8, "by_batch": {"1": 15.0, "8": 20.0}, "images": 206,
                         "shapes": 11, "threads": 2},
             "run": {"entropy": {"images": 206, "images_per_s": 18.5}, "errors": {"images": 206, "images_per_s": 17.0},
                     "aldd": {"images": 206, "images_per_s": 17.8}, "cald": {"images": 206, "images_per_s": 3.5},
                     "entropy (onnx)": {"images": 206, "images_per_s": 21.0}}}
    r = {"speed": speed}
    s = report.summarise(r)
    assert s["P1_run_entropy"] == pytest.approx(0.925) and s["P1_run_aldd"] == pytest.approx(0.89)
    assert s["P1_run_cald"] == pytest.approx(0.875) and s["targets"]["P1 run cald x5 >= 0.85 (P0 best)"]
    assert s["P1_run_entropy (onnx)"] == pytest.approx(1.05) and len(s["targets"]) == 3
    assert s["targets"]["P1 run entropy >= 0.90 (P0 best)"] and not s["targets"]["P1 run aldd >= 0.90 (P0 best)"]
    assert "P1 run errors >= 0.90 (P0 best)" not in s["targets"]  # reported, not judged
    rows = {row[0]: row for row in report.speed_rows({**r, "summary": s})}
    assert rows["P0 best"][2].startswith("20.00 img/s (batch 8; img/s by batch 1: 15.00, 8: 20.00")
    assert rows["P1 run errors"][3] == "(report)" and rows["P1 run entropy"][3] == ">= 0.90"
    assert rows["P1 run cald"][3] == "x5 >= 0.85" and "x 5" in rows["P1 run cald"][1]
