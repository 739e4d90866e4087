"""Mining's gather → select → write → report step: the merged shards become result.tsv.

`selection: score` writes the merge as it is; `selection: diverse` plans a reordering on the shortlist's
embeddings (mining/selection.py) and writes its priority as the score, with every image's raw score in a side
file. The report (executor/report/) is built from what the write saw, and its failure never fails the task.
"""
import logging
import os
import platform
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import numpy as np

from executor.pipeline.job import Job, mining_scores_path, report_paths
from executor.pipeline.passes import Models, image_batches, weights_for
from executor.pipeline.shards import Row, ShardStore, file_sha256, plan, ranked_rows, some_readable
from executor.protocol.settings import Settings, build_settings
from executor.protocol.writers import UNREADABLE_SCORE, atomic_writer, format_score, write_ranked
from mining import SCORERS, scorer_params
from mining.duplicates import photo, signs, similarity

log = logging.getLogger(__name__)


@dataclass
class Written:
    """One line of result.tsv as it is written: the row it came from, the written score (the selection
    priority under selection diverse) and the algorithm's own score."""
    row: Row
    score: float
    raw: float


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


def labeled_images(job: Job, settings: Settings, models: Models) -> Labeled:
    """job.labeled embedded and hashed (one forward each, in this process); unreadable ones skipped."""
    if not job.labeled:
        return Labeled()
    detector = models.detector(settings, job.models_dir)
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


def plan_diverse(job: Job, store: ShardStore, count: int, settings: Settings, models: Models) -> Diverse | None:
    """The diverse order's plan, reading embeddings of the shortlist (and of one shard at a time for the rest),
    or None (score order, with a warning) when the shards carry no embeddings (an ONNX model without them)."""
    from mining.selection import default_diverse_pool, rank_diverse

    started = time.monotonic()
    missing = [i for i in range(count) if not store.side_has(i, "embeddings")]
    if missing:
        log.warning("selection 'diverse': the model gave no embeddings (see above); result.tsv keeps the score "
                    "order")
        return None
    readable = sum(int(store.side_arrays(i, ["readable"])["readable"]) for i in range(count))
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
    names = ["embeddings", "hashes", "thumbnails"] + (["class_counts"] if settings.class_balance else [])
    embeddings, hashes, thumbnails, classes = None, None, None, None
    by_shard: dict[int, list[int]] = {}
    for position, row in enumerate(head_rows):
        by_shard.setdefault(row.shard, []).append(position)
    for shard, positions in by_shard.items():
        arrays = store.side_arrays(shard, names)
        lines = [head_rows[p].line for p in positions]
        if embeddings is None:
            embeddings = np.zeros((len(head_rows), arrays["embeddings"].shape[1]), np.float32)
            hashes = np.zeros((len(head_rows),) + arrays["hashes"].shape[1:], np.uint8)
            thumbnails = np.zeros((len(head_rows),) + arrays["thumbnails"].shape[1:], np.uint8)
            if "class_counts" in arrays:
                classes = np.zeros((len(head_rows), arrays["class_counts"].shape[1]), np.float64)
        embeddings[positions] = arrays["embeddings"][lines]
        hashes[positions] = arrays["hashes"][lines]
        thumbnails[positions] = arrays["thumbnails"][lines]
        if classes is not None:
            classes[positions] = arrays["class_counts"][lines]
    if not np.linalg.norm(embeddings, axis=1).all():
        log.warning("selection 'diverse': some shortlist images have no embedding; result.tsv keeps the score order")
        return None
    labeled = labeled_images(job, settings, models)
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
        arrays = store.side_arrays(shard, ["hashes", "readable", "order"])
        lines = [line for line in range(int(arrays["readable"])) if (shard, line) not in in_head]
        flags = np.zeros(len(arrays["order"]), bool)
        keys = shards[shard].keys
        for b0 in range(0, len(lines) if len(against) else 0, DEDUP_BLOCK):
            block = lines[b0:b0 + DEDUP_BLOCK]
            sims = similarity(signs(arrays["hashes"][block]), against)
            best = sims.argmax(axis=1)
            nearest.append(sims[np.arange(len(block)), best])
            hit = nearest[-1].astype(np.float64) >= threshold
            flags[np.asarray(block)[hit]] = True
            for line, match in zip(np.asarray(block)[hit], best[hit]):
                copies = group_of.setdefault(against_paths[match], [])
                if len(copies) < MAX_COPIES:
                    copies.append(keys[arrays["order"][line]])
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


