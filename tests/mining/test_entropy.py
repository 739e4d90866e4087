import math

import numpy as np
import pytest

from mining.entropy import box_distribution, box_entropy, image_entropy


def test_distribution_appends_not_an_object_and_normalises():
    q = box_distribution(np.array([[0.8, 0.2]]))
    assert np.allclose(q, [[0.8 / 1.2, 0.2 / 1.2, 0.2 / 1.2]])


def test_box_entropy_hand_values():
    h = box_entropy(np.array([[0.8, 0.2], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.5, 0.0]]))
    expected = [(2 / 3) * math.log(1.5) + (1 / 3) * math.log(6),  # [2/3, 1/6, 1/6]
                math.log(2),                                      # two certain classes: [1/2, 1/2, 0]
                0.0,                                              # certainly background
                0.0,                                              # certainly class 0
                math.log(2)]                                      # object or not: [1/2, 0, 1/2]
    assert np.allclose(h, expected)


def test_maximum_is_log_c_plus_1():
    c = 5
    h = box_entropy(np.full((1, c), 1 / 2))    # normalises to uniform over C+1 = 6 entries
    assert np.allclose(h, math.log(c + 1))
    assert (box_entropy(np.random.default_rng(0).random((200, c))) <= math.log(c + 1) + 1e-12).all()


@pytest.mark.parametrize("aggregation, expected", [("sum", 2 * math.log(2)), ("mean", 2 * math.log(2) / 3),
                                                   ("max", math.log(2)), ("topk_mean", 2 * math.log(2) / 3)])
def test_aggregations(aggregation, expected):
    probs = np.array([[1.0, 1.0], [0.5, 0.0], [1.0, 0.0]])  # box entropies ln2, ln2, 0
    assert image_entropy(probs, aggregation) == pytest.approx(expected)


def test_topk_mean_is_the_mean_of_the_k_largest():
    probs = np.array([[1.0, 1.0], [0.5, 0.0], [1.0, 0.0]])  # box entropies ln2, ln2, 0
    assert image_entropy(probs, "topk_mean", topk=2) == pytest.approx(math.log(2))
    assert image_entropy(probs, "topk_mean", topk=1) == pytest.approx(math.log(2))
    assert image_entropy(probs[2:], "topk_mean", topk=5) == 0.0  # fewer boxes than k: the mean of those


@pytest.mark.parametrize("aggregation", ["sum", "mean", "max", "topk_mean"])
def test_no_detections_score_zero(aggregation):
    assert image_entropy(np.zeros((0, 80), dtype=np.float32), aggregation) == 0.0


def test_finite_on_nan_inf_and_out_of_range():
    probs = np.array([[np.nan, 0.5], [np.inf, -np.inf], [1.5, -0.2], [0.0, 0.0]], dtype=np.float32)
    h = box_entropy(probs)
    assert np.isfinite(h).all() and (h >= 0).all()
    assert math.isfinite(image_entropy(probs, "sum"))


def test_bad_input():
    with pytest.raises(ValueError):
        image_entropy(np.zeros((2, 3)), "median")
    with pytest.raises(ValueError):
        box_entropy(np.zeros(3))


def test_returns_python_float():
    assert isinstance(image_entropy(np.array([[0.3, 0.6]], dtype=np.float32), "max"), float)
