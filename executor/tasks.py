"""The tasks behind one registry: platform mode and the local CLI both call `run` with plain arguments.

Mining is score → gather → write: `score_images` yields one (key, score) per candidate as batches finish,
`gather` collects them and checks that every candidate has exactly one score, and the result is written
once, atomically. Inference is the same loop with the detector's boxes as its records.
"""
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

from executor.config import Settings, build_settings, resolve_weights
from executor.errors import NoReadableImages
from executor.images import letterbox
from executor.loop import Unreadable, batches, out_of_memory_hint
from executor.model import Detector, load_detector
from executor.monitor import Progress, span
from executor.writers import UNREADABLE_SCORE, box_record, write_infer_result, write_mining_result
from mining import SCORERS, get_scorer, scorer_params

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
                                 class_names=settings.class_names, pin_memory=settings.pin_memory, **post)
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

def image_batches(keys: Sequence[str], detector: Detector | None, settings: Settings, progress: Progress,
                  unreadable: list[Unreadable]) -> Iterator:
    """The loop's batches (the unreadable images appended to `unreadable`), with progress counted in images."""
    prepare = detector.letterbox if detector else (lambda image: letterbox(image, settings.img_size))
    done = 0
    for item in batches(keys, prepare, settings.batch_size_per_gpu, settings.num_workers_per_gpu):
        if isinstance(item, Unreadable):
            unreadable.append(item)
            done += 1
        else:
            yield item
            done += len(item.keys)
        progress(done / len(keys))


def fail_if_all_unreadable(keys: Sequence[str], unreadable: Sequence[Unreadable]) -> None:
    if keys and len(unreadable) == len(keys):
        raise NoReadableImages(f"none of the {len(keys)} images could be read; first: {unreadable[0].reason}")


def score_images(keys: Sequence[str], scorer, detector: Detector | None, settings: Settings,
                 progress: Progress) -> Iterator[tuple[str, float]]:
    """(key, score) of every key as its batch finishes; unreadable images get the UNREADABLE_SCORE sentinel
    (all of them unreadable: NoReadableImages)."""
    unreadable: list[Unreadable] = []
    for item in image_batches(keys, detector, settings, progress, unreadable):
        with out_of_memory_hint(item, settings.batch_size_per_gpu):
            scores = scorer.score(item, detector)
        yield from zip(item.keys, scores.tolist())
    fail_if_all_unreadable(keys, unreadable)
    yield from ((u.key, UNREADABLE_SCORE) for u in unreadable)


def gather(keys: Sequence[str], scored: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """(key, score) in index order, checked: every key scored exactly once."""
    scores = {}
    for key, score in scored:
        if key in scores:
            raise RuntimeError(f"{key} was scored twice")
        scores[key] = score
    missing = [key for key in keys if key not in scores]
    if missing or len(scores) != len(keys):
        raise RuntimeError(f"{len(missing)} of {len(keys)} candidates have no score (first: {missing[:1]})")
    return [(key, scores[key]) for key in keys]


def open_scorer(settings: Settings):
    name = settings.mining_algorithm
    return get_scorer(name, **scorer_params(name, settings))


# ---------------------------------------------------------------- the tasks

def mine(job: Job, config: Mapping, progress: Progress, models: Models) -> list[tuple[str, float]]:
    """Score every candidate, write result.tsv (best first); returns (key, score) in index order."""
    settings = build_settings("mining", config)
    scorer = open_scorer(settings)
    detector = models.detector(settings, job.models_dir) if SCORERS[settings.mining_algorithm].needs_model else None
    start = time.monotonic()
    scored = gather(job.candidates, score_images(job.candidates, scorer, detector, settings, progress))
    elapsed = time.monotonic() - start
    log.info("mined %d images with %s in %.1f s (%.1f images/s), %d unreadable", len(scored),
             settings.mining_algorithm, elapsed, len(scored) / max(elapsed, 1e-9),
             sum(1 for _, score in scored if score == UNREADABLE_SCORE))
    write_mining_result(job.mining_result, scored)
    return scored


def infer(job: Job, config: Mapping, progress: Progress, models: Models) -> dict[str, list]:
    """Boxes of every candidate (by basename, in index order; unreadable: none), written to infer-result.json."""
    settings = build_settings("infer", config)
    detector = models.detector(settings, job.models_dir)
    records: dict[str, list] = {os.path.basename(key): [] for key in job.candidates}
    unreadable: list[Unreadable] = []
    for item in image_batches(job.candidates, detector, settings, progress, unreadable):
        with out_of_memory_hint(item, settings.batch_size_per_gpu):
            found = detector.predict(item)
        for key, det in zip(item.keys, found):
            records[os.path.basename(key)] = [box_record(xyxy, detector.names[cls], conf)
                                              for xyxy, cls, conf in zip(det.xyxy, det.cls, det.conf)]
    fail_if_all_unreadable(job.candidates, unreadable)
    write_infer_result(job.infer_result, records, job.infer_list_key)
    return records


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
