"""The tasks behind one registry: platform mode and the local CLI both call `run` with plain arguments.

Mining is score → gather → write: workers score shards of the candidate list (executor/shards.py,
executor/workers.py), each shard written when done; the gather is a streamed merge of the shards, checked,
and the result is written once, atomically. Inference is the same with the detector's boxes as records.
"""
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

from executor.config import Settings, build_settings, gpu_list, resolve_weights
from executor.errors import DatasetError, NoReadableImages
from executor.images import letterbox
from executor.loop import Unreadable, batches, out_of_memory_hint
from executor.model import Detector, load_detector
from executor.monitor import Progress, span
from executor.runtime import cpu_threads
from executor.shards import Shard, ShardStore, file_sha256, plan, shards_of_rank
from executor.workers import clear, outer_rank, run_workers, wait_for
from executor.writers import UNREADABLE_SCORE, box_record, write_infer_result, write_ranked
from mining import SCORERS, get_scorer, scorer_params
from mining.base import Batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """What a run reads and writes besides its config: plain paths (start.py builds it from env.yaml or flags)."""
    candidates: Sequence[str] = ()          # image paths to mine or infer, in index order
    models_dir: str = ""                    # model_params_path / pretrained_model_params are relative to it
    mining_result: str = ""                 # result.tsv
    infer_result: str = ""                  # infer-result.json
    infer_list_key: str | tuple = "boxes"   # the per-image list name(s) of infer-result.json
    training_index: str = ""
    val_index: str = ""
    models_out: str = ""                    # model stages, attachments
    training_result: str = ""               # result.yaml
    tensorboard_dir: str = ""
    work_dir: str = ""                      # the YOLO dataset, Ultralytics' run dir, the stage book
    weights_dirs: Sequence[str] = ()        # bundled pretrained weights (<model>.pt)
    multi_stage_result: bool = True         # protocol >= 1.0.0 result.yaml
    names: Sequence[str] = ()               # infer-result.json key per candidate (default: unique basenames)
    shards_dir: str = ""                    # finished shards, shared by every worker (default: work_dir/shards)


@dataclass
class Models:
    """Detectors loaded during one run, so mining and infer of one call load the model once."""
    loaded: dict = field(default_factory=dict)

    def detector(self, settings: Settings, models_dir: str) -> Detector:
        weights = weights_for(settings, models_dir)
        post = {"conf_thres": settings.conf_thres, "iou_thres": settings.iou_thres, "max_det": settings.max_det}
        for detector in self.loaded.values():
            if detector.weights == weights and detector.img_size == detector.input_size(settings.img_size):
                return detector.with_postprocess(**post)
        detector = load_detector(weights, settings.backend, settings.gpu_id, settings.img_size,
                                 class_names=settings.class_names, pin_memory=settings.pin_memory,
                                 threads=settings.cpu_threads, **post)
        self.loaded[weights] = detector
        return detector


def weights_for(settings: Settings, models_dir: str) -> str:
    """model_params_path → one weights file: a .pt unless only an .onnx is given (or backend says onnx)."""
    paths = settings.model_params_path
    if settings.backend == "onnx":
        return resolve_weights(paths, models_dir, (".onnx",))
    if settings.backend == "torch" or any(p.lower().endswith((".pt", ".pth")) for p in paths):
        return resolve_weights(paths, models_dir, (".pt", ".pth"))
    return resolve_weights(paths, models_dir, (".pt", ".pth", ".onnx"))


# ---------------------------------------------------------------- the loop's consumers

def image_batches(keys: Sequence[str], detector: Detector | None, settings: Settings, report: Callable[[int], None],
                  unreadable: dict[str, str]) -> Iterator[Batch]:
    """The loop's batches (unreadable images go to `unreadable` with their reason); report(images done)."""
    prepare = detector.letterbox if detector else (lambda image: letterbox(image, settings.img_size))
    done = 0
    for item in batches(keys, prepare, settings.batch_size_per_gpu, settings.num_workers_per_gpu):
        if isinstance(item, Unreadable):
            unreadable[item.key] = item.reason
            done += 1
        else:
            yield item
            done += len(item.keys)
        report(done)


