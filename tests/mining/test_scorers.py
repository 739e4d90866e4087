"""Scorer wiring through the one registry, on a fake detector (the real model:
tests/mining/test_scorers_real_model.py)."""

import numpy as np
import pytest

from executor.protocol.settings import RULES, build_settings
from mining import SCORERS, get_scorer, scorer_params
from mining.base import Scorer
from mining.random_score import random_scores
from tests.mining.fake import FakeDetector, image_batch, random_images

KEYS = [f"/pool/img{i}.jpg" for i in range(6)]
IMAGES = random_images(6)


def scorer(name, **overrides):
    settings = build_settings("mining", {"mining_algorithm": name, **overrides})
    return get_scorer(name, **scorer_params(name, settings))


def scores(name, batch_size, detector=None, **overrides):
    detector = detector or FakeDetector()
    s = scorer(name, **overrides)
    return np.concatenate([s.score(image_batch(KEYS[i:i + batch_size], IMAGES[i:i + batch_size]), detector)
                           for i in range(0, len(KEYS), batch_size)])


def test_the_registry_is_the_one_list_of_names():
    for name in SCORERS:  # config validation reads it
        assert RULES["mining_algorithm"]("mining_algorithm", name) == name
    with pytest.raises(Exception, match="expected one of " + ", ".join(SCORERS)):
        RULES["mining_algorithm"]("mining_algorithm", "coreset")
    assert not SCORERS["random"].needs_model and all(SCORERS[n].needs_model for n in ("entropy", "aldd", "cald"))


def test_config_validation_reads_the_registry(monkeypatch):
    monkeypatch.setitem(SCORERS, "coreset", SCORERS["random"])  # an algorithm added to the registry only
    assert RULES["mining_algorithm"]("mining_algorithm", "coreset") == "coreset"


def test_scorers_take_their_template_keys_and_nothing_else():
    template = build_settings("mining", {})
    for name, cls in SCORERS.items():
        assert set(cls.params) <= set(template), f"{name} reads keys the template lacks"
    with pytest.raises(ValueError, match="seed"):
        get_scorer("random")
    with pytest.raises(ValueError, match="takes the parameters"):
        get_scorer("random", seed=0, img_size=640)
    with pytest.raises(ValueError, match="unknown mining algorithm"):
        get_scorer("nope")


@pytest.mark.parametrize("name", list(SCORERS))
def test_batch_size_does_not_change_scores(name):
    alone, together = scores(name, 1), scores(name, 4)
    assert alone.shape == (len(KEYS),) and np.isfinite(alone).all() and (alone >= 0).all()
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    assert len(set(np.round(alone, 6))) > 2  # the fake's scores tell images apart


def test_entropy_asks_for_every_box_down_to_its_own_threshold():
    detector = FakeDetector()
    scores("entropy", 3, detector, entropy_conf_thres=0.02)
    assert detector.calls == [("predict", 3, 0.02, False)] * 2


def test_aldd_reads_maps_only_and_weights_change_the_score():
    detector = FakeDetector()
    plain = scores("aldd", 3, detector)
    assert {c[0] for c in detector.calls} == {"predict_maps"}
    weighted = scores("aldd", 3, class_distribution_scores="0,1,1")
    assert (weighted < plain).all()


def test_cald_asks_the_detector_for_four_views_of_each_image_with_detections():
    detector = FakeDetector()
    scores("cald", 3, detector)
    views = [c for c in detector.calls if c[0] == "predict_views"]
    assert views == [("predict_views", 12, 4)] * 2  # every fake image has boxes: 4 views each, a chunk at least 4
    lone = FakeDetector()
    scores("cald", 1, lone)  # an image alone in its batch: its 4 views go in one chunk, not one by one
    assert [c for c in lone.calls if c[0] == "predict_views"][0] == ("predict_views", 4, 4)


@pytest.mark.parametrize("name", ["random", "cald"])
def test_seed_changes_the_scores_and_only_the_seed(name):
    first = scores(name, 3, seed=1)
    np.testing.assert_array_equal(first, scores(name, 2, seed=1))
    assert not np.array_equal(first, scores(name, 3, seed=2))


@pytest.mark.parametrize("name", ["random", "cald"])
def test_images_draw_by_their_result_keys(name):
    """Batch.names (the results' keys, e.g. relative to the CLI's --source) seed random and CALD, not the paths: the
    same pool at another path scores the same; without names the paths are the result keys."""
    names = [f"sub/img{i}.jpg" for i in range(len(KEYS))]
    moved = [f"/elsewhere/deeper{key}" for key in KEYS]
    s = scorer(name, seed=3)
    here = s.score(image_batch(KEYS, IMAGES, names), FakeDetector())
    np.testing.assert_array_equal(s.score(image_batch(moved, IMAGES, names), FakeDetector()), here)
    by_path = s.score(image_batch(KEYS, IMAGES), FakeDetector())
    assert not np.array_equal(by_path, here)
    np.testing.assert_array_equal(by_path, s.score(image_batch(KEYS, IMAGES, list(KEYS)), FakeDetector()))
    if name == "random":
        np.testing.assert_array_equal(here, random_scores(names, 3))
        np.testing.assert_array_equal(by_path, random_scores(KEYS, 3))


@pytest.mark.parametrize("bad", [[np.nan, 1.0], [-0.5, 1.0], [1.0]])
def test_the_base_class_checks_the_contract(bad):
    class Broken(Scorer):
        def _score(self, batch, detector):
            return np.array(bad)

    with pytest.raises(RuntimeError, match="broke the scorer contract"):
        Broken().score(image_batch(KEYS[:2], IMAGES[:2]), None)
