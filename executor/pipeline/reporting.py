"""The mining report's step of the pipeline: its collector, the values it shows (boxes and class counts read from
the side files, one shard at a time), the run's metadata, and the write, whose failure never fails the task.
"""
import logging
import os
import platform
import time

import numpy as np

from executor.pipeline.diversity import FLAGGED_WARNING, PROJECTION_POINTS, SIMILARITY_BINS, Diverse, \
    selection_params
from executor.pipeline.job import Job, mining_scores_path, report_paths
from executor.pipeline.plan import Plan, load_error_model
from executor.pipeline.shards import ShardStore, file_sha256
from executor.protocol.settings import Settings
from mining import reads_error_model, scorer_params
from mining.errors import ErrorModel

log = logging.getLogger(__name__)


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
    if reads_error_model(name):
        model = load_error_model(plan.error_model) if plan.error_model else ErrorModel()
        run["error_model"] = f"{plan.error_model}: {model.describe()}" if plan.error_model else model.describe()
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


