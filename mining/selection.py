"""Batch selection: turn per-image mining scores (+ embeddings) into an ordering where every prefix is a good batch.

The platform takes the first top_k lines of result.tsv without telling us top_k, so the ordering itself must be
good for any k: high scores first, but without spending the top of the list on near-copies of one scene.
Pure numpy (no executor imports); the caller keeps the raw scores and writes `Ranked.priority` as the score.

rank_by_score(scores)
    Today's order: stable sort by -score (ties keep input order), priority = the scores, no duplicates.

rank_diverse(scores, embeddings, hashes=..., ...), in three steps:

1. Near-duplicates (greedy "leader" de-duplication in score order), told by photo hashes (mining/duplicates.py:
   "the same photo", re-encoded, resized, cropped about the centre, recoloured or mirrored), not by the
   embedding, which puts every photo of one domain close together. Walking the images by score (ties by
   index), an image whose hash similarity (share of agreeing bits) to a non-duplicate placed above it, or to
   any row of `labeled_hashes`, is >= dedup_similarity is a duplicate: `duplicate_of` names the most similar
   such pool image (ties: the earliest placed) and `labeled_duplicate_of` the most similar labelled row.
   Duplicates go below every non-duplicate, in score order. An image is compared with non-duplicates only: a
   duplicate is moved to the end, so it is not "above" anything, and every duplicate_of points at a kept
   (non-duplicate) image. Cost: O(N * K) hash comparisons for K kept images (10 float32 products of 255-long
   +-1 vectors each), done in blocks; memory O(block * chunk) besides an (N, 3, 255) float32 copy.

2. Diversity over a shortlist (the top `diverse_pool` non-duplicates by score), with Maximal Marginal Relevance
   (J. Carbonell and J. Goldstein, "The Use of MMR, Diversity-Based Reranking for Reordering Documents and
   Producing Summaries", SIGIR 1998): the next pick maximises

       gain_i = (1 - w) * score_norm_i + w * dist_norm_i

   with w = diversity_weight, score_norm = min-max normalised score over the shortlist (all 1 if the scores are
   equal), or, with score_scale="rank", 1 - rank / (S - 1) (rank 0 = the best score; what the executor uses:
   skewed scores such as entropy's sum put most of a min-max scale near 0, so the distance term would decide
   almost alone; ranks trade a share of the shortlist's positions for distance whatever the score's shape),
   dist_i = min over everything already placed (and every `labeled` row) of the cosine distance
   1 - cos(e_i, e_j), i.e. MMR's "1 - max similarity to the selected set", which is also the max-min criterion
   of the k-center greedy of Sener & Savarese 2018 ("Active Learning for Convolutional Neural Networks: A
   Core-Set Approach"). dist_norm = dist / max(dist over the remaining candidates), so both terms span [0, 1]
   at every step whatever the embedding's scale (1 for all while nothing is placed and there is no `labeled`:
   the first pick is then the best score). A running min-distance vector is updated with one (S, D) @ (D,)
   product per pick: O(S^2 * D) time, O(S * D) memory. w = 0 gives the score order; w = 1 pure k-center greedy.
   Ties in gain go to the better score (then the lower index). Below the shortlist: score order.

3. Class balance (optional, class_balance=True, `classes` = (N, C) predicted-class counts or 0/1 presence).
   Target mix p_c = class c's share of the shortlist's total class mass; prefix mix q_c = its share of the mass
   placed so far (0 while nothing is placed). Deficit_c = max(0, p_c - q_c) / p_c in [0, 1] (1 = class absent
   from the prefix). An image's balance b_i = mass-weighted mean deficit of its own classes (0 without classes),
   and the gain becomes gain_i * (1 + b_i): an image of a missing class counts up to twice as much. When the
   shortlist is used up, q = p, so the term only moves under-represented classes earlier.

Priority: (N - rank) / N, i.e. 1, (N-1)/N, ..., 1/N: strictly decreasing, all > 0 (distinct in float64 for any
realistic N), above the executor's -1 sentinel for unreadable images. Deterministic: no RNG, ties by index.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mining import duplicates

# rank_diverse has no defaults of its own for dedup_similarity, diversity_weight and score_scale: the executor
# passes the mining template's values (templates/, the only place defaults are written; measured on real images in
# docs/mining.md#selection-every-prefix-a-non-redundant-batch-selection-diverse) and its score scale "rank".
# Default shortlist: clamp(N // 10, 1000, 5000), capped by the number of non-duplicates. The platform's top_k is
# unknown; 10% of the pool covers the usual request sizes, at least 1000 so small pools are ordered entirely,
# at most 5000 so the O(S^2 * D) greedy stays at a few seconds. Below it the order is by score.
DEFAULT_POOL_FRACTION = 0.1
DEFAULT_POOL_MIN = 1000
DEFAULT_POOL_MAX = 5000

_BLOCK = 256    # rows de-duplicated together (the within-block walk is sequential)
CROP_CANDIDATES = 3  # images above (nearest by embedding) a crop is looked for in: the photo it came from is
#                      among the 3 nearest for 98% of planted crops on highway, the nearest for 94%
_CHUNK = 8192   # columns of one similarity product: block x chunk float32 = 8 MiB


@dataclass
class Ranked:
    order: np.ndarray         # (N,) int64 indices into the inputs, best first
    priority: np.ndarray      # (N,) float64 aligned with `order`: the value written as the result.tsv score
    duplicate_of: np.ndarray  # (N,) int64 per input index: the earlier-placed pool image it nearly copies, -1 if none
    # (N,) int64 per input index: the row of `labeled` it nearly copies, -1 if none (all -1 without `labeled`)
    labeled_duplicate_of: Optional[np.ndarray] = None
    diverse_count: int = 0    # how many leading entries of `order` were ordered by the diversity greedy
    # (N,) per input index: the highest hash similarity to a kept image above it or a labelled one (-inf: none)
    nearest_similarity: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.labeled_duplicate_of is None:
            self.labeled_duplicate_of = np.full(len(self.duplicate_of), -1, dtype=np.int64)

    @property
    def is_duplicate(self) -> np.ndarray:
        """(N,) bool per input index: a near-copy of a pool image placed above it or of a labelled image."""
        return (self.duplicate_of >= 0) | (self.labeled_duplicate_of >= 0)


def _scores(scores, non_negative: bool) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (N,), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if non_negative and (s < 0).any():
        raise ValueError("scores must be >= 0 (leave unreadable images out and append them after the ranking)")
    return s


def _unit_rows(x, name: str, n: Optional[int], d: Optional[int]) -> np.ndarray:
    e = np.asarray(x, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {e.shape}")
    if n is not None and e.shape[0] != n:
        raise ValueError(f"{name} has {e.shape[0]} rows, scores has {n}")
    if d is not None and e.shape[1] != d:
        raise ValueError(f"{name} has dimension {e.shape[1]}, embeddings have {d}")
    if e.shape[1] == 0 and e.shape[0] > 0:
        raise ValueError(f"{name} must have dimension >= 1")
    if not np.isfinite(e).all():
        raise ValueError(f"{name} must be finite")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name} has all-zero rows (row {int(np.flatnonzero(norms[:, 0] == 0)[0])}): "
                         "cosine similarity is undefined")
    return e / norms


def _score_order(s: np.ndarray) -> np.ndarray:
    return np.argsort(-s, kind="stable").astype(np.int64)


def _priority(n: int) -> np.ndarray:
    return (n - np.arange(n, dtype=np.float64)) / max(n, 1)


def rank_by_score(scores) -> Ranked:
    """Today's order: stable sort by -score (ties keep input order); priority = the scores themselves.

    Any finite scores are accepted (including the executor's -1 sentinel for unreadable images).
    """
    s = _scores(scores, non_negative=False)
    order = _score_order(s)
    return Ranked(order=order, priority=s[order].copy(), duplicate_of=np.full(len(s), -1, dtype=np.int64))


def _cosine(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return x @ rows.T


def _best_match(x: np.ndarray, rows: np.ndarray, usable: Optional[np.ndarray] = None, similarity=_cosine):
    """Per row of x: (max similarity, argmax) over `rows` (first index wins ties), chunked over rows."""
    best_sim = np.full(len(x), -np.inf, dtype=np.float32)
    best = np.full(len(x), -1, dtype=np.int64)
    for c0 in range(0, len(rows), _CHUNK):
        sim = similarity(x, rows[c0:c0 + _CHUNK])
        if usable is not None:
            sim[:, ~usable[c0:c0 + _CHUNK]] = -np.inf
        j = sim.argmax(axis=1)
        value = sim[np.arange(len(x)), j]
        better = value > best_sim  # strict: an earlier chunk keeps a tie
        best_sim[better], best[better] = value[better], j[better] + c0
    return best_sim, best


def _nearest_kept(prev: tuple, within_row: np.ndarray, local_kept: np.ndarray, b0: int) -> tuple[float, int]:
    """(similarity, position) of the most similar kept image above: the best of earlier blocks (`prev`) or of
    this block's kept images before this one (an earlier block keeps a tie)."""
    sim, where = float(prev[0]), int(prev[1])
    if local_kept.any():
        row = np.where(local_kept, within_row, -np.inf)
        k = int(row.argmax())
        if row[k] > sim:
            sim, where = float(row[k]), b0 + k
    return sim, where


def _deduplicate(h_sorted: np.ndarray, labeled: Optional[np.ndarray], threshold: float,
                 crops: Optional[tuple] = None):
    """Leader de-duplication down the score order, on photo hashes (`duplicates.signs` rows), and with `crops` =
    (unit embeddings, thumbnails, labelled unit embeddings or None, labelled thumbnails or None), in score order,
    on a crop match with one of the image's CROP_CANDIDATES nearest images above it (or labelled) by embedding:
    the image then joins that image's group (its leader, when it is itself a duplicate).

    Returns, per *position* in the score order: kept mask, position of the matched pool image, matched labeled row,
    and the highest hash similarity to a kept image above it or a labelled one (-inf for none).
    """
    n = len(h_sorted)
    kept = np.zeros(n, dtype=bool)
    match = np.full(n, -1, dtype=np.int64)
    lab_match = np.full(n, -1, dtype=np.int64)
    nearest = np.full(n, -np.inf)
    none = (np.full(_BLOCK, -np.inf), np.full(_BLOCK, -1, dtype=np.int64))
    for b0 in range(0, n, _BLOCK):
        x = h_sorted[b0:b0 + _BLOCK]
        b = len(x)
        if labeled is not None and len(labeled):
            lab_sim, lab_best = _best_match(x, labeled, similarity=duplicates.similarity)
            hit = lab_sim.astype(np.float64) >= threshold  # compare in float64, not at float32(threshold)
            lab_match[b0:b0 + b][hit] = lab_best[hit]
            nearest[b0:b0 + b] = lab_sim
        earlier = b0 and kept[:b0].any()
        prev = _best_match(x, h_sorted[:b0], kept[:b0], duplicates.similarity) if earlier else none
        within = duplicates.similarity(x, x)
        if crops is not None:
            e, thumbs, lab_e, lab_thumbs = crops
            above = _nearest_rows(e[b0:b0 + b], e[:b0 + b], b0)
            lab_near = _nearest_rows(e[b0:b0 + b], lab_e, None) if lab_e is not None and len(lab_e) else None
        local_kept = np.zeros(b, dtype=bool)
        for j in range(b):
            sim, where = _nearest_kept((prev[0][j], prev[1][j]), within[j, :j], local_kept[:j], b0)
            nearest[b0 + j] = max(nearest[b0 + j], sim)
            if sim < threshold and crops is not None:  # not the same hash: a crop of an image near it?
                if lab_match[b0 + j] < 0 and lab_near is not None:
                    lab_match[b0 + j] = _crop_of(thumbs[b0 + j], lab_near[j], lab_thumbs)
                found = _crop_of(thumbs[b0 + j], above[j], thumbs)
                if found >= 0 and (kept[found] if found < b0 else local_kept[found - b0]):
                    sim, where = np.inf, found
                elif found >= 0 and match[found] >= 0:
                    sim, where = np.inf, int(match[found])
                elif found >= 0 and lab_match[b0 + j] < 0:
                    lab_match[b0 + j] = lab_match[found]
            if sim >= threshold:
                match[b0 + j] = where
            elif lab_match[b0 + j] < 0:
                local_kept[j] = True
        kept[b0:b0 + b] = local_kept
    return kept, match, lab_match, nearest


def _nearest_rows(x: np.ndarray, rows: np.ndarray, first: Optional[int]) -> np.ndarray:
    """(len(x), CROP_CANDIDATES) indices of the most similar `rows` by cosine, best first (-1 where fewer); with
    `first`, x[j] is row first + j of `rows` and only the rows above it count."""
    sims = x @ rows.T
    if first is not None:
        sims[np.arange(len(rows))[None, :] >= first + np.arange(len(x))[:, None]] = -np.inf
    k = min(CROP_CANDIDATES, sims.shape[1])
    best = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    best[np.take_along_axis(sims, best, axis=1) == -np.inf] = -1
    return best


def _crop_of(thumb: np.ndarray, candidates: np.ndarray, thumbs: np.ndarray) -> int:
    """The first of `candidates` (indices into thumbs, -1: none) that `thumb` is a crop of, or -1."""
    for c in candidates:
        if c >= 0 and duplicates.crop_match(thumb, thumbs[c]) >= duplicates.CROP_MATCH:
            return int(c)
    return -1


def _class_balance(cls: np.ndarray, target: np.ndarray, placed_mass: np.ndarray) -> np.ndarray:
    """(S,) mass-weighted mean relative deficit of each image's classes in the placed prefix, in [0, 1]."""
    total = placed_mass.sum()
    q = placed_mass / total if total > 0 else np.zeros_like(placed_mass)
    with np.errstate(divide="ignore", invalid="ignore"):
        deficit = np.where(target > 0, np.maximum(target - q, 0.0) / target, 0.0)
    mass = cls.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mass > 0, (cls @ deficit) / mass, 0.0)


