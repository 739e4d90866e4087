import math
import time

import numpy as np
import pytest

from mining import duplicates
from mining import selection
from mining.selection import Ranked, default_diverse_pool, rank_by_score
from tests.mining.photos import distinct, hashes_of, pack, photo_bits, thumbnails_of


def unit(angle_deg: float) -> list:
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a), 0.0, 0.0]


# Six images: A and its near-copy A', B (unnormalised) and its near-copy B', an orthogonal outlier C,
# and E, close to A in the embedding (cos 0.9: the same kind of scene) but another photo, with the second-best
# score. Near-copies are told by the photo hash: A' and B' have their originals' hashes with 10 bits changed.
A, A2, B, B2, C, E = 0, 1, 2, 3, 4, 5
SIX_HASHES = hashes_of([0, 0, 1, 1, 2, 3], [0, 10, 0, 10, 0, 0])
SIX_EMB = np.array([[1.0, 0.0, 0.0, 0.0],
                    [1.0, 0.0, 0.0, 0.1],     # cos(A, A') = 0.995
                    [0.0, 3.0, 0.0, 0.0],     # scale must not matter
                    [0.0, 1.0, 0.0, -0.1],    # cos(B, B') = 0.995
                    [0.0, 0.0, 1.0, 0.0],
                    [0.9, math.sqrt(1 - 0.81), 0.0, 0.0]])
SIX_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.75, 0.85])

# The values these hand-made cases were written against (given explicitly: rank_diverse has no defaults for them;
# the executor passes the template's 0.85 / 0.15 and "rank", tests/test_selection_e2e.py)
WRITTEN_FOR = dict(dedup_similarity=0.85, diversity_weight=0.5, score_scale="minmax")


def rank_diverse(scores, embeddings, **kwargs) -> Ranked:
    return selection.rank_diverse(scores, embeddings, **{**WRITTEN_FOR, **kwargs})


def clusters_covered(order, labels):
    seen, covered = set(), []
    for i in order:
        seen.add(labels[i])
        covered.append(len(seen))
    return np.array(covered)


