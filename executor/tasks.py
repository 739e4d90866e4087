"""The tasks behind one registry: platform mode and the local CLI both call `run` with plain arguments.

Mining is score → gather → select → write → report: workers score shards of the candidate list
(executor/shards.py, executor/workers.py), each shard written when done, with a side file of what selection and
the report need (embeddings, predicted boxes) taken from the same forward; the gather is a streamed merge of
the shards, checked; `selection: diverse` reorders it (mining/selection.py, on the shortlist's embeddings
only); the result is written once, atomically; then the report (executor/report.py), whose failure never fails
the task. Inference is the same with the detector's boxes as records.
"""
import dataclasses
import datetime
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from executor.config import SEGMENTATION, TASK_OF_OBJECT_TYPE, Settings, build_settings, resolve_weights
from executor.errors import DatasetError, Interrupted
from executor.gpu_decode import device_letterbox
from executor.images import letterbox
from executor.loop import Unreadable, batches, out_of_memory_hint
from executor.model import EMBEDDING_VERSION, Detector, load_detector, visible_gpus
from executor.monitor import Progress, span
from executor.runtime import cpu_threads
from executor.shards import Shard, ShardStore, auto_shard_size, file_sha256, named_records, plan, shards_of_rank
from executor.workers import clear, outer_rank, run_workers, wait_for
from executor.writers import (UNREADABLE_SCORE, box_record, instance_record, write_infer_result,
                              write_instances_result)
from mining import SCORERS, get_scorer, scorer_params
from mining.base import Batch
from mining.duplicates import HASH_VERSION, THUMB_VERSION, photo_hash, thumbnail

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
    names: Sequence[str] = ()               # result key per candidate: infer-result.json's (default: unique
    #                                         basenames) and the key of random's and CALD's per-image seed (default:
    #                                         the candidate path)
    shards_dir: str = ""                    # finished shards, shared by every worker (default: work_dir/shards)
    mining_scores: str = ""                 # selection diverse: path<TAB>raw score (default: beside mining_result)
    report_html: str = ""                   # the mining report (default: mining-report.html beside mining_result;
    #                                         its numbers go to the same name with .json)
    labeled: Sequence[str] = ()             # selection diverse: already-labelled images (their near-copies go down)
    infer_unreadable_none: bool = False     # local callers: an unreadable image's boxes are null in infer_result,
    #                                         not [] (the platform's form: no boxes)
    selected: int = 0                       # start.py mine --topk: how many the user selects (the report's cut and
    #                                         its thumbnails, at most report_top_n); 0: not told (the platform's top_k)
    keep_shards: bool = False               # leave the finished shards after the merge, so a rerun with other
    #                                         selection or report settings re-selects without scoring again


MINING_SCORES_NAME = "mining-scores.tsv"
REPORT_NAME = "mining-report.html"


def beside_result(job: Job, name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(job.mining_result)), name)


def mining_scores_path(job: Job) -> str:
    return job.mining_scores or beside_result(job, MINING_SCORES_NAME)


def report_paths(job: Job) -> tuple[str, str]:
    html_path = job.report_html or beside_result(job, REPORT_NAME)
    return html_path, os.path.splitext(html_path)[0] + ".json"


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
                                 threads=settings.cpu_threads, task=TASK_OF_OBJECT_TYPE[settings.object_type], **post)
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
                  unreadable: dict[str, str], names: Sequence[str] = ()) -> Iterator[Batch]:
    """The loop's batches (unreadable images go to `unreadable` with their reason); report(images done).
    `names`: the result key of each of `keys`, handed to the scorer as Batch.names."""
    name_of = dict(zip(keys, names))
    prepare = detector.letterbox if detector else (lambda image: letterbox(image, settings.img_size))
    on_device = device_letterbox(settings.get("gpu_decode", "auto"), detector)  # None: OpenCV in threads
    overlap = detector is not None and not detector.uses_cpu_cores  # the model on a GPU: decode meanwhile
    done = 0
    for item in batches(keys, prepare, settings.batch_size_per_gpu, settings.num_workers_per_gpu, on_device,
                        overlap):
        if isinstance(item, Unreadable):
            unreadable[item.key] = item.reason
            done += 1
        else:
            if name_of:
                item.names = [name_of[key] for key in item.keys]
            yield item
            done += len(item.keys)
        report(done)


