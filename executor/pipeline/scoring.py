"""Scoring in shards: what a run's shards are named by (its identity and side files), where they live, which
worker scores which, and the loop over them (one process or several, resumable).
"""

import dataclasses
import functools
import logging
import os
import time
from typing import Callable, Mapping, Sequence

from executor.engine.embeddings import EMBEDDING_VERSION
from executor.errors import Interrupted, from_ctrl_c
from executor.pipeline.job import Job
from executor.pipeline.passes import Models, Pass, open_scorer
from executor.pipeline.plan import Plan
from executor.pipeline.shards import Shard, ShardStore, file_sha256, plan as cut, shards_of_rank
from executor.pipeline.side_files import SideSpec
from executor.pipeline.workers import clear, run_workers, wait_for
from executor.protocol.monitor import Progress
from executor.protocol.settings import Settings
from mining import SCORERS, scorer_params
from mining.duplicates import HASH_VERSION, THUMB_VERSION

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- shards: score → gather → write

def run_identity(task: str, plan: Plan) -> dict:
    """Everything a shard's content depends on besides its keys (its fingerprint is made of this)."""
    settings = plan.settings[task]
    identity = {"task": task, "img_size": settings.img_size}
    if task == "mining":
        name = settings.mining_algorithm
        identity.update(algorithm=name, params=scorer_params(name, settings))
        if not SCORERS[name].needs_model:
            return identity
        if plan.error_model:  # the scores are the error model's
            identity["error_model"] = file_sha256(plan.error_model)
    return {**identity, **model_identity(settings, plan.weights[task])}


def model_identity(settings: Settings, weights: str) -> dict:
    return {"weights": file_sha256(weights), "backend": settings.backend, "conf_thres": settings.conf_thres,
            "iou_thres": settings.iou_thres, "max_det": settings.max_det, "class_names": list(settings.class_names)}


def side_spec(task: str, plan: Plan) -> SideSpec | None:
    """What a mining shard's side file must hold for this run (None: no side file): embeddings for selection
    diverse, per-image predicted class counts for class_balance, predicted boxes for the report (whenever a
    model runs). Part of the side file's fingerprint, never of the score file's: selection and the report
    never change the scores."""
    if task != "mining":
        return None
    settings = plan.settings[task]
    diverse = settings.selection == "diverse"
    spec = SideSpec(embeddings=EMBEDDING_VERSION if diverse else "",
                    hashes=f"{HASH_VERSION}+{THUMB_VERSION}" if diverse else "",
                    class_counts=diverse and settings.class_balance,
                    boxes=bool(settings.report and plan.needs_model(task)))
    if spec == SideSpec():
        return None
    if not SCORERS[settings.mining_algorithm].needs_model:  # the scores' identity does not name the model
        model = {"task": "infer", "img_size": settings.img_size, **model_identity(settings, plan.weights[task])}
        spec = dataclasses.replace(spec, model=model)
    return spec


def shards_folder(job: Job) -> str:
    return job.shards_dir or os.path.join(job.work_dir or ".", "shards")


def job_shards(job: Job, shard_size: int) -> list[Shard]:
    """The job's candidates cut into shards, each with its result keys."""
    if job.names and len(job.names) != len(job.candidates):
        raise ValueError(f"Job.names holds {len(job.names)} result keys for {len(job.candidates)} candidates")
    return cut(job.candidates, shard_size, job.names)


def shard_store(task: str, plan: Plan) -> tuple[ShardStore, list[Shard]]:
    return (ShardStore(shards_folder(plan.job), task, run_identity(task, plan), side_spec(task, plan)),
            job_shards(plan.job, plan.settings[task].shard_size))


