"""Mining's gather → select → write → report step: the merged shards become the Ranking, written to result.tsv.

`selection: score` streams the merge as it is; `selection: diverse` plans a reordering on the shortlist's
embeddings (mining/selection.py) and gives its priority as the score, with every image's raw score in a side
file. The ranking's entries stream once: into result.tsv (the platform, the CLI) and into what the caller keeps
(every entry for a job with no result file: the API, the simulator). The report (executor/report/) is built from
what the write saw plus the boxes read here, and its failure never fails the task.
"""
import collections
import contextlib
import logging
import os
import platform
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, NamedTuple

import numpy as np

from executor.pipeline.job import Job, mining_scores_path, report_paths
from executor.pipeline.passes import Models, image_batches
from executor.pipeline.plan import Plan
from executor.pipeline.shards import Row, ShardStore, file_sha256, plan, some_readable
from executor.protocol.settings import Settings
from executor.protocol.writers import UNREADABLE_SCORE, atomic_writer, format_score, write_ranked
from mining import scorer_params
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


class Entry(NamedTuple):
    """One line of the ranking: the image, the score result.tsv gives it (the selection priority under selection
    diverse; -1 when unreadable), the algorithm's own score, why it is unreadable ('' when read), and where it
    came from (shard, line number) for selection and the report."""
    key: str
    score: float
    raw: float
    reason: str
    shard: int
    line: int


def entry(row: Row, score: float) -> Entry:
    return Entry(row.key, score, row.score, row.reason, row.shard, row.line)


@dataclass
class Ranking:
    """What mining returns: the result.tsv written ('' when the job names none) and the entries kept in memory,
    best first: all of them when no file is written (in-process callers: the API, the simulator), else the first
    Job.selected (the CLI's --topk; the platform keeps none: its pool may be millions of images)."""
    path: str
    entries: list[Entry]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)


def ranking_entries(store: ShardStore, count: int, diverse: Diverse | None, total: int) -> Iterator[Entry]:
    """The ranking streamed best first: the merge itself (selection score), or the diverse plan applied to it;
    all of the `total` images unreadable is NoReadableImages at the end of the stream (some_readable)."""
    return some_readable(ordered_entries(store, count, diverse), total, lambda found: found.reason)


def ordered_entries(store: ShardStore, count: int, diverse: Diverse | None) -> Iterator[Entry]:
    if diverse is None:
        for row in store.merged_rows(count):
            yield entry(row, row.score)
        return
    rank = 0
    for row in diverse.head:
        yield entry(row, diverse.priority(rank))
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
        yield entry(row, diverse.priority(rank))
        rank += 1
    for row in diverse.head_duplicates:
        yield entry(row, diverse.priority(rank))
        rank += 1
    for row in rest(True):
        if row.reason:
            yield entry(row, UNREADABLE_SCORE)
        else:
            yield entry(row, diverse.priority(rank))
            rank += 1


def serialised(entries: Iterable[Entry], kept: list[Entry], keep: int, raw_scores=None
               ) -> Iterator[tuple[str, float]]:
    """(key, written score) of `entries`, the first `keep` of them also put in `kept` and each raw score written
    to `raw_scores` (selection diverse's file beside result.tsv)."""
    for found in entries:
        if len(kept) < keep:
            kept.append(found)
        if raw_scores is not None:
            raw_scores.write(f"{found.key}\t{format_score(found.raw)}\n")
        yield found.key, found.score


@dataclass
class MiningContext:
    """What the write step of mining needs besides the shards: the settings, the loaded models, when it began."""
    plan: Plan
    models: Models
    started: float      # time.monotonic() when the task began
    started_at: str     # the same moment, UTC, ISO 8601


