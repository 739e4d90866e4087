"""Selection diverse in the pipeline: the plan of the reordering, made on the shortlist's embeddings and photo hashes
read from the side files (mining/selection.py does the math), and the near-copies of kept or labelled images found in
the rest of the pool one shard at a time. executor/pipeline/ranking.py applies the plan while the merge streams.
"""
import logging
import time
from dataclasses import dataclass

import numpy as np

from executor.pipeline.job import Job
from executor.pipeline.passes import Models, image_batches
from executor.pipeline.shards import Row, ShardStore, plan
from executor.protocol.settings import Settings
from mining.duplicates import photo, signs, similarity

log = logging.getLogger(__name__)


@dataclass
class Diverse:
    """The reordering of selection diverse, planned on the shortlist (the top diverse_pool images by score) and
    applied while the merge streams: the shortlist in its MMR order, then every other non-duplicate in score
    order, then the duplicates (of the shortlist, then the rest), then the unreadable images."""
    readable: int
    head: list[Row]                     # shortlist non-duplicates, in the order chosen
    head_duplicates: list[Row]          # shortlist duplicates, in score order
    in_head: set                        # (shard, line) of every shortlist row
    duplicate_lines: dict               # shard → bool per line: a near-copy of a kept shortlist or labelled image
    groups: list                        # (kept path, [copies]) in the kept image's written order, for the report
    duplicates: int                     # images moved below every non-duplicate
    projection: np.ndarray | None       # shortlist embeddings in written order (non-duplicates, then duplicates)
    similarities: np.ndarray            # histogram of each image's nearest photo-hash similarity (report)
    threshold: float                    # dedup_similarity
    seconds: float = 0.0

    def priority(self, rank: int) -> float:
        return (self.readable - rank) / self.readable

    @property
    def flagged_warning(self) -> str:
        """Why a pool with many near-duplicates deserves a look (shown when over FLAGGED_WARNING of it)."""
        return (f"{self.duplicates} of {self.readable} images ({100 * self.duplicates / self.readable:.0f}%) are "
                f"near-duplicates at dedup_similarity {self.threshold}: check a few groups in the report, or raise "
                "dedup_similarity if they are different photos")


SCORE_SCALE = "rank"    # the MMR gain's score term: the rank in the shortlist (docs/mining.md#selection)
MAX_GROUPS = 200        # duplicate groups kept for the report (the JSON lists these)
MAX_COPIES = 50         # copies kept per group
PROJECTION_POINTS = 2000
DEDUP_BLOCK = 1024      # rows of one similarity product in the pass over the rest of the pool
FLAGGED_WARNING = 0.10  # a larger share of near-duplicates is warned of (log and report)
SIMILARITY_BINS = 50


def selection_params(settings: Settings) -> dict:
    return {"dedup_similarity": settings.dedup_similarity, "diverse_pool": settings.diverse_pool,
            "diversity_weight": settings.diversity_weight, "class_balance": settings.class_balance}


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


@dataclass
class Labeled:
    """The already-labelled images as selection compares them: embeddings (MMR), photo hashes (near-copies)."""
    embeddings: np.ndarray | None = None
    hashes: np.ndarray | None = None
    thumbnails: np.ndarray | None = None
    paths: tuple = ()


def labeled_images(job: Job, settings: Settings, weights: str, models: Models) -> Labeled:
    """job.labeled embedded and hashed (one forward each, in this process); unreadable ones skipped."""
    if not job.labeled:
        return Labeled()
    detector = models.detector(settings, weights)
    if not detector.enable_embeddings():
        return Labeled()
    rows, hashes, thumbnails, paths, unreadable = [], [], [], [], {}
    for batch in image_batches(list(job.labeled), detector, settings, lambda done: None, unreadable):
        rows.append(detector.embed(batch).astype(np.float32))
        for found, small in map(photo, batch.images):
            hashes.append(found)
            thumbnails.append(small)
        paths += batch.keys
    if unreadable:
        log.warning("%d labelled images could not be read and are not compared with: %s", len(unreadable),
                    ", ".join(list(unreadable)[:5]))
    log.info("selection: %d labelled images embedded", len(paths))
    if not rows:
        return Labeled()
    return Labeled(unit_rows(np.concatenate(rows)), np.stack(hashes), np.stack(thumbnails), tuple(paths))