def _mmr_order(x: np.ndarray, s: np.ndarray, w: float, labeled: Optional[np.ndarray],
               cls: Optional[np.ndarray], score_scale: str) -> np.ndarray:
    """Greedy MMR order of the shortlist (rows already in score order). Returns positions into the shortlist."""
    m = len(x)
    span = s.max() - s.min() if m else 0.0
    if score_scale == "rank":
        s_norm = 1.0 - np.arange(m, dtype=np.float64) / max(m - 1, 1)
    else:
        s_norm = (s - s.min()) / span if span > 0 else np.ones(m)
    dist = np.full(m, np.inf)
    if labeled is not None and len(labeled):
        lab_sim, _ = _best_match(x, labeled)
        dist = np.clip(1.0 - lab_sim, 0.0, 2.0)
    if cls is not None:
        target = cls.sum(axis=0)
        target = target / target.sum() if target.sum() > 0 else target
        placed_mass = np.zeros(cls.shape[1])
    available = np.ones(m, dtype=bool)
    picks = np.empty(m, dtype=np.int64)
    for step in range(m):
        if np.isinf(dist).all():
            dist_norm = np.ones(m)
        else:
            top = dist[available].max()
            dist_norm = dist / top if top > 0 else np.zeros(m)
        gain = (1.0 - w) * s_norm + w * dist_norm
        if cls is not None:
            gain = gain * (1.0 + _class_balance(cls, target, placed_mass))
        gain[~available] = -np.inf
        k = int(gain.argmax())  # first maximum = better score, then lower index
        picks[step] = k
        available[k] = False
        dist = np.minimum(dist, np.clip(1.0 - x @ x[k], 0.0, 2.0))
        dist[k] = 0.0
        if cls is not None:
            placed_mass += cls[k]
    return picks