class Recorder:
    """The detector as a scorer sees it, keeping what `predict` returned for the current batch, so inference
    can take its boxes from the scorer's own forward instead of running another."""

    def __init__(self, detector: Detector):
        self.detector, self.calls = detector, []

    def __getattr__(self, name):
        return getattr(self.detector, name)

    def predict(self, batch: Batch, conf_thres: float | None = None, capped: bool = True):
        found = self.detector.predict(batch, conf_thres, capped)
        self.calls.append((batch, self.detector.conf_thres if conf_thres is None else conf_thres, capped, found))
        return found

    def reusable(self, batch: Batch, infer: Detector):
        """`infer`'s detections of `batch` from a recorded call, when that call kept a superset of them: the same
        model and NMS, a threshold no higher, no cut below infer's max_det (NMS keeps a box above the higher
        threshold iff it keeps it above the lower one: only higher boxes suppress it)."""
        if self.detector.weights != infer.weights or self.detector.iou_thres != infer.iou_thres or infer.multi_label:
            return None
        for seen, conf, capped, found in self.calls:
            if seen is batch and conf <= infer.conf_thres and (not capped or self.detector.max_det >= infer.max_det):
                return [restrict(det, infer.conf_thres, infer.max_det) for det in found]
        return None


def restrict(det, conf_thres: float, max_det: int):
    return det.subset(np.where(det.conf > conf_thres)[0][:max_det])


def infer_record(det, box, names: Sequence[str]):
    """What infer-result.json says of one image: its box records (detection), or its size (from its letterbox
    map `box`) and instances with their masks (segmentation)."""
    if det.masks is None:
        return [box_record(xyxy, names[cls], conf) for xyxy, cls, conf in zip(det.xyxy, det.cls, det.conf)]
    instances = [instance_record(xyxy, names[cls], conf, rle)
                 for xyxy, cls, conf, rle in zip(det.xyxy, det.cls, det.conf, det.masks.rles())]
    return {"height": int(box.height), "width": int(box.width), "instances": instances}


@dataclass
class Pass:
    """What one worker needs to score and/or detect a shard in one pass over its images."""
    settings: dict                      # task → Settings ("mining" and/or "infer")
    scorer: object = None
    mining_detector: Detector | None = None
    infer_detector: Detector | None = None
    side: dict | None = None            # what the mining shards' side files hold (side_spec)
    tap_detector: Detector | None = None  # whose forward the side data come from (mining's own model)
    forward_seconds: float = 0.0        # forwards run for embeddings only (an algorithm that runs none)

    @property
    def loop_settings(self) -> Settings:  # batch size, decoding threads, img_size of the pass
        return self.settings.get("mining") or self.settings["infer"]

    @property
    def geometry(self) -> Detector | None:
        return self.mining_detector or self.infer_detector

    @property
    def infer_shares_forward(self) -> bool:
        """Infer's model is the scorer's (one loaded network, one tap), so infer can read the boxes of the
        scorer's own forward (ALDD's, whose maps alone would skip the box branch) instead of running another."""
        return (self.infer_detector is not None and self.mining_detector is not None
                and self.infer_detector.tap is self.mining_detector.tap)

    def run(self, keys: Sequence[str], report: Callable[[int], None], unreadable: dict[str, str],
            names: Sequence[str] = ()) -> dict:
        """{"mining": scores, "infer": box records} of `keys` (the tasks of this pass; `names`: their result keys),
        images decoded once."""
        scores: dict[str, float] = {}
        records: dict[str, list] = {}
        side: dict[str, tuple] = {}
        batch_size = self.loop_settings.batch_size_per_gpu
        tapped = self.tap_detector if self.side else None
        for batch in image_batches(keys, self.geometry, self.loop_settings, report, unreadable, names):
            with out_of_memory_hint(batch, batch_size):
                recorder = Recorder(self.mining_detector) if self.mining_detector else None
                # the scorer's forward of the batch keeps what the side data and infer read of it
                armed = [d.tap for d in (tapped, self.infer_detector if self.infer_shares_forward else None) if d]
                for tap in armed:
                    tap.arm(batch)
                if self.scorer is not None:
                    scores.update(zip(batch.keys, self.scorer.score(batch, recorder).tolist()))
                if tapped is not None:
                    side.update(self.side_data(batch, tapped, recorder))
                if self.infer_detector is not None:
                    found = (recorder and recorder.reusable(batch, self.infer_detector)) or \
                        self.infer_detector.tapped_detections(batch)
                    names = self.infer_detector.names
                    records.update((key, infer_record(det, box, names))
                                   for key, det, box in zip(batch.keys, found, batch.boxes))
                for tap in armed:  # keep no output of this batch alive into the next
                    tap.clear()
        scores.update((key, UNREADABLE_SCORE) for key in unreadable)
        return {"mining": scores, "infer": records, "side": side}

    def side_data(self, batch: Batch, detector: Detector, recorder: "Recorder | None") -> dict[str, tuple]:
        """key → (embedding or None, detections at mining's conf_thres/max_det or None, (photo hash, thumbnail) or
        None), from
        the forward the scorer just ran (a forward of its own only for an algorithm that runs none, such as
        random) and the decoded originals."""
        started, pooled = time.perf_counter(), detector.tap.seconds
        forwarded = self.side.get("embeddings") and detector.tap.embeddings is None  # nothing ran: forward now
        embeddings = detector.embed(batch) if self.side.get("embeddings") else None
        if forwarded:
            self.forward_seconds += time.perf_counter() - started - (detector.tap.seconds - pooled)
        found = None
        if self.side.get("boxes") or self.side.get("class_counts"):
            found = (recorder and recorder.reusable(batch, detector)) or detector.tapped_detections(batch)
        if found is not None:  # the side data outlive the batch: keep no prototypes alive
            found = [dataclasses.replace(det, masks=None) for det in found]
        photos = [(photo_hash(image), thumbnail(image)) for image in batch.images] if self.side.get("hashes") else None
        return {key: (None if embeddings is None else embeddings[i], None if found is None else found[i],
                      None if photos is None else photos[i])
                for i, key in enumerate(batch.keys)}


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