def plan_diverse(job: Job, store: ShardStore, count: int, settings: Settings, weights: str,
                 models: Models) -> Diverse | None:
    """The diverse order's plan, reading embeddings of the shortlist (and of one shard at a time for the rest),
    or None (score order, with a warning) when the shards carry no embeddings (an ONNX model without them)."""
    from mining.selection import default_diverse_pool, rank_diverse

    started = time.monotonic()
    missing = [i for i in range(count) if not store.side_has(i, "embeddings")]
    if missing:
        log.warning("selection 'diverse': the model gave no embeddings (see above); result.tsv keeps the score "
                    "order")
        return None
    readable = sum(store.side_arrays(i, "readable").readable for i in range(count))
    if readable == 0:
        return None
    size = min(readable, settings.diverse_pool or default_diverse_pool(readable))
    head_rows: list[Row] = []
    merged = store.merged_rows(count)
    for row in merged:
        if row.reason or len(head_rows) == size:
            break
        head_rows.append(row)
    merged.close()  # the shard files it holds open
    names = ("embeddings", "hashes", "thumbnails") + (("class_counts",) if settings.class_balance else ())
    embeddings, hashes, thumbnails, classes = None, None, None, None
    by_shard: dict[int, list[int]] = {}
    for position, row in enumerate(head_rows):
        by_shard.setdefault(row.shard, []).append(position)
    for shard, positions in by_shard.items():
        arrays = store.side_arrays(shard, *names)
        lines = [head_rows[p].line for p in positions]
        if embeddings is None:
            embeddings = np.zeros((len(head_rows), arrays.embeddings.shape[1]), np.float32)
            hashes = np.zeros((len(head_rows),) + arrays.hashes.shape[1:], np.uint8)
            thumbnails = np.zeros((len(head_rows),) + arrays.thumbnails.shape[1:], np.uint8)
            if arrays.class_counts is not None:
                classes = np.zeros((len(head_rows), arrays.class_counts.shape[1]), np.float64)
        embeddings[positions] = arrays.embeddings[lines]
        hashes[positions] = arrays.hashes[lines]
        thumbnails[positions] = arrays.thumbnails[lines]
        if classes is not None:
            classes[positions] = arrays.class_counts[lines]
    if not np.linalg.norm(embeddings, axis=1).all():
        log.warning("selection 'diverse': some shortlist images have no embedding; result.tsv keeps the score order")
        return None
    labeled = labeled_images(job, settings, weights, models)
    labeled_paths = list(labeled.paths)
    ranked = rank_diverse([r.score for r in head_rows], embeddings, hashes=hashes, thumbnails=thumbnails,
                          dedup_similarity=settings.dedup_similarity, diverse_pool=len(head_rows),
                          diversity_weight=settings.diversity_weight, classes=classes,
                          class_balance=settings.class_balance, labeled=labeled.embeddings,
                          labeled_hashes=labeled.hashes, labeled_thumbnails=labeled.thumbnails,
                          score_scale=SCORE_SCALE)
    nearest = [ranked.nearest_similarity]
    kept = ranked.diverse_count
    order = ranked.order
    head = [head_rows[i] for i in order[:kept]]
    head_duplicates = [head_rows[i] for i in order[kept:]]
    # groups: kept image → its copies (shortlist copies first, in score order)
    group_of: dict[str, list[str]] = {}
    for i in order[kept:]:
        if ranked.duplicate_of[i] >= 0:
            group_of.setdefault(head_rows[ranked.duplicate_of[i]].key, []).append(head_rows[i].key)
        elif ranked.labeled_duplicate_of[i] >= 0:
            group_of.setdefault(labeled_paths[ranked.labeled_duplicate_of[i]], []).append(head_rows[i].key)
    # the rest of the pool, one shard at a time: a near-copy of a kept shortlist image or a labelled one goes down
    kept_hashes = hashes[order[:kept]]
    against = signs(kept_hashes if labeled.hashes is None else np.concatenate([kept_hashes, labeled.hashes]))
    against_paths = [r.key for r in head] + labeled_paths
    in_head = {(r.shard, r.line) for r in head_rows}
    shards = plan(job.candidates, settings.shard_size)
    duplicate_lines: dict[int, np.ndarray] = {}
    threshold = float(settings.dedup_similarity)
    rest_duplicates = 0
    for shard in range(count):
        arrays = store.side_arrays(shard, "hashes", "readable", "order")
        lines = [line for line in range(arrays.readable) if (shard, line) not in in_head]
        flags = np.zeros(len(arrays.order), bool)
        keys = shards[shard].keys
        for b0 in range(0, len(lines) if len(against) else 0, DEDUP_BLOCK):
            block = lines[b0:b0 + DEDUP_BLOCK]
            sims = similarity(signs(arrays.hashes[block]), against)
            best = sims.argmax(axis=1)
            nearest.append(sims[np.arange(len(block)), best])
            hit = nearest[-1].astype(np.float64) >= threshold
            flags[np.asarray(block)[hit]] = True
            for line, match in zip(np.asarray(block)[hit], best[hit]):
                copies = group_of.setdefault(against_paths[match], [])
                if len(copies) < MAX_COPIES:
                    copies.append(keys[arrays.order[line]])
            rest_duplicates += int(hit.sum())
        duplicate_lines[shard] = flags
    written_rank = {r.key: n for n, r in enumerate(head)}
    groups = sorted(((k, c[:MAX_COPIES]) for k, c in group_of.items()),
                    key=lambda g: (written_rank.get(g[0], len(written_rank)), g[0]))[:MAX_GROUPS]
    points = np.concatenate([embeddings[order[:kept]][:PROJECTION_POINTS * 3 // 4],
                             embeddings[order[kept:]][:PROJECTION_POINTS // 4]])
    plan_ = Diverse(readable, head, head_duplicates, in_head, duplicate_lines, groups,
                    len(head_duplicates) + rest_duplicates, points, similarity_histogram(np.concatenate(nearest)),
                    threshold, time.monotonic() - started)
    log.info("selection 'diverse': shortlist of %d, %d near-duplicates pushed down (%d in the shortlist), "
             "%.2f s", len(head_rows), plan_.duplicates, len(head_duplicates), plan_.seconds)
    if plan_.duplicates > FLAGGED_WARNING * readable:
        log.warning("selection 'diverse': %s", plan_.flagged_warning)
    return plan_


def similarity_histogram(nearest: np.ndarray) -> np.ndarray:
    """Counts of each image's highest photo-hash similarity to an image placed above it (or a labelled one), in
    SIMILARITY_BINS bins over [0.5, 1] (lower values in the first)."""
    found = np.clip(nearest[np.isfinite(nearest)].astype(np.float64), 0.5, 1.0)
    return np.histogram(found, bins=SIMILARITY_BINS, range=(0.5, 1.0))[0]