def default_diverse_pool(n: int) -> int:
    """clamp(floor(n * DEFAULT_POOL_FRACTION), DEFAULT_POOL_MIN, DEFAULT_POOL_MAX), never more than n."""
    return min(n, max(DEFAULT_POOL_MIN, min(int(n * DEFAULT_POOL_FRACTION), DEFAULT_POOL_MAX)))


def _hash_signs(hashes, name: str, n: Optional[int]) -> np.ndarray:
    h = np.asarray(hashes)
    shape = (len(duplicates.CROPS), duplicates.HASH_BYTES)
    if h.ndim != 3 or h.shape[1:] != shape or h.dtype != np.uint8 or (n is not None and len(h) != n):
        raise ValueError(f"{name} must be uint8 photo hashes ({'N' if n is None else n}, {shape[0]}, {shape[1]}), "
                         f"got {h.dtype} {h.shape}")
    return duplicates.signs(h)


def _thumbnails(thumbnails, name: str, n: int) -> np.ndarray:
    t = np.asarray(thumbnails)
    shape = (n, duplicates.THUMB, duplicates.THUMB)
    if t.shape != shape or t.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 thumbnails {shape}, got {t.dtype} {t.shape}")
    return t


def rank_diverse(scores, embeddings, *, hashes, dedup_similarity: float, diversity_weight: float, score_scale: str,
                 thumbnails=None, diverse_pool: Optional[int] = None, classes=None, class_balance: bool = False,
                 labeled=None, labeled_hashes=None, labeled_thumbnails=None) -> Ranked:
    """Non-redundant order: de-duplicate, MMR over the top `diverse_pool` non-duplicates, then score order,
    then the duplicates (see the module docstring for the exact rules).

    scores: (N,) finite >= 0. embeddings: (N, D) finite, no all-zero rows (L2-normalised here).
    hashes: (N, len(CROPS), HASH_BYTES) uint8 photo hashes (mining.duplicates.photo_hash), what near-duplicates
    are told by. dedup_similarity in (0, 1]: the share of agreeing hash bits that makes a near-duplicate.
    thumbnails: (N, THUMB, THUMB) uint8 (mining.duplicates.thumbnail), or None: with them, an image is also a
    near-duplicate when it is a crop (duplicates.crop_match) of its nearest kept image by embedding.
    diverse_pool: int >= 0 or None (default_diverse_pool(N)); 0 = score order.
    diversity_weight in [0, 1]. classes: (N, C) finite >= 0, required by class_balance=True.
    labeled, labeled_hashes, labeled_thumbnails: (M, D) embeddings, (M, ...) hashes and thumbnails of
    already-labelled images (M may be 0), or None.
    score_scale: "minmax" or "rank", how the shortlist's scores are put on [0, 1] for the MMR gain.
    dedup_similarity, diversity_weight and score_scale are required (the template's values, given by the caller).
    """
    s = _scores(scores, non_negative=True)
    n = len(s)
    e = _unit_rows(embeddings, "embeddings", n, None)
    h = _hash_signs(hashes, "hashes", n)
    dim = e.shape[1]
    if isinstance(dedup_similarity, bool) or not np.isscalar(dedup_similarity) \
            or not 0.0 < float(dedup_similarity) <= 1.0:
        raise ValueError(f"dedup_similarity must be a number in (0, 1], got {dedup_similarity!r}")
    if isinstance(diversity_weight, bool) or not np.isscalar(diversity_weight) \
            or not 0.0 <= float(diversity_weight) <= 1.0:
        raise ValueError(f"diversity_weight must be a number in [0, 1], got {diversity_weight!r}")
    if diverse_pool is not None and (isinstance(diverse_pool, bool) or not isinstance(diverse_pool, (int, np.integer))
                                     or diverse_pool < 0):
        raise ValueError(f"diverse_pool must be an int >= 0 or None, got {diverse_pool!r}")
    if score_scale not in ("minmax", "rank"):
        raise ValueError(f"score_scale must be 'minmax' or 'rank', got {score_scale!r}")
    if not isinstance(class_balance, (bool, np.bool_)):
        raise ValueError(f"class_balance must be a bool, got {class_balance!r}")
    lab, lab_h = None, None
    if labeled_hashes is not None and len(labeled_hashes):
        lab_h = _hash_signs(labeled_hashes, "labeled_hashes", None if labeled is None else len(labeled))
    if labeled is not None:
        lab = np.asarray(labeled, dtype=np.float64)
        if lab.ndim == 2 and lab.shape[0] == 0:
            if lab.shape[1] not in (0, dim):
                raise ValueError(f"labeled has dimension {lab.shape[1]}, embeddings have {dim}")
            lab = None
        else:
            lab = _unit_rows(lab, "labeled", None, dim)
    cls = None
    if classes is not None:
        cls = np.asarray(classes, dtype=np.float64)
        if cls.ndim != 2 or cls.shape[0] != n:
            raise ValueError(f"classes must be (N, C) with N = {n}, got shape {cls.shape}")
        if not np.isfinite(cls).all() or (cls < 0).any():
            raise ValueError("classes must be finite and >= 0 (per-image counts or 0/1 presence)")
    if class_balance and cls is None:
        raise ValueError("class_balance=True needs classes")
    w = float(diversity_weight)

    by_score = _score_order(s)
    crops = None
    if thumbnails is not None:
        thumbs = _thumbnails(thumbnails, "thumbnails", n)
        lab_thumbs = None if labeled_thumbnails is None or lab is None else \
            _thumbnails(labeled_thumbnails, "labeled_thumbnails", len(lab))
        crops = (e[by_score].astype(np.float32), thumbs[by_score],
                 None if lab_thumbs is None else lab.astype(np.float32), lab_thumbs)
    kept, match, lab_match, nearest = _deduplicate(h[by_score], lab_h, float(dedup_similarity), crops)
    nearest_similarity = np.empty(n)
    nearest_similarity[by_score] = nearest
    duplicate_of = np.full(n, -1, dtype=np.int64)
    labeled_duplicate_of = np.full(n, -1, dtype=np.int64)
    has_match = match >= 0
    duplicate_of[by_score[has_match]] = by_score[match[has_match]]
    labeled_duplicate_of[by_score] = lab_match

    unique = by_score[kept]
    pool = default_diverse_pool(n) if diverse_pool is None else int(diverse_pool)
    pool = min(pool, len(unique))
    shortlist = unique[:pool]
    picks = _mmr_order(e[shortlist], s[shortlist], w, lab, cls[shortlist] if class_balance else None, score_scale)
    order = np.concatenate([shortlist[picks], unique[pool:], by_score[~kept]]).astype(np.int64)
    return Ranked(order=order, priority=_priority(n), duplicate_of=duplicate_of,
                  labeled_duplicate_of=labeled_duplicate_of, diverse_count=pool, nearest_similarity=nearest_similarity)