def side_spec(task: str, settings: Settings, models_dir: str) -> dict | None:
    """What a mining shard's side file must hold for this run (None: no side file): embeddings for selection
    diverse, per-image predicted class counts for class_balance, predicted boxes for the report (whenever a
    model runs). Part of the side file's fingerprint, never of the score file's: selection and the report
    never change the scores."""
    if task != "mining":
        return None
    diverse = settings.selection == "diverse"
    with_model = SCORERS[settings.mining_algorithm].needs_model or diverse
    spec = {"embeddings": EMBEDDING_VERSION if diverse else "",
            "hashes": f"{HASH_VERSION}+{THUMB_VERSION}" if diverse else "",
            "class_counts": diverse and settings.class_balance,
            "boxes": bool(settings.report and with_model)}
    if not any(spec.values()):
        return None
    if not SCORERS[settings.mining_algorithm].needs_model:  # the scores' identity does not name the model
        spec["model"] = run_identity("infer", settings, models_dir)
    return spec


def shards_folder(job: Job) -> str:
    return job.shards_dir or os.path.join(job.work_dir or ".", "shards")


def job_shards(job: Job, shard_size: int) -> list[Shard]:
    """The job's candidates cut into shards, each with its result keys."""
    if job.names and len(job.names) != len(job.candidates):
        raise ValueError(f"Job.names holds {len(job.names)} result keys for {len(job.candidates)} candidates")
    return plan(job.candidates, shard_size, job.names)


def shard_store(task: str, job: Job, settings: Settings) -> tuple[ShardStore, list[Shard]]:
    return (ShardStore(shards_folder(job), task, run_identity(task, settings, job.models_dir),
                       side_spec(task, settings, job.models_dir)), job_shards(job, settings.shard_size))


def worker_devices(settings: Settings) -> list[str]:
    """One worker per GPU of gpu_id (each checked before any worker starts), else cpu_processes CPU workers
    ('' = CPU)."""
    gpus = visible_gpus(settings.gpu_id)
    return [str(g) for g in gpus] if gpus else [""] * settings.cpu_processes


def with_shard_size(task: str, job: Job, config: Mapping) -> Mapping:
    """`config` with shard_size 0 (auto) made the size for this pool and number of workers (the ranks of an outer
    torchrun, else one per GPU of gpu_id or cpu_processes): decided once before any worker starts, and the same
    on every rank and on a rerun."""
    settings = build_settings(task, config)
    if settings.shard_size:
        return config
    outer = outer_rank()
    workers = outer[1] if outer else len(worker_devices(settings))
    return {**config, "shard_size": auto_shard_size(len(job.candidates), workers)}