def score_images(keys: Sequence[str], scorer, detector: Detector | None, settings: Settings,
                 report: Callable[[int], None], unreadable: dict[str, str]) -> dict[str, float]:
    """The score of every key; unreadable images get the UNREADABLE_SCORE sentinel (and their reason in
    `unreadable`)."""
    scores: dict[str, float] = {}
    for batch in image_batches(keys, detector, settings, report, unreadable):
        with out_of_memory_hint(batch, settings.batch_size_per_gpu):
            scores.update(zip(batch.keys, scorer.score(batch, detector).tolist()))
    scores.update((key, UNREADABLE_SCORE) for key in unreadable)
    return scores


def detect_images(keys: Sequence[str], detector: Detector, settings: Settings, report: Callable[[int], None],
                  unreadable: dict[str, str]) -> dict[str, list]:
    """Box records of every readable key."""
    records: dict[str, list] = {}
    for batch in image_batches(keys, detector, settings, report, unreadable):
        with out_of_memory_hint(batch, settings.batch_size_per_gpu):
            found = detector.predict(batch)
        for key, det in zip(batch.keys, found):
            records[key] = [box_record(xyxy, detector.names[cls], conf)
                            for xyxy, cls, conf in zip(det.xyxy, det.cls, det.conf)]
    return records


def open_scorer(settings: Settings):
    name = settings.mining_algorithm
    return get_scorer(name, **scorer_params(name, settings))


# ---------------------------------------------------------------- shards: score → gather → write

def run_identity(task: str, settings: Settings, models_dir: str) -> dict:
    """Everything a shard's content depends on besides its keys (its fingerprint is made of this)."""
    identity = {"task": task, "img_size": settings.img_size}
    if task == "mining":
        name = settings.mining_algorithm
        identity.update(algorithm=name, params=scorer_params(name, settings))
        if not SCORERS[name].needs_model:
            return identity
    weights = weights_for(settings, models_dir)
    identity.update(weights=file_sha256(weights), backend=settings.backend, conf_thres=settings.conf_thres,
                    iou_thres=settings.iou_thres, max_det=settings.max_det, class_names=list(settings.class_names))
    return identity


def shard_store(task: str, job: Job, settings: Settings) -> tuple[ShardStore, list[Shard]]:
    folder = job.shards_dir or os.path.join(job.work_dir or ".", "shards")
    return ShardStore(folder, task, run_identity(task, settings, job.models_dir)), plan(job.candidates,
                                                                                       settings.shard_size)


def worker_devices(settings: Settings) -> list[str]:
    """One worker per GPU of gpu_id, else cpu_processes CPU workers ('' = CPU)."""
    gpus = gpu_list(settings.gpu_id)
    return [str(g) for g in gpus] if gpus else [""] * settings.cpu_processes