def write_mining(job: Job, store: ShardStore, count: int, context: MiningContext) -> Ranking:
    """The merged shards, in the selection's order, to result.tsv (streamed, atomic) when the job names it, to the
    raw scores file under selection diverse, and to the report; returns the Ranking."""
    settings, weights = context.plan.settings["mining"], context.plan.weights["mining"]
    diverse = plan_diverse(job, store, count, settings, weights, context.models) \
        if settings.selection == "diverse" else None
    entries: Iterable[Entry] = ranking_entries(store, count, diverse, len(job.candidates))
    collector = report_collector(job, settings, diverse)
    if collector is not None:
        entries = collector.watch(entries)
    kept: list[Entry] = []
    raw_path = mining_scores_path(job) if diverse is not None else ""
    with contextlib.ExitStack() as files:
        raw_scores = files.enter_context(atomic_writer(raw_path)) if raw_path else None
        lines = serialised(entries, kept, job.selected if job.mining_result else len(job.candidates), raw_scores)
        if job.mining_result:
            write_ranked(job.mining_result, lines)
        else:
            collections.deque(lines, maxlen=0)  # the values only
    if raw_path:
        log.info("wrote the raw %s scores, in result.tsv's order, to %s", settings.mining_algorithm, raw_path)
    seconds = time.monotonic() - context.started
    if collector is not None:
        write_mining_report(context.plan, store, count, collector, diverse, seconds, context.started_at)
    else:
        remove_stale_report(job)
    return Ranking(job.mining_result, kept)


def report_collector(job: Job, settings: Settings, diverse: Diverse | None):
    """The ReportCollector of this run, or None without a report (report off, or a job with no place for it)."""
    if not (settings.report and report_paths(job)[0]):
        return None
    from executor.report.collect import ReportCollector

    track = [p for kept, copies in diverse.groups for p in (kept, *copies)] if diverse else ()
    thumbnails = min(settings.report_top_n, job.selected) if job.selected else settings.report_top_n
    return ReportCollector(thumbnails, raw=diverse is not None, track=track, selected=job.selected or None)


def remove_stale_report(job: Job) -> None:
    """A run without a report removes the report an earlier run left at its place: it describes another
    ranking."""
    for path in report_paths(job):
        if path and os.path.isfile(path):
            os.unlink(path)
            log.info("removed %s of an earlier run (this run writes no report)", path)


def report_inputs(store: ShardStore, count: int, collector) -> dict:
    """What the report shows of the shards, as values: the model's class names, the key and predicted boxes of
    every image shown by (shard, line), and the predicted boxes per class over the selection and over the pool
    (one side file at a time; no boxes when the run used no model)."""
    from executor.report.collect import Shown, class_counts

    where = collector.shown()
    keys = store.keys_at(where)
    with_boxes = bool(store.side and store.side.boxes and count)
    names = (store.side_arrays(0, "class_names").class_names or []) if with_boxes else []
    pool, top = np.zeros(len(names), np.int64), np.zeros(len(names), np.int64)
    selected = collector.selection()
    shown = {}
    for shard in range(count) if with_boxes else ():
        arrays = store.side_arrays(shard, "box_start", "box_xyxy", "box_conf", "box_cls")
        pool += class_counts(arrays.box_cls, len(names))
        chosen = np.zeros(len(arrays.box_start) - 1, bool)
        chosen[selected[selected >> 32 == shard] & 0xFFFFFFFF] = True
        top += class_counts(arrays.box_cls[chosen[arrays.box_rows()]], len(names))
        shown.update(((s, line), Shown(keys[s, line], *arrays.boxes(line))) for s, line in where if s == shard)
    for at in where:
        shown.setdefault(at, Shown(keys[at], np.zeros((0, 4)), np.zeros(0), np.zeros(0)))
    return {"class_names": names, "class_counts_top": top, "class_counts_pool": pool, "shown": shown}


def write_mining_report(plan: Plan, store: ShardStore, count: int, collector, diverse, seconds, started_at: str):
    """The report, from what the run computed; any failure is a warning: result.tsv is the product."""
    job, settings = plan.job, plan.settings["mining"]
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
        data = collector.report_data(run_metadata(plan, seconds, diverse, started_at),
                                     **report_inputs(store, count, collector), **extra)
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


def run_metadata(plan: Plan, seconds: float, diverse: Diverse | None, started_at: str) -> dict:
    job, settings = plan.job, plan.settings["mining"]
    name = settings.mining_algorithm
    params = {"img_size": settings.img_size, **scorer_params(name, settings)}
    run: dict = {}
    if plan.needs_model("mining"):
        weights = plan.weights["mining"]
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