def work_shards(tasks: Sequence[str], job: Job, config: Mapping, todo: Sequence[int], rank: int, world: int,
                device: str, report: Callable[[int], None], models: Models | None = None) -> None:
    """Score and/or detect (`tasks`) the shards of `todo` that belong to worker `rank` of `world`, in one pass
    over each shard's images; each shard's files written when it is done."""
    threads = max(1, cpu_threads(build_settings(tasks[0], config).cpu_threads) // world)
    settings = {task: build_settings(task, {**config, "gpu_id": device, "cpu_threads": threads}) for task in tasks}
    stores = {task: shard_store(task, job, settings[task])[0] for task in tasks}
    shards = job_shards(job, settings[tasks[0]].shard_size)
    mine_now = shards_of_rank([shards[i] for i in todo], rank, world)
    if not mine_now:
        return
    models = models or Models()
    work = Pass(settings)
    if "mining" in tasks:
        work.scorer = open_scorer(settings["mining"])
        if SCORERS[settings["mining"].mining_algorithm].needs_model:
            work.mining_detector = models.detector(settings["mining"], job.models_dir)
    if "infer" in tasks:
        work.infer_detector = models.detector(settings["infer"], job.models_dir)
    if "mining" in tasks and stores["mining"].side is not None:
        store = stores["mining"]
        work.side = store.side
        work.tap_detector = work.mining_detector or models.detector(settings["mining"], job.models_dir)
        if store.side.get("embeddings"):
            work.tap_detector.enable_embeddings()
        store.embedding_dim, store.class_names = work.tap_detector.embedding_dim, list(work.tap_detector.names)
    finished = 0
    started = time.perf_counter()
    for shard in mine_now:
        unreadable: dict[str, str] = {}
        found = work.run(shard.keys, lambda done, base=finished: report(base + done), unreadable, shard.names)
        if "mining" in tasks:
            stores["mining"].write_scores(shard, found["mining"], unreadable, found["side"])
        if "infer" in tasks:
            stores["infer"].write_records(shard, found["infer"], unreadable)
        finished += len(shard.keys)
        report(finished)
    if work.side and work.side.get("embeddings"):
        elapsed, pooled = time.perf_counter() - started, work.tap_detector.tap.seconds
        log.info("embeddings: pooling %.2f s (%.1f%% of %.1f s of scoring), forwards for embeddings only %.2f s",
                 pooled, 100 * pooled / max(elapsed, 1e-9), elapsed, work.forward_seconds)


def score_shards(tasks: Sequence[str], job: Job, config: Mapping, progress: Progress, models: Models
                 ) -> tuple[dict[str, ShardStore], list[Shard], int] | None:
    """Every shard of the job complete for every task of `tasks` (reusing those an earlier run finished), on
    every worker the settings ask for. Returns the stores, the shards to merge and how many images this run
    scored (the rest were reused), or None on a rank of an outer torchrun that does not merge. A Ctrl-C raises
    Interrupted, saying what is kept."""
    stores, shards = {}, []
    for task in tasks:
        stores[task], shards = shard_store(task, job, build_settings(task, config))
    todo = [shard.index for shard in shards if not all(store.complete(shard) for store in stores.values())]
    done_before = sum(len(s.keys) for s in shards) - sum(len(shards[i].keys) for i in todo)
    if done_before:
        log.info("%s: %d of %d shards are complete from an earlier run with the same settings; scoring the other %d",
                 "+".join(tasks), len(shards) - len(todo), len(shards), len(todo))
    total = len(job.candidates)
    devices = worker_devices(build_settings(tasks[0], config))
    folder = next(iter(stores.values())).folder
    outer = outer_rank()
    try:
        if outer is not None:  # one rank of a torchrun job over a shared folder
            rank, world = outer
            local = int(os.environ.get("LOCAL_RANK", "0") or 0)
            work_shards(tasks, job, config, todo, rank, world, devices[local % len(devices)],
                        lambda done: progress((done_before + done) / max(1, total)), models)
            if rank != 0:
                return None
            wait_for(lambda: sum(len(s.keys) for s in shards if all(st.complete(s) for st in stores.values())),
                     total, progress)
        elif todo:
            run = work_shards if len(devices) > 1 else functools.partial(work_shards, models=models)
            run_workers(run, (tuple(tasks), job, config, todo), devices, folder, done_before, total, progress)
    except KeyboardInterrupt:
        clear(folder)  # and the folder itself when no shard was finished
        raise interrupted(stores, shards) from None
    return stores, shards, total - done_before


def interrupted(stores: Mapping[str, ShardStore], shards: Sequence[Shard]) -> Interrupted:
    """What a Ctrl-C leaves for a rerun: the shards complete for every task."""
    kept = [shard for shard in shards if all(store.complete(shard) for store in stores.values())]
    return Interrupted(next(iter(stores.values())).folder, len(kept), len(shards), sum(len(s.keys) for s in kept))


def one_pass(job: Job, config: Mapping) -> bool:
    """Mining and infer can share one pass over the images: the same network input, and the same model
    whenever mining uses one."""
    mining, infer = build_settings("mining", config), build_settings("infer", config)
    if (mining.img_size, mining.batch_size_per_gpu, mining.shard_size) != (infer.img_size, infer.batch_size_per_gpu,
                                                                           infer.shard_size):
        return False
    if not SCORERS[mining.mining_algorithm].needs_model:
        return True
    return weights_for(mining, job.models_dir) == weights_for(infer, job.models_dir) and \
        mining.backend == infer.backend


# ---------------------------------------------------------------- the tasks

def write_infer(job: Job, store: ShardStore, count: int, context) -> str:
    """infer-result.json: ymir's detection form, or for a segmentation model the COCO result (ymir-protocol §5.4)
    whose categories are the model's classes (the model is already loaded unless other processes scored)."""
    names = result_names(job)
    if build_settings("infer", context.config).object_type == SEGMENTATION:
        write_instances_result(job.infer_result, lambda: named_records(store, count, names),
                               model_class_names(job, context.config, context.models))
    else:
        write_infer_result(job.infer_result, named_records(store, count, names, job.infer_unreadable_none),
                           job.infer_list_key)
    return job.infer_result


def model_class_names(job: Job, config: Mapping, models: Models) -> list[str]:
    """The infer model's class names in model order (config class_names when given), from the model loaded for
    the run (loaded here when other processes scored)."""
    return list(models.detector(build_settings("infer", config), job.models_dir).names)


def scan(tasks: Sequence[str], job: Job, config: Mapping, progress: Progress, models: Models) -> dict:
    """One pass over the candidates for `tasks` (mining and/or infer): shards, then each result written."""
    if "infer" in tasks:
        result_names(job)  # a name clash fails before any image is read
    start = time.monotonic()
    started_at = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    config = with_shard_size(tasks[0], job, config)
    try:
        merged = score_shards(tasks, job, config, progress, models)
    except BaseException:
        clear(shards_folder(job))  # finished shards stay for a rerun; a folder left empty goes
        raise
    if merged is None:
        return {task: None for task in tasks}
    from executor.ranking import MiningContext, write_mining  # gather → select → write → report

    stores, shards, scored = merged
    count = len(shards)
    context = MiningContext(config, models, start, started_at)
    writers = {"mining": write_mining, "infer": write_infer}
    try:
        written = {task: writers[task](job, stores[task], count, context) for task in tasks}
    except KeyboardInterrupt:
        raise interrupted(stores, shards) from None
    if not job.keep_shards:
        for store in stores.values():
            store.remove(count)
    clear(shards_folder(job))
    log.info("%s", throughput(tasks, len(job.candidates), scored, time.monotonic() - start))
    return written


def throughput(tasks: Sequence[str], total: int, scored: int, seconds: float) -> str:
    """The line that ends a run: its rate counts the images this run scored, not shards reused from an earlier
    run."""
    reused = total - scored
    return (f"{' + '.join(tasks)} of {total} images in {seconds:.1f} s ({scored / max(seconds, 1e-9):.1f} images/s"
            + (f": {scored} scored in this run, {reused} reused from an earlier run's shards)" if reused else ")"))


def mine(job: Job, config: Mapping, progress: Progress, models: Models) -> str | None:
    """Score every candidate, write result.tsv (best first); returns its path (None on a non-merging rank)."""
    return scan(["mining"], job, config, progress, models)["mining"]


def infer(job: Job, config: Mapping, progress: Progress, models: Models) -> str | None:
    """Boxes of every candidate (unreadable: none), written to infer-result.json in index order."""
    return scan(["infer"], job, config, progress, models)["infer"]


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


def train(job: Job, config: Mapping, progress: Progress, models: Models) -> None:
    from executor.training import run_training  # imports Ultralytics' trainer: only when training

    run_training(job, build_settings("training", config), progress)


TASKS = {"training": train, "mining": mine, "infer": infer}


def run(tasks: Sequence[str], job: Job, config: Mapping, progress: Progress = lambda fraction: None,
        models: Models | None = None) -> dict:
    """Run `tasks` (names of TASKS, in order) on one job; each gets an equal share of the progress range, but
    mining and infer share one pass over the images whenever they can. Returns each task's result by name.
    `models`: where the run keeps the models it loads (a caller's, to ask them afterwards)."""
    unknown = [name for name in tasks if name not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown tasks {unknown}; expected some of {', '.join(TASKS)}")
    models = models if models is not None else Models()
    if list(tasks) == ["mining", "infer"] and one_pass(job, config):
        results = scan(tasks, job, config, progress, models)
    else:
        results = {}
        for number, name in enumerate(tasks):
            lo, hi = number / len(tasks), (number + 1) / len(tasks)
            results[name] = TASKS[name](job, config, span(progress, lo, hi), models)
    progress(1.0)
    return results