def written_rows(store: ShardStore, count: int, diverse: Diverse | None, total: int) -> Iterator[Written]:
    """result.tsv's lines in order: the merge itself (selection score), or the diverse plan applied to it."""
    if diverse is None:
        for row in ranked_rows(store, count, total, located=True):
            yield Written(row, row.score, row.score)
        return
    rank = 0
    for row in diverse.head:
        yield Written(row, diverse.priority(rank), row.score)
        rank += 1

    def rest(duplicates: bool) -> Iterator[Row]:
        for row in store.merged_rows(count):
            if row.reason:
                if not duplicates:
                    return
                yield row
            elif (row.shard, row.line) not in diverse.in_head and \
                    bool(diverse.duplicate_lines[row.shard][row.line]) == duplicates:
                yield row

    for row in rest(False):
        yield Written(row, diverse.priority(rank), row.score)
        rank += 1
    for row in diverse.head_duplicates:
        yield Written(row, diverse.priority(rank), row.score)
        rank += 1
    for row in rest(True):
        if row.reason:
            yield Written(row, UNREADABLE_SCORE, UNREADABLE_SCORE)
        else:
            yield Written(row, diverse.priority(rank), row.score)
            rank += 1


def checked(lines: Iterable[Written], total: int, raw_scores=None) -> Iterator[tuple[str, float]]:
    """(key, written score) of `lines`, each raw score also written to `raw_scores`; all of the `total` images
    unreadable is NoReadableImages at the end of the stream (the writers then never rename their temp files)."""
    for line in some_readable(lines, total, lambda line: line.row.reason):
        if raw_scores is not None:
            raw_scores.write(f"{line.row.key}\t{format_score(line.raw)}\n")
        yield line.row.key, line.score


@dataclass
class MiningContext:
    """What the write step of mining needs besides the shards: the settings, the loaded models, when it began."""
    config: Mapping
    models: Models
    started: float      # time.monotonic() when the task began
    started_at: str     # the same moment, UTC, ISO 8601


def write_mining(job: Job, store: ShardStore, count: int, context: MiningContext) -> str:
    settings = build_settings("mining", context.config)
    diverse = plan_diverse(job, store, count, settings, context.models) if settings.selection == "diverse" else None
    if diverse is None and not settings.report:
        write_ranked(job.mining_result, ranked_rows(store, count, len(job.candidates)))  # today's path
        remove_stale_report(job)
        return job.mining_result
    collector = None
    lines: Iterable[Written] = written_rows(store, count, diverse, len(job.candidates))
    if settings.report:
        from executor.report.collect import ReportCollector

        track = [p for kept, copies in diverse.groups for p in (kept, *copies)] if diverse else ()
        thumbnails = min(settings.report_top_n, job.selected) if job.selected else settings.report_top_n
        collector = ReportCollector(thumbnails, raw=diverse is not None, track=track, selected=job.selected or None)
        lines = collector.watch(lines)
    if diverse is None:
        write_ranked(job.mining_result, checked(lines, len(job.candidates)))
    else:
        with atomic_writer(mining_scores_path(job)) as raw_scores:
            write_ranked(job.mining_result, checked(lines, len(job.candidates), raw_scores))
        log.info("wrote the raw %s scores, in result.tsv's order, to %s", settings.mining_algorithm,
                 mining_scores_path(job))
    seconds = time.monotonic() - context.started
    if collector is not None:
        write_mining_report(job, store, count, settings, collector, diverse, seconds, context.started_at)
    else:
        remove_stale_report(job)
    return job.mining_result


