import math

import numpy as np
import pytest

from mining.cald import BETA, NO_DETECTION_SCORE, SCORE_OFFSET, cald_score, js_divergence
from mining.entropy import box_distribution

REF_BOXES = np.array([[10, 10, 50, 50], [60, 20, 90, 80]], dtype=np.float32)
REF_PROBS = np.array([[0.3, 0.05], [0.02, 0.9]], dtype=np.float32)
REF_CONF = REF_PROBS.max(1)
EMPTY = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 2), np.float32))


def identical_view():
    return REF_BOXES, (REF_BOXES.copy(), REF_CONF.copy(), REF_PROBS.copy())


def test_js_divergence_bounds():
    p = np.array([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])
    q = np.array([[0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    js = js_divergence(p, q)
    # last row: m = [0.75, 0.25]
    expected_last = 0.5 * math.log(1 / 0.75) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert np.allclose(js, [math.log(2), 0.0, expected_last])


def test_identical_views_hand_computed():
    # IoU 1, JS 0: C_r = 1 + conf_r -> 1.3 and 1.9; min |C - 1.3| = 0 -> the best possible score
    views = [identical_view() for _ in range(4)]
    score = cald_score(REF_PROBS, REF_CONF, [v[0] for v in views], [v[1] for v in views])
    assert score == pytest.approx(SCORE_OFFSET, abs=1e-6)
    # with only the confident box, C = 1.9: score 2 - (1.9 - 1.3)
    score = cald_score(REF_PROBS[1:], REF_CONF[1:], [REF_BOXES[1:]] * 2, [(REF_BOXES[1:], REF_CONF[1:], REF_PROBS[1:])] * 2)
    assert score == pytest.approx(SCORE_OFFSET - 0.6, abs=1e-6)


def test_view_that_loses_all_boxes_counts_as_total_inconsistency():
    ref, _ = identical_view()
    score = cald_score(REF_PROBS[1:], REF_CONF[1:], [REF_BOXES[1:]] * 4,
                       [(REF_BOXES[1:], REF_CONF[1:], REF_PROBS[1:])] * 3 + [EMPTY])
    assert score == pytest.approx(SCORE_OFFSET - (3 * 0.6 + BETA) / 4, abs=1e-6)
    all_lost = cald_score(REF_PROBS, REF_CONF, [ref] * 4, [EMPTY] * 4)
    assert all_lost == pytest.approx(SCORE_OFFSET - BETA)


def test_unmatched_reference_has_zero_consistency():
    far = np.array([[200, 200, 220, 220]], dtype=np.float32)
    score = cald_score(REF_PROBS[:1], REF_CONF[:1], [REF_BOXES[:1]], [(far, np.array([0.9]), np.array([[0.9, 0.0]]))])
    assert score == pytest.approx(SCORE_OFFSET - BETA)


def test_hand_computed_partial_match():
    # reference [0,0,10,10] conf 0.6 class 0; prediction shifted by 5 px: IoU 50/150 = 1/3
    ref_probs, ref_conf = np.array([[0.6, 0.0]]), np.array([0.6])
    pred = (np.array([[5, 0, 15, 10]]), np.array([0.4]), np.array([[0.4, 0.0]]))
    p, q = box_distribution(ref_probs)[0], box_distribution(pred[2])[0]   # [0.6, 0, 0.4], [0.4, 0, 0.6]
    m = (p + q) / 2
    js = 0.5 * sum(a * math.log(a / b) for a, b in zip(p, m) if a) + 0.5 * sum(a * math.log(a / b) for a, b in zip(q, m) if a)
    c = 1 / 3 + 0.5 * (1 - js) * (0.6 + 0.4)
    score = cald_score(ref_probs, ref_conf, [np.array([[0, 0, 10, 10]])], [pred])
    assert score == pytest.approx(SCORE_OFFSET - abs(c - BETA), rel=1e-9)


def test_matching_uses_iou_not_order():
    ref_boxes = REF_BOXES
    swapped = (REF_BOXES[::-1].copy(), REF_CONF[::-1].copy(), REF_PROBS[::-1].copy())
    a = cald_score(REF_PROBS, REF_CONF, [ref_boxes], [swapped])
    b = cald_score(REF_PROBS, REF_CONF, [ref_boxes], [identical_view()[1]])
    assert a == pytest.approx(b)


def test_score_does_not_accumulate_over_boxes():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 100, (5, 2))
    boxes = np.concatenate([boxes, boxes + rng.uniform(5, 30, (5, 2))], 1)
    probs = rng.uniform(0, 1, (5, 3))
    conf = probs.max(1)
    views = [(boxes + rng.normal(0, 3, boxes.shape), conf * 0.9, probs * 0.9) for _ in range(4)]
    one = cald_score(probs, conf, [boxes] * 4, views)
    doubled = cald_score(np.concatenate([probs, probs]), np.concatenate([conf, conf]),
                         [np.concatenate([boxes, boxes])] * 4, views)
    assert one == pytest.approx(doubled)


def test_bounds_on_random_inputs():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n, m, c = rng.integers(1, 6), rng.integers(0, 6), 4
        ref = rng.uniform(0, 50, (n, 2))
        ref = np.concatenate([ref, ref + rng.uniform(1, 30, (n, 2))], 1)
        pred = rng.uniform(0, 50, (m, 2))
        pred = np.concatenate([pred, pred + rng.uniform(1, 30, (m, 2))], 1)
        probs, pprobs = rng.random((n, c)), rng.random((m, c))
        s = cald_score(probs, probs.max(1), [ref] * 4, [(pred, pprobs.max(1, initial=0), pprobs)] * 4)
        assert SCORE_OFFSET - max(BETA, 2 - BETA) <= s <= SCORE_OFFSET


def test_no_reference_detections():
    assert cald_score(np.zeros((0, 2)), np.zeros(0), [np.zeros((0, 4))] * 4, [EMPTY] * 4) == NO_DETECTION_SCORE
    assert 0.0 <= NO_DETECTION_SCORE <= SCORE_OFFSET - max(BETA, 2 - BETA)


def test_finite_with_zero_one_and_nan():
    probs = np.array([[1.0, 0.0], [np.nan, 1.0], [0.0, 0.0]])
    boxes = np.array([[0, 0, 10, 10], [5, 5, 5, 5], [np.nan, 0, 3, 3]], dtype=np.float64)
    view = (boxes, np.array([1.0, np.nan, 0.0]), probs)
    assert math.isfinite(cald_score(probs, np.array([1.0, np.nan, 0.0]), [boxes] * 2, [view, EMPTY]))


def test_argument_checks():
    ref, view = identical_view()
    with pytest.raises(ValueError):
        cald_score(REF_PROBS, REF_CONF, [ref, ref], [view])
    with pytest.raises(ValueError):
        cald_score(REF_PROBS, REF_CONF, [], [])
    with pytest.raises(ValueError):
        cald_score(REF_PROBS, REF_CONF, [ref], [view], beta=2.5)
    with pytest.raises(ValueError):
        cald_score(REF_PROBS, REF_CONF, [ref[:1]], [view])
