"""The four scorers on the real yolov8n: batch-size invariance, seeding, the parameters that matter."""
import numpy as np
import pytest

from executor.engine.images import read_image
from executor.protocol.settings import build_settings
from mining import SCORERS, get_scorer, scorer_params
from mining.base import Batch
from tests.platform import VOC, coco_images, template_detector

pytestmark = pytest.mark.slow
PATHS = [*coco_images(4), *sorted((VOC / "JPEGImages").glob("*.jpg"))[:2]]


@pytest.fixture(scope="module")
def detector():
    return template_detector(320)


@pytest.fixture(scope="module")
def decoded(detector):
    return [(str(p), read_image(str(p))) for p in PATHS]


def batches_of(items, detector, size):
    """Batches of at most `size` images, one canvas shape each (as the loop makes them)."""
    out = []
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        by_shape = {}
        for key, image in chunk:
            canvas, box = detector.letterbox(image)
            by_shape.setdefault(canvas.shape, []).append((key, image, canvas, box))
        out += [Batch([k for k, *_ in g], [i for _, i, _, _ in g], np.stack([c for *_, c, _ in g]),
                      [b for *_, b in g]) for g in by_shape.values()]
    return out


def scores(algorithm, detector, decoded, batch_size, **config):
    settings = build_settings("mining", {"mining_algorithm": algorithm, **config})
    scorer = get_scorer(algorithm, **scorer_params(algorithm, settings))
    found = {}
    for batch in batches_of(decoded, detector, batch_size):
        found.update(zip(batch.keys, scorer.score(batch, detector)))
    return np.array([found[key] for key, _ in decoded])


@pytest.mark.parametrize("algorithm", list(SCORERS))
def test_batch_size_does_not_change_scores(algorithm, detector, decoded):
    alone = scores(algorithm, detector, decoded, 1)
    together = scores(algorithm, detector, decoded, 6)
    assert alone.shape == (len(PATHS),) and np.isfinite(alone).all() and (alone >= 0).all()
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    if algorithm != "random":
        assert len(set(np.round(alone, 6))) > 3  # the scores tell images apart


@pytest.mark.parametrize("algorithm", ["random", "cald"])
def test_seed_changes_the_ranking_and_only_the_seed(algorithm, detector, decoded):
    first = scores(algorithm, detector, decoded, 3, seed=1)
    np.testing.assert_array_equal(first, scores(algorithm, detector, decoded, 3, seed=1))
    assert not np.array_equal(first, scores(algorithm, detector, decoded, 3, seed=2))


def test_aldd_class_weights_change_the_score(detector, decoded):
    plain = scores("aldd", detector, decoded[:2], 2)
    no_person = scores("aldd", detector, decoded[:2], 2, class_distribution_scores="0")
    assert (no_person < plain).all()


def test_entropy_scores_every_candidate_whatever_max_det(detector, decoded):
    """max_det limits reported detections; entropy's low-confidence candidates are not cut by it."""
    capped = detector.with_postprocess(detector.conf_thres, detector.iou_thres, 1)
    np.testing.assert_allclose(scores("entropy", capped, decoded, 2), scores("entropy", detector, decoded, 2))
    found = [d for b in batches_of(decoded, detector, 6) for d in detector.predict(b, conf_thres=0.01)]
    assert min(len(d) for d in found) > 1  # so a cut at 1 box would have changed every score