def remove_stale_report(job: Job) -> None:
    """A run without a report removes the report an earlier run left at its place: it describes another
    ranking."""
    for path in report_paths(job):
        if os.path.isfile(path):
            os.unlink(path)
            log.info("removed %s of an earlier run (this run writes no report)", path)


def write_mining_report(job: Job, store: ShardStore, count: int, settings: Settings, collector, diverse, seconds,
                        started_at: str):
    """The report, from what the run computed; any failure is a warning: result.tsv is the product."""
    started = time.monotonic()
    try:
        from executor.report.board import write_tensorboard
        from executor.report.collect import pca_2d
        from executor.report.page import write_report

        extra = {}
        if diverse is not None:
            extra["duplicate_groups"] = list(diverse.groups)
            extra["near_duplicates"] = {
                "threshold": diverse.threshold, "flagged": diverse.duplicates, "readable": diverse.readable,
                "bin_edges": np.linspace(0.5, 1.0, SIMILARITY_BINS + 1).round(4).tolist(),
                "counts": diverse.similarities.tolist(),
                "warning": diverse.flagged_warning if diverse.duplicates > FLAGGED_WARNING * diverse.readable else ""}
            if diverse.projection is not None and len(diverse.projection):
                selected = np.zeros(len(diverse.projection), bool)
                selected[:min(job.selected or settings.report_top_n, len(diverse.head), len(selected))] = True
                extra.update(projection=pca_2d(diverse.projection), projection_selected=selected,
                             projection_note=f"of the diversity shortlist (the top "
                                             f"{len(diverse.head_duplicates) + len(diverse.head)} images by score; "
                                             f"at most {PROJECTION_POINTS} points)")
        data = collector.report_data(store, count, run_metadata(job, settings, seconds, diverse, started_at),
                                     **extra)
        html_path, json_path = report_paths(job)
        write_report(html_path, json_path, data)
        if job.tensorboard_dir:
            write_tensorboard(job.tensorboard_dir, data)
        log.info("wrote the mining report %s (+ %s%s) in %.2f s", html_path, os.path.basename(json_path),
                 f", tensorboard {job.tensorboard_dir}" if job.tensorboard_dir else "", time.monotonic() - started)
    except Exception as exc:  # noqa: BLE001 — never fail the mining task for its report
        log.warning("the mining report was not written (%s: %s); result.tsv is complete", type(exc).__name__, exc)
        log.debug("report failure", exc_info=True)


def versions() -> dict:
    from importlib import metadata

    from executor import __version__

    found = {"quarry": __version__, "python": platform.python_version()}
    for name, packages in (("torch", ("torch",)), ("ultralytics", ("ultralytics", "ultralytics-opencv-headless")),
                           ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")), ("numpy", ("numpy",))):
        for package in packages:
            try:
                found[name] = metadata.version(package)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def run_metadata(job: Job, settings: Settings, seconds: float, diverse: Diverse | None, started_at: str) -> dict:
    name = settings.mining_algorithm
    params = {"img_size": settings.img_size, **scorer_params(name, settings)}
    run: dict = {}
    if SCORERS[name].needs_model or settings.selection == "diverse":
        weights = weights_for(settings, job.models_dir)
        run.update(model=weights, model_sha256=file_sha256(weights), backend=settings.backend)
        params.update(conf_thres=settings.conf_thres, iou_thres=settings.iou_thres, max_det=settings.max_det)
    pool = len(job.candidates)
    run.update(algorithm=name, params=params, seed=settings.seed, selection=settings.selection)
    if settings.selection == "diverse":
        run["selection_params"] = selection_params(settings)
        if diverse is None:
            run["selection_note"] = "no embeddings: the score order was kept"
        else:
            run.update(shortlist=len(diverse.head) + len(diverse.head_duplicates),
                       duplicates_pushed_down=diverse.duplicates, selection_seconds=round(diverse.seconds, 3),
                       raw_scores_file=mining_scores_path(job))
        if job.labeled:
            run["labeled_images"] = len(job.labeled)
    run.update(pool_size=pool, seconds=seconds, images_per_s=pool / max(seconds, 1e-9), versions=versions(),
               started_at=started_at)
    return run