def clustered_set(k=5, per=20, dim=16, seed=0):
    """k orthogonal cluster centres; cluster c's scores all lie above cluster c+1's."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), per)
    emb = np.eye(dim)[labels] + 0.1 * rng.standard_normal((k * per, dim))
    scores = 1.0 - 0.2 * labels - 0.15 * rng.random(k * per)
    return scores, emb, labels


def check_ranked(r: Ranked, n: int):
    assert r.order.dtype == np.int64 and r.duplicate_of.dtype == np.int64
    assert sorted(r.order.tolist()) == list(range(n))
    assert r.priority.shape == (n,) and r.priority.dtype == np.float64
    assert r.duplicate_of.shape == (n,) and r.labeled_duplicate_of.shape == (n,)


# --- rank_by_score ---------------------------------------------------------------------------------------

def test_rank_by_score_is_todays_order():
    scores = [0.2, 0.9, 0.2, 0.5, 0.9, -1.0]  # ties keep input order; the -1 unreadable sentinel is accepted
    r = rank_by_score(scores)
    check_ranked(r, 6)
    assert r.order.tolist() == [1, 4, 3, 0, 2, 5]
    assert r.priority.tolist() == [0.9, 0.9, 0.5, 0.2, 0.2, -1.0]
    assert (r.duplicate_of == -1).all() and not r.is_duplicate.any() and r.diverse_count == 0


def test_rank_by_score_validation_and_edges():
    with pytest.raises(ValueError, match="finite"):
        rank_by_score([0.1, float("nan")])
    with pytest.raises(ValueError, match="1-D"):
        rank_by_score(np.zeros((2, 2)))
    assert rank_by_score([]).order.tolist() == []
    assert rank_by_score([3.0]).order.tolist() == [0]


# --- rank_diverse: exact hand-made case -------------------------------------------------------------------

def test_six_images_exact_order():
    r = rank_diverse(SIX_SCORES, SIX_EMB, hashes=SIX_HASHES)
    check_ranked(r, 6)
    # score order would be A, E, A', C, B, B'. A' and B' are near-copies: at the end, in score order.
    # MMR (w = 0.5) over A, E, C, B (score_norm 1, 0.75, 0.25, 0): A first; then C (0.125 + 0.5) beats
    # E (0.375 + 0.5 * 0.1, E is near A) and B (0 + 0.5); then B (0.5) beats E (0.425); then E.
    assert r.order.tolist() == [A, C, B, E, A2, B2]
    assert r.duplicate_of.tolist() == [-1, A, -1, B, -1, -1]
    assert r.is_duplicate.tolist() == [False, True, False, True, False, False]
    assert (r.labeled_duplicate_of == -1).all()
    assert r.diverse_count == 4
    assert np.allclose(r.priority, [1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


def test_weight_zero_and_pool_zero_give_score_order_of_non_duplicates():
    expected = [A, E, C, B, A2, B2]
    assert rank_diverse(SIX_SCORES, SIX_EMB, hashes=SIX_HASHES, diversity_weight=0.0).order.tolist() == expected
    r = rank_diverse(SIX_SCORES, SIX_EMB, hashes=SIX_HASHES, diverse_pool=0)
    assert r.order.tolist() == expected and r.diverse_count == 0
    # a shortlist of 2: MMR orders A, E (E is the only other candidate), then C, B by score
    assert rank_diverse(SIX_SCORES, SIX_EMB, hashes=SIX_HASHES, diverse_pool=2).order.tolist() == expected


def test_dedup_threshold_one_keeps_near_copies():
    r = rank_diverse(SIX_SCORES, SIX_EMB, hashes=SIX_HASHES, dedup_similarity=1.0)
    assert not r.is_duplicate.any()
    assert r.order[0] == A and r.diverse_count == 6


# --- duplicates -------------------------------------------------------------------------------------------

def test_duplicates_go_below_all_non_duplicates_and_point_at_their_original():
    rng = np.random.default_rng(1)
    originals = rng.choice(50, size=10, replace=False)
    photos = list(range(50)) + originals.tolist()   # images 50..59 show the photos of 10 others, 8 bits changed
    hashes = hashes_of(photos, [0] * 50 + [8] * 10)
    emb = rng.standard_normal((60, 32))              # the embeddings play no part in what is a duplicate
    scores = rng.random(60)
    r = rank_diverse(scores, emb, hashes=hashes)
    check_ranked(r, 60)
    assert r.is_duplicate.sum() == 10
    for k, orig in enumerate(originals):
        copy = 50 + k
        low, high = (copy, orig) if scores[copy] < scores[orig] else (orig, copy)
        assert r.duplicate_of[low] == high and r.duplicate_of[high] == -1
    tail = r.order[50:]
    assert r.is_duplicate[tail].all() and not r.is_duplicate[r.order[:50]].any()
    assert list(tail) == sorted(tail, key=lambda i: (-scores[i], i))  # duplicates keep score order
    assert (r.nearest_similarity[r.is_duplicate] >= 0.85).all() and (r.nearest_similarity[~r.is_duplicate] < 0.85).all()


def test_a_pool_of_near_identical_scenes_is_not_flagged_but_its_true_copies_are():
    # one domain: every embedding within cosine 0.999 of the others (what a COCO detector's neck gives road
    # scenes), but 30 different photos, two of them re-encoded (5 bits changed) and one mirrored
    rng = np.random.default_rng(4)
    emb = np.ones((33, 16)) + 0.01 * rng.standard_normal((33, 16))
    bits = np.array([photo_bits(p) for p in range(30)] + [photo_bits(3), photo_bits(7), photo_bits(11)])
    bits[30:32, :, :5] ^= True
    mirror = np.zeros(duplicates.BITS, bool)
    mirror[np.tile(np.arange(duplicates.SIDE), duplicates.SIDE)[1:] % 2 == 1] = True
    bits[32] ^= mirror                                 # the mirrored photo's hash: odd horizontal frequencies flip
    scores = np.linspace(1.0, 0.01, 33)
    r = rank_diverse(scores, emb, hashes=pack(bits))
    assert np.flatnonzero(r.is_duplicate).tolist() == [30, 31, 32]
    assert r.duplicate_of[30:].tolist() == [3, 7, 11]


def test_duplicate_points_at_the_most_similar_kept_image_and_chains_do_not_propagate():
    emb = [unit(0), unit(40), unit(80)]
    # P1, P2 = P1 with 60 bits changed (76% agree: both kept); X = P1 with 35 changed, 25 from P2: closer to P2
    r = rank_diverse([0.9, 0.8, 0.7], emb, hashes=hashes_of([0, 0, 0], [0, 60, 35]))
    assert r.duplicate_of.tolist() == [-1, -1, 1]
    # A, A' = A with 30 bits changed (88%: a duplicate), A'' with 60 changed: near A' (moved to the end) but not A
    r = rank_diverse([0.9, 0.8, 0.7], emb, hashes=hashes_of([0, 0, 0], [0, 30, 60]))
    assert r.duplicate_of.tolist() == [-1, 0, -1]
    assert r.order.tolist()[-1] == 1


def test_many_duplicates_across_blocks():
    # more rows than one de-duplication block: every copy of each of 3 photos points at the best-scored one
    rng = np.random.default_rng(2)
    labels = np.arange(700) % 3
    hashes = hashes_of(labels.tolist(), rng.integers(0, 6, 700).tolist())
    scores = rng.random(700)
    r = rank_diverse(scores, rng.standard_normal((700, 8)), hashes=hashes)
    heads = [int(np.flatnonzero(labels == c)[np.argmax(scores[labels == c])]) for c in range(3)]
    assert sorted(r.order[:3].tolist()) == sorted(heads)
    assert (r.duplicate_of[heads] == -1).all()
    others = np.setdiff1d(np.arange(700), heads)
    assert (r.duplicate_of[others] == np.array(heads)[labels[others]]).all()


# --- diversity --------------------------------------------------------------------------------------------

def test_every_prefix_covers_more_clusters_than_score_order():
    scores, emb, labels = clustered_set()
    by_score = clusters_covered(rank_by_score(scores).order, labels)
    assert by_score[19] == 1 and by_score[20] == 2                # score order stays in cluster 0 for 20 picks
    for pool, weight, all_five_by in ((None, 0.5, 10), (None, 0.8, 5), (30, 0.5, None)):
        diverse = clusters_covered(rank_diverse(scores, emb, hashes=distinct(len(scores)), diverse_pool=pool, diversity_weight=weight).order,
                                   labels)
        assert (diverse >= by_score).all()
        assert (diverse[1:20] > by_score[1:20]).all()
        if all_five_by:  # with w = 0.5 the lowest-scored cluster (score_norm ~0.15) waits a few picks
            assert diverse[all_five_by - 1] == 5
        else:            # the top-30 shortlist holds only clusters 0 and 1: both by the second pick
            assert diverse[1] == 2


def test_below_the_shortlist_the_order_is_by_score():
    scores, emb, _ = clustered_set()
    r = rank_diverse(scores, emb, hashes=distinct(len(scores)), diverse_pool=30)
    assert r.diverse_count == 30
    rest = r.order[30:][~r.is_duplicate[r.order[30:]]]
    assert list(rest) == sorted(rest, key=lambda i: (-scores[i], i))
    shortlist = set(r.order[:30].tolist())
    top30 = [i for i in rank_by_score(scores).order if not r.is_duplicate[i]][:30]
    assert shortlist == set(top30)


def test_priority_strictly_decreasing_and_positive():
    scores, emb, _ = clustered_set()
    r = rank_diverse(scores, emb, hashes=distinct(len(scores)))
    assert (np.diff(r.priority) < 0).all() and (r.priority > 0).all() and r.priority[0] == 1.0
    assert len(set(map(repr, r.priority.tolist()))) == len(scores)  # distinct as written to result.tsv


# --- labeled ----------------------------------------------------------------------------------------------

def test_labeled_suppresses_near_copies_and_pushes_down_look_alikes():
    labeled = np.array([[1.0, 0.0, 0.0, 0.0]])
    labeled_hashes = hashes_of([9])
    emb = np.array([[1.0, 0.0, 0.0, 0.01],     # 0: a near-copy of the labelled image (its photo, 6 bits changed)
                    unit(math.degrees(math.acos(0.9))),  # 1: cos 0.9 to it, another photo: not a copy, but close
                    [0.0, 0.0, 1.0, 0.0],      # 2
                    [0.0, 0.0, 0.0, 1.0]])     # 3
    hashes = hashes_of([9, 1, 2, 3], [6, 0, 0, 0])
    scores = [0.5, 0.9, 0.85, 0.1]
    free = rank_diverse(scores, emb, hashes=hashes)
    assert free.order[:2].tolist() == [1, 2] and not free.is_duplicate.any()
    r = rank_diverse(scores, emb, hashes=hashes, labeled=labeled, labeled_hashes=labeled_hashes)
    assert r.labeled_duplicate_of.tolist() == [0, -1, -1, -1]
    assert r.duplicate_of.tolist() == [-1, -1, -1, -1]
    assert r.is_duplicate.tolist() == [True, False, False, False]
    # shortlist 1, 2, 3 (score_norm 1, 0.94, 0): 2 (0.47 + 0.5) beats 1 (0.5 + 0.05, close to the labelled image)
    assert r.order.tolist() == [2, 1, 3, 0]
    empty = rank_diverse(scores, emb, hashes=hashes, labeled=np.zeros((0, 4)), labeled_hashes=distinct(0))
    assert empty.order.tolist() == free.order.tolist()


# --- class balance ----------------------------------------------------------------------------------------

def test_class_balance_moves_the_missing_class_up():
    emb = np.eye(4)  # all orthogonal: the distance term is the same for every candidate
    scores = [0.9, 0.85, 0.8, 0.7]
    classes = np.array([[1, 0], [1, 0], [1, 0], [0, 1]])
    assert rank_diverse(scores, emb, hashes=distinct(4), classes=classes).order.tolist() == [0, 1, 2, 3]  # ignored unless asked
    r = rank_diverse(scores, emb, hashes=distinct(4), classes=classes, class_balance=True)
    # after image 0 the prefix is all class 0 (target 3/4, 1/4): image 3's class has deficit 1, gain x2
    assert r.order.tolist() == [0, 3, 1, 2]
    counts = np.array([[4, 0], [2, 0], [3, 0], [0, 1]])  # counts work too
    assert rank_diverse(scores, emb, hashes=distinct(4), classes=counts, class_balance=True).order.tolist() == [0, 3, 1, 2]


# --- determinism, edges, validation -----------------------------------------------------------------------

def test_deterministic_and_inputs_untouched():
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((300, 16))
    emb[100:110] = emb[:10] + 1e-3
    scores = np.round(rng.random(300), 1)  # many score ties
    classes = rng.integers(0, 3, size=(300, 4))
    labeled = rng.standard_normal((20, 16))
    hashes = hashes_of(list(range(100)) + list(range(10)) + list(range(110, 300)), [0] * 100 + [3] * 10 + [0] * 190)
    copies = [a.copy() for a in (emb, scores, classes, labeled, hashes)]
    kwargs = dict(hashes=hashes, classes=classes, class_balance=True, labeled=labeled,
                  labeled_hashes=hashes_of(range(500, 520)), diverse_pool=150)
    r1, r2 = rank_diverse(scores, emb, **kwargs), rank_diverse(scores, emb, **kwargs)
    for name in ("order", "priority", "duplicate_of", "labeled_duplicate_of"):
        assert np.array_equal(getattr(r1, name), getattr(r2, name))
    assert r1.is_duplicate.sum() == 10
    for before, after in zip(copies, (emb, scores, classes, labeled, hashes)):
        assert np.array_equal(before, after)


def test_zero_and_one_image():
    r = rank_diverse(np.zeros(0), np.zeros((0, 8)), hashes=distinct(0))
    check_ranked(r, 0)
    assert r.diverse_count == 0
    r = rank_diverse([0.3], [[0.0, 2.0]], hashes=distinct(1), labeled=[[1.0, 0.0]], labeled_hashes=distinct(1),
                     classes=[[1]], class_balance=True)
    assert r.order.tolist() == [0] and r.priority.tolist() == [1.0] and r.duplicate_of.tolist() == [-1]


@pytest.mark.parametrize("left_out", sorted(WRITTEN_FOR))
def test_the_template_values_are_required(left_out):
    given = {k: v for k, v in WRITTEN_FOR.items() if k != left_out}
    with pytest.raises(TypeError, match=left_out):
        selection.rank_diverse(SIX_SCORES, SIX_EMB, hashes=SIX_HASHES, **given)


def test_default_diverse_pool():
    assert [default_diverse_pool(n) for n in (0, 1, 500, 5000, 20000, 10 ** 6)] == [0, 1, 500, 1000, 2000, 5000]


@pytest.mark.parametrize("kwargs, match", [
    (dict(scores=[0.1, 0.2], embeddings=np.ones((3, 2))), "rows"),
    (dict(scores=[[0.1, 0.2]], embeddings=np.ones((2, 2))), "1-D"),
    (dict(scores=[0.1, float("inf")], embeddings=np.ones((2, 2))), "finite"),
    (dict(scores=[0.1, -0.2], embeddings=np.ones((2, 2))), ">= 0"),
    (dict(scores=[0.1, 0.2], embeddings=np.ones(2)), "2-D"),
    (dict(scores=[0.1, 0.2], embeddings=[[1.0, float("nan")], [1.0, 0.0]]), "finite"),
    (dict(scores=[0.1, 0.2], embeddings=[[1.0, 0.0], [0.0, 0.0]]), "zero"),
    (dict(scores=[0.1], embeddings=np.ones((1, 0))), "dimension"),
    (dict(dedup_similarity=0.0), "dedup_similarity"),
    (dict(dedup_similarity=1.5), "dedup_similarity"),
    (dict(dedup_similarity=float("nan")), "dedup_similarity"),
    (dict(diversity_weight=-0.1), "diversity_weight"),
    (dict(diversity_weight=1.1), "diversity_weight"),
    (dict(diverse_pool=-1), "diverse_pool"),
    (dict(diverse_pool=2.5), "diverse_pool"),
    (dict(diverse_pool=True), "diverse_pool"),
    (dict(class_balance=True), "needs classes"),
    (dict(classes=np.ones((3, 2))), "classes"),
    (dict(classes=[[1.0], [-1.0]]), "classes"),
    (dict(labeled=np.ones((2, 3))), "labeled"),
    (dict(labeled=np.zeros((0, 3))), "labeled"),
    (dict(labeled=[[0.0, 0.0]]), "zero"),
    (dict(hashes=np.zeros((2, 3, 32), np.int64)), "hashes"),
    (dict(hashes=np.zeros((3, 3, 32), np.uint8)), "hashes"),
    (dict(hashes=np.zeros((2, 32), np.uint8)), "hashes"),
    (dict(labeled=np.eye(2)[:1], labeled_hashes=np.zeros((2, 3, 32), np.uint8)), "labeled_hashes"),
])
def test_validation(kwargs, match):
    args = dict(scores=[0.1, 0.2], embeddings=np.eye(2), hashes=distinct(2))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        rank_diverse(args.pop("scores"), args.pop("embeddings"), **args)


@pytest.mark.slow  # a timing print: ten seconds of CPU on 10000 rows
def test_timing_print(capsys):
    rng = np.random.default_rng(0)
    scores, emb = rng.random(10000), rng.standard_normal((10000, 256))
    start = time.perf_counter()
    r = rank_diverse(scores, emb, hashes=hashes_of(range(10000)), diverse_pool=2000)
    elapsed = time.perf_counter() - start
    assert r.diverse_count == 2000
    with capsys.disabled():
        print(f"\nrank_diverse N=10000 D=256 diverse_pool=2000: {elapsed:.2f} s")


# --- crops: the nearest image by embedding, confirmed on the thumbnails -------------------------------------

def test_a_crop_of_the_nearest_kept_image_is_a_duplicate_and_a_look_alike_is_not():
    import cv2

    thumbs = thumbnails_of([0, 1, 2, 3])
    big = cv2.resize(thumbs[0], (100, 100), interpolation=cv2.INTER_CUBIC)
    thumbs[1] = cv2.resize(big[4:92, 9:97], (duplicates.THUMB, duplicates.THUMB), interpolation=cv2.INTER_AREA)
    # 1: a crop of 0 off the centre (its hash is another photo's); 2: as near 0 by embedding, another picture
    emb = np.array([unit(0), unit(2), unit(2), unit(90)])
    scores = [0.9, 0.8, 0.7, 0.6]
    r = rank_diverse(scores, emb, hashes=distinct(4), thumbnails=thumbs)
    assert r.duplicate_of.tolist() == [-1, 0, -1, -1]
    assert not rank_diverse(scores, emb, hashes=distinct(4)).is_duplicate.any()  # without thumbnails: hashes only
    # the crop of a labelled image goes down too
    r = rank_diverse(scores[1:], emb[1:], hashes=distinct(3), thumbnails=thumbs[1:], labeled=emb[:1],
                     labeled_hashes=hashes_of([9]), labeled_thumbnails=thumbs[:1])
    assert r.labeled_duplicate_of.tolist() == [0, -1, -1]