def work_shards(plan: Plan, todo: Sequence[int], rank: int, world: int, device: str, report: Callable[[int], None],
                models: Models | None = None) -> None:
    """Score and/or detect (the plan's tasks) the shards of `todo` that belong to worker `rank` of `world`, in one
    pass over their images; each shard's files written as soon as its images are done."""
    plan = plan.on_worker(device, world)
    tasks, settings = plan.tasks, plan.settings
    stores = {task: shard_store(task, plan)[0] for task in tasks}
    shards = job_shards(plan.job, plan.loop.shard_size)
    mine_now = shards_of_rank([shards[i] for i in todo], rank, world)
    if not mine_now:
        return
    models = models or Models()
    work = Pass({task: settings[task] for task in tasks})
    if "mining" in tasks:
        work.scorer = open_scorer(settings["mining"], plan.error_model)
        if SCORERS[settings["mining"].mining_algorithm].needs_model:
            work.mining_detector = models.detector(settings["mining"], plan.weights["mining"])
    if "infer" in tasks:
        work.infer_detector = models.detector(settings["infer"], plan.weights["infer"])
    if "mining" in tasks and stores["mining"].side is not None:
        store = stores["mining"]
        work.side = store.side
        work.side_detector = work.mining_detector or models.detector(settings["mining"], plan.weights["mining"])
        if store.side.embeddings:
            work.side_detector.enable_embeddings()
        store.embedding_dim, store.class_names = work.side_detector.embedding_dim, list(work.side_detector.names)
    started = time.perf_counter()
    for shard, found in work.run_shards(mine_now, report):  # each shard as soon as its images are done
        if "mining" in tasks:
            stores["mining"].write_scores(shard, found["mining"], found["unreadable"], found["side"])
        if "infer" in tasks:
            stores["infer"].write_records(shard, found["infer"], found["unreadable"], found["sizes"])
    if work.side and work.side.embeddings:
        elapsed, pooled = time.perf_counter() - started, work.pool_seconds
        log.info("embeddings: pooling %.2f s (%.1f%% of %.1f s of scoring), forwards for embeddings only %.2f s",
                 pooled, 100 * pooled / max(elapsed, 1e-9), elapsed, work.forward_seconds)


def score_shards(plan: Plan, progress: Progress, models: Models) -> tuple[dict[str, ShardStore], list[Shard], int] | None:
    """Every shard of the job complete for every task of the plan (reusing those an earlier run finished), on
    every worker of the plan. Returns the stores, the shards to merge and how many images this run scored (the
    rest were reused), or None on a rank of an outer torchrun that does not merge. A Ctrl-C raises Interrupted,
    saying what is kept."""
    stores, shards = {}, []
    for task in plan.tasks:
        stores[task], shards = shard_store(task, plan)
    todo = [shard.index for shard in shards if not all(store.complete(shard) for store in stores.values())]
    done_before = sum(len(s.keys) for s in shards) - sum(len(shards[i].keys) for i in todo)
    if done_before:
        log.info("%s: %d of %d shards are complete from an earlier run with the same settings; scoring the other %d",
                 "+".join(plan.tasks), len(shards) - len(todo), len(shards), len(todo))
    total = len(plan.job.candidates)
    devices = plan.devices
    folder = next(iter(stores.values())).folder
    try:
        if plan.job.outer is not None:  # one rank of a torchrun job over a shared folder
            rank, world, local = plan.job.outer
            work_shards(plan, todo, rank, world, devices[local % len(devices)],
                        lambda done: progress((done_before + done) / max(1, total)), models)
            if rank != 0:
                return None
            wait_for(lambda: sum(len(s.keys) for s in shards if all(st.complete(s) for st in stores.values())),
                     total, progress)
        elif todo:
            run = work_shards if len(devices) > 1 else functools.partial(work_shards, models=models)
            run_workers(run, (plan, todo), devices, folder, done_before, total, progress)
    except BaseException as exc:
        if not from_ctrl_c(exc):
            raise
        clear(folder)  # and the folder itself when no shard was finished
        raise interrupted(stores, shards) from None
    return stores, shards, total - done_before


def interrupted(stores: Mapping[str, ShardStore], shards: Sequence[Shard]) -> Interrupted:
    """What a Ctrl-C leaves for a rerun: the shards complete for every task."""
    kept = [shard for shard in shards if all(store.complete(shard) for store in stores.values())]
    return Interrupted(next(iter(stores.values())).folder, len(kept), len(shards), sum(len(s.keys) for s in kept))
