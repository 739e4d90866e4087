"""The run plan: what one run does, decided once at the edge (start.py, the command line, the API, the simulator)
from the config, the job and the launcher's ranks. Below the edge the pipeline reads the plan, never a config dict.
"""

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from executor.engine.detector import augment_refused
from executor.engine.device import batch_size, visible_gpus
from executor.engine.images import round_up
from executor.engine.loading import uses_onnx
from executor.engine.onnx_detector import onnx_augment_refused
from executor.errors import ConfigError, ModelError
from executor.pipeline.job import Job
from executor.pipeline.shards import auto_shard_size
from executor.protocol.env import resolve_weights
from executor.protocol.settings import Settings, build_settings
from executor.runtime import cpu_threads
from executor.shared import SEGMENTATION
from mining import SCORERS, reads_error_model
from mining.errors import ErrorModel, errors_file, read_error_model

log = logging.getLogger(__name__)

KNOWN_TASKS = ("training", "mining", "infer")
SCANS = ("mining", "infer")  # the tasks that pass over candidate images


@dataclass(frozen=True)
class Plan:
    """One run. `settings`: each task's typed settings (shard_size 0 already made the size for this pool,
    cpu_threads the count of the whole run);
    `weights`: the weights file each scanning task loads ('' where it runs no model: random mining without
    selection diverse); `devices`: one worker each, a GPU number or '' for a CPU process; `threads`: the CPU
    threads of the whole run (each of n workers gets threads // n); `error_model`: the mining weights' fitted
    error model (`<stem>.errors.json` beside them) when the algorithm reads one, '' for the prior."""
    tasks: tuple[str, ...]
    job: Job
    settings: Mapping[str, Settings]
    weights: Mapping[str, str]
    devices: tuple[str, ...] = ("",)
    threads: int = 1
    error_model: str = ""

    def needs_model(self, task: str) -> bool:
        return bool(self.weights.get(task))

    @property
    def one_pass(self) -> bool:
        """Mining and infer share one pass over the images: the same network input and shards, and the same
        model whenever mining runs one."""
        if set(self.tasks) != set(SCANS):
            return False
        mining, infer = self.settings["mining"], self.settings["infer"]
        keys = ("img_size", "batch_size_per_gpu", "shard_size")
        if any(mining[key] != infer[key] for key in keys):
            return False
        return not self.needs_model("mining") or (self.weights["mining"] == self.weights["infer"]
                                                  and mining.backend == infer.backend)

    def only(self, *tasks: str) -> "Plan":
        """This plan for some of its tasks (the others' settings dropped)."""
        return dataclasses.replace(self, tasks=tuple(tasks))

    @property
    def loop(self) -> Settings:
        """The settings of a pass over the images (batch size, decoding threads, img_size): mining's, else infer's."""
        return self.settings["mining"] if "mining" in self.tasks else self.settings[self.tasks[0]]

    def on_worker(self, device: str, world: int) -> "Plan":
        """The plan as worker `device` of `world` runs it: its own GPU (or the CPU) and its share of the threads."""
        threads = max(1, self.threads // world)
        settings = {task: value.replace(gpu_id=device, cpu_threads=threads) for task, value in self.settings.items()}
        return dataclasses.replace(self, settings=settings, devices=(device,), threads=threads)


def make_plan(tasks: Sequence[str], job: Job, config: Mapping, templates_dir: str | None = None) -> Plan:
    """The plan of `tasks` (names of KNOWN_TASKS, in order) on `job`: settings from `config` over the templates
    of `templates_dir` (default: the active ones), every weights file resolved and every GPU checked before any
    image is read."""
    unknown = [name for name in tasks if name not in KNOWN_TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown tasks {unknown}; expected some of {', '.join(KNOWN_TASKS)}")
    settings = {task: build_settings(task, config, templates_dir) for task in tasks}
    if "training" in settings and not settings["training"].batch_size_per_gpu:
        raise ConfigError("config key 'batch_size_per_gpu': 0 (auto) is for mining and infer; training needs a "
                          "batch size (images per batch on each GPU, e.g. 16)")
    scans = [task for task in tasks if task in SCANS]
    threads = cpu_threads(settings[scans[0]].cpu_threads if scans else 0)  # the one reading of OMP_NUM_THREADS
    settings = {task: value.replace(cpu_threads=threads) for task, value in settings.items()}
    if not scans:
        return Plan(tuple(tasks), job, settings, {}, threads=threads)
    first = settings[scans[0]]
    gpus = visible_gpus(first.gpu_id)
    settings.update({task: settings[task].replace(batch_size_per_gpu=batch_size(settings[task].batch_size_per_gpu,
                                                                                bool(gpus))) for task in scans})
    devices = tuple(str(g) for g in gpus) if gpus else ("",) * first.cpu_processes
    if not first.shard_size:  # auto: decided once, the same on every rank and on a rerun
        workers = job.outer[1] if job.outer else len(devices)
        size = auto_shard_size(len(job.candidates), workers)
        settings.update({task: settings[task].replace(shard_size=size) for task in scans})
    weights = {task: weights_for(settings[task], job.models_dir) if model_needed(task, settings[task]) else ""
               for task in scans}
    if "infer" in scans:
        check_augment(settings["infer"], weights["infer"])
    errors = error_model_for(settings["mining"], weights["mining"]) if "mining" in scans else ""
    return Plan(tuple(tasks), job, settings, weights, devices, threads, errors)


def check_augment(settings: Settings, weights: str) -> None:
    """infer's `augment: true` with a model that has no augmented forward (segmentation, ONNX) is a ConfigError
    before any image is read (a PyTorch model with another head than Detect is refused once loaded)."""
    if not settings.get("augment"):
        return
    if settings.object_type == SEGMENTATION:
        raise augment_refused("this image serves segmentation models (Ultralytics augments detection only)")
    if uses_onnx(weights, settings.backend):
        raise onnx_augment_refused(weights)


def error_model_for(settings: Settings, weights: str) -> str:
    """The fitted error model mining reads ('' for the prior, or when the algorithm reads none), checked now and
    named in the log: what mining uses is never a guess."""
    if not weights or not reads_error_model(settings.mining_algorithm):
        return ""
    path = errors_file(weights)
    if settings.errors_prior:
        log.info("%s: errors_prior is true: %s", settings.mining_algorithm, ErrorModel().describe())
        return ""
    if not os.path.isfile(path):
        log.info("%s: no error model beside the weights (%s): %s", settings.mining_algorithm,
                 os.path.basename(path), ErrorModel().describe())
        return ""
    model = load_error_model(path)
    log.info("%s: error model %s, %s", settings.mining_algorithm, path, model.describe())
    fitted_size = model.fitted_on.get("img_size")
    if fitted_size and round_up(settings.img_size, 32) != fitted_size:
        log.warning("%s: the error model was fitted at img_size %s, mining runs at %d: its features (box counts "
                    "and scores) shift with the input size; fit it again at this size (python start.py fit-errors "
                    "--imgsz %d)", path, fitted_size, settings.img_size, settings.img_size)
    return path


def load_error_model(path: str) -> ErrorModel:
    try:
        return read_error_model(path)
    except ValueError as exc:
        raise ModelError(f"{exc}; fit it again (python start.py fit-errors) or delete it to use the prior") from None


def model_needed(task: str, settings: Settings) -> bool:
    """Infer always runs a model; mining when its algorithm does or selection diverse embeds the images."""
    return task == "infer" or SCORERS[settings.mining_algorithm].needs_model or settings.selection == "diverse"


def weights_for(settings: Settings, models_dir: str) -> str:
    """model_params_path → one weights file: a .pt unless only an .onnx is given (or backend says onnx)."""
    paths = settings.model_params_path
    if settings.backend == "onnx":
        return resolve_weights(paths, models_dir, (".onnx",))
    if settings.backend == "torch" or any(p.lower().endswith((".pt", ".pth")) for p in paths):
        return resolve_weights(paths, models_dir, (".pt", ".pth"))
    return resolve_weights(paths, models_dir, (".pt", ".pth", ".onnx"))