def work_shards(task: str, job: Job, config: Mapping, todo: Sequence[int], rank: int, world: int, device: str,
                report: Callable[[int], None], models: Models | None = None) -> None:
    """Score (or detect) the shards of `todo` that belong to worker `rank` of `world`, each written when done."""
    settings = build_settings(task, config)
    threads = max(1, cpu_threads(settings.cpu_threads) // world)
    settings = build_settings(task, {**config, "gpu_id": device, "cpu_threads": threads})
    store, shards = shard_store(task, job, settings)
    mine_now = shards_of_rank([shards[i] for i in todo], rank, world)
    models = models or Models()
    scorer = open_scorer(settings) if task == "mining" else None
    needs_model = task == "infer" or SCORERS[settings.mining_algorithm].needs_model
    detector = models.detector(settings, job.models_dir) if needs_model and mine_now else None
    finished = 0
    for shard in mine_now:
        unreadable: dict[str, str] = {}
        report_shard = lambda done, base=finished: report(base + done)  # noqa: E731
        if task == "mining":
            store.write_scores(shard, score_images(shard.keys, scorer, detector, settings, report_shard, unreadable),
                               unreadable)
        else:
            store.write_records(shard, detect_images(shard.keys, detector, settings, report_shard, unreadable),
                                unreadable)
        finished += len(shard.keys)
        report(finished)


def score_shards(task: str, job: Job, config: Mapping, progress: Progress, models: Models
                 ) -> tuple[ShardStore, list[Shard]] | None:
    """Every shard of the job complete (reusing those an earlier run finished), on every worker the settings
    ask for. Returns the store and shards to merge, or None on a rank of an outer torchrun that does not merge."""
    settings = build_settings(task, config)
    store, shards = shard_store(task, job, settings)
    todo = [shard.index for shard in shards if not store.complete(shard)]
    done_before = sum(len(s.keys) for s in shards) - sum(len(shards[i].keys) for i in todo)
    if done_before:
        log.info("%s: %d of %d shards are complete from an earlier run with the same settings; scoring the other %d",
                 task, len(shards) - len(todo), len(shards), len(todo))
    total = len(job.candidates)
    outer = outer_rank()
    if outer is not None:  # one rank of a torchrun job over a shared folder
        rank, world = outer
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        devices = worker_devices(settings)
        work_shards(task, job, config, todo, rank, world, devices[local % len(devices)] if devices[0] else "",
                    lambda done: progress((done_before + done) / max(1, total)), models)
        if rank != 0:
            return None
        wait_for(lambda: sum(len(s.keys) for s in shards if store.complete(s)), total, progress)
    elif todo:
        devices = worker_devices(settings)
        run = work_shards if len(devices) > 1 else functools.partial(work_shards, models=models)
        run_workers(run, (task, job, config, todo), devices, store.folder, done_before, total, progress)
    return store, shards


def ranked_rows(store: ShardStore, shards: Sequence[Shard], total: int) -> Iterator[tuple[str, float]]:
    """The merged ranking, checked: all of it unreadable is NoReadableImages (raised before the writer renames)."""
    unreadable, first = 0, ""
    for key, score, reason in store.merged_scores(shards):
        if reason:
            unreadable, first = unreadable + 1, first or reason
        yield key, score
    if total and unreadable == total:
        raise NoReadableImages(f"none of the {total} images could be read; first: {first}")


def named_records(store: ShardStore, shards: Sequence[Shard], names: Mapping[str, str]
                  ) -> Iterator[tuple[str, list]]:
    unreadable, first = 0, ""
    for key, record, reason in store.records(shards):
        if reason:
            unreadable, first = unreadable + 1, first or reason
        yield names[key], record or []
    if names and unreadable == len(names):
        raise NoReadableImages(f"none of the {len(names)} images could be read; first: {first}")


# ---------------------------------------------------------------- the tasks

def mine(job: Job, config: Mapping, progress: Progress, models: Models) -> str | None:
    """Score every candidate, write result.tsv (best first); returns its path (None on a non-merging rank)."""
    start = time.monotonic()
    merged = score_shards("mining", job, config, progress, models)
    if merged is None:
        return None
    store, shards = merged
    write_ranked(job.mining_result, ranked_rows(store, shards, len(job.candidates)))
    store.remove(shards)
    clear(store.folder)
    elapsed = time.monotonic() - start
    log.info("mined %d images with %s in %.1f s (%.1f images/s)", len(job.candidates),
             build_settings("mining", config).mining_algorithm, elapsed, len(job.candidates) / max(elapsed, 1e-9))
    return job.mining_result


def result_names(job: Job) -> dict[str, str]:
    """The infer-result key of every candidate: job.names when given, else its basename, which must be unique."""
    names = dict(zip(job.candidates, job.names)) if job.names else {k: os.path.basename(k) for k in job.candidates}
    seen: dict[str, str] = {}
    for key, name in names.items():
        if name in seen:
            raise DatasetError(f"candidates {seen[name]} and {key} share the name {name!r} that infer-result.json "
                               "keys images by; rename one of them")
        seen[name] = key
    return names


def infer(job: Job, config: Mapping, progress: Progress, models: Models) -> str | None:
    """Boxes of every candidate (unreadable: none), written to infer-result.json in index order."""
    names = result_names(job)
    merged = score_shards("infer", job, config, progress, models)
    if merged is None:
        return None
    store, shards = merged
    write_infer_result(job.infer_result, named_records(store, shards, names), job.infer_list_key)
    store.remove(shards)
    clear(store.folder)
    return job.infer_result


def train(job: Job, config: Mapping, progress: Progress, models: Models) -> None:
    from executor.training import run_training  # imports Ultralytics' trainer: only when training

    run_training(job, build_settings("training", config), progress)


TASKS = {"training": train, "mining": mine, "infer": infer}


def run(tasks: Sequence[str], job: Job, config: Mapping, progress: Progress = lambda fraction: None) -> dict:
    """Run `tasks` (names of TASKS, in order) on one job; each gets an equal share of the progress range.
    Returns each task's result by name."""
    unknown = [name for name in tasks if name not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown tasks {unknown}; expected some of {', '.join(TASKS)}")
    models, results = Models(), {}
    for number, name in enumerate(tasks):
        lo, hi = number / len(tasks), (number + 1) / len(tasks)
        results[name] = TASKS[name](job, config, span(progress, lo, hi), models)
    progress(1.0)
    return results
