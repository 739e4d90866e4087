"""The four scorers on the real yolov8n: batch-size invariance, seeding, one finite score per image."""
import numpy as np
import pytest

from executor.config import build_settings
from executor.images import letterbox, read_image
from executor.loop import Batch
from executor.model import load_detector
from mining import SCORERS, get_scorer
from tests.platform import VOC, WEIGHTS, coco_images

pytestmark = pytest.mark.slow
PATHS = [*coco_images(4), *sorted((VOC / "JPEGImages").glob("*.jpg"))[:2]]


@pytest.fixture(scope="module")
def detector():
    return load_detector(str(WEIGHTS), "auto", "", 320)


@pytest.fixture(scope="module")
def decoded(detector):
    images = [read_image(str(p)) for p in PATHS]
    return [(str(p), image, *letterbox(image, detector.img_size)) for p, image in zip(PATHS, images)]


def batch_of(items):
    return Batch([k for k, *_ in items], [i for _, i, _, _ in items], np.stack([c for *_, c, _ in items]),
                 [b for *_, b in items])


def scores(algorithm, detector, decoded, batch_size, **config):
    scorer = get_scorer(build_settings("mining", {"mining_algorithm": algorithm, **config}))
    out = [scorer.score_batch(batch_of(decoded[i:i + batch_size]), detector)
           for i in range(0, len(decoded), batch_size)]
    return np.concatenate(out)


@pytest.mark.parametrize("algorithm", sorted(SCORERS))
def test_batch_size_does_not_change_scores(algorithm, detector, decoded):
    alone = scores(algorithm, detector, decoded, 1)
    together = scores(algorithm, detector, decoded, 4)
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
    batch = batch_of(decoded)
    found = detector.with_postprocess(0.01, detector.iou_thres, None).predict(batch.canvases, batch.boxes).detections
    assert min(len(d) for d in found) > 1  # so a cut at 1 box would have changed every score
