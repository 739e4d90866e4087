import numpy as np

from mining.random_score import random_scores


def test_range_dtype_and_shape():
    s = random_scores([f"img{i}.jpg" for i in range(1000)], seed=0)
    assert s.dtype == np.float64 and s.shape == (1000,)
    assert (s >= 0).all() and (s < 1).all()
    assert len(np.unique(s)) == 1000


def test_depends_only_on_seed_and_key():
    keys = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    whole = random_scores(keys, seed=7)
    assert np.array_equal(whole, random_scores(keys, seed=7))
    # another order or batch split gives each key the same score
    assert np.array_equal(random_scores(keys[::-1], seed=7), whole[::-1])
    assert np.array_equal(np.concatenate([random_scores(keys[:1], 7), random_scores(keys[1:], 7)]), whole)


def test_other_seed_other_ranking():
    keys = [f"k{i}" for i in range(50)]
    assert not np.array_equal(np.argsort(random_scores(keys, 0)), np.argsort(random_scores(keys, 1)))


def test_roughly_uniform():
    s = random_scores([str(i) for i in range(20000)], seed=3)
    hist, _ = np.histogram(s, bins=10, range=(0, 1))
    assert hist.min() > 1800 and hist.max() < 2200


def test_empty():
    assert random_scores([], seed=0).shape == (0,)
