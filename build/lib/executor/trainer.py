"""The training adapter: Ultralytics training seen through our own types (the only module that trains).

EpochReport in, hooks out: executor/training.py implements the hooks and never touches the trainer.
Everything here runs in the training process, or, for multi-GPU runs, in Ultralytics' DDP workers, which
receive the bridge pickled (so it holds no open files).
"""
import logging
import math
import os
from dataclasses import dataclass

from executor.errors import ConfigError, ModelError, NanError, OutOfMemory, error_code
from executor.model import visible_gpus

log = logging.getLogger(__name__)

TRAIN_ARGS_FROM_TEMPLATE = {  # Ultralytics train argument → the template key whose value it takes
    "epochs": "epochs", "batch": "batch_size_per_gpu", "workers": "num_workers_per_gpu", "imgsz": "img_size",
    "optimizer": "optimizer", "lr0": "lr0", "lrf": "lrf", "cos_lr": "cos_lr", "patience": "patience",
    "freeze": "freeze", "amp": "amp", "seed": "seed"}
TRAIN_ARGS_SET_BY = {**TRAIN_ARGS_FROM_TEMPLATE,  # arguments args_options may not set, and the key that does
                     "save_period": "save_period", "opset": "opset", "device": "gpu_id"}
TRAIN_KEYS_RESERVED = {"model", "data", "project", "name", "exist_ok", "mode", "task", "resume", "save", "save_dir",
                       "pretrained", "source", "format",
                       "cfg", "distill_model"}  # paths: a config file, a model file: only the platform gives those


@dataclass
class EpochReport:
    """One finished epoch (validation done, checkpoints written), in our terms."""
    epoch: int             # 1-based number of the epoch just finished
    epochs: int            # planned number of epochs
    scalars: dict          # floats by tensorboard tag: train/box_loss, val/cls_loss, metrics/mAP50, lr/pg0, ...
    map50: float | None    # Ultralytics' val mAP@0.5 of this epoch's weights (None when it did not validate)
    best_improved: bool    # best.pt was rewritten this epoch
    last: str              # checkpoints in Ultralytics' run dir (with optimizer state)
    best: str


@dataclass
class TrainResult:
    best: str | None       # best.pt (optimizer stripped by Ultralytics), None when never written
    last: str | None
    run_dir: str


def train_arg_keys() -> frozenset:
    """Every argument Ultralytics' trainer accepts (its default.yaml)."""
    from ultralytics.utils import DEFAULT_CFG_DICT

    return frozenset(DEFAULT_CFG_DICT)


def train_args(settings, device: str, extra: dict) -> dict:
    """Ultralytics train arguments: the template's keys through the table, the batch over every GPU, `extra`
    (args_options, already checked) last."""
    args = {arg: settings[key] for arg, key in TRAIN_ARGS_FROM_TEMPLATE.items()}
    args["batch"] *= len(device.split(",")) if device != "cpu" else 1
    return {**args, "device": device, "plots": False, **extra}


def check_train_args(args: dict, source: str = "args_options") -> dict:
    """Extra train arguments, checked by name against Ultralytics' own list and by type with its own checker."""
    import difflib

    from ultralytics.cfg import check_cfg

    known = train_arg_keys()
    for key in args:
        if key in TRAIN_ARGS_SET_BY:
            raise ConfigError(f"config key '{source}': '{key}' is set by config key "
                              f"'{TRAIN_ARGS_SET_BY[key]}'; use that key instead")
        if key in TRAIN_KEYS_RESERVED:
            raise ConfigError(f"config key '{source}': '{key}' is set by the executor and cannot be changed")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"config key '{source}': '{key}' is not an Ultralytics train argument{hint}")
    checked = dict(args)
    try:
        check_cfg(checked, hard=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key '{source}': {' '.join(str(exc).split())}") from None
    return checked


def detection_model_yaml(name: str) -> str:
    """'yolov8n' → 'yolov8n.yaml' when Ultralytics knows it as a detection model (its bundled cfg, no download)."""
    from ultralytics.nn.tasks import guess_model_task, yaml_model_load

    stem = os.path.basename(str(name).strip())
    if stem.lower().endswith((".pt", ".yaml", ".yml")):
        stem = os.path.splitext(stem)[0]
    try:
        cfg = yaml_model_load(f"{stem}.yaml")
    except Exception:  # FileNotFoundError for unknown names; anything else means the same to the user
        raise ConfigError(f"config key 'model': {name!r} is not a model Ultralytics knows "
                          "(e.g. yolov8n, yolov8s, yolo11n, yolo11m)") from None
    if guess_model_task(cfg) != "detect":
        raise ConfigError(f"config key 'model': {name!r} is not a detection model")
    return f"{stem}.yaml"


def _tag(key: str) -> str:
    return key.replace("(B)", "")


class _TrainerBridge:
    """Ultralytics trainer callbacks → TrainHooks (on_batch(epoch, epochs, fraction), on_epoch(EpochReport),
    on_final(scalars)). Rank 0 only; picklable (DDP workers get it through cloudpickle)."""

    def __init__(self, hooks):
        self.hooks = hooks
        self.trained = set()  # epochs whose training pass ended, to tell the after-training call apart
        self.batches = 0

    @staticmethod
    def _main(trainer) -> bool:
        from ultralytics.utils import RANK

        return RANK in (-1, 0)

    def __setstate__(self, state) -> None:  # unpickled in a DDP worker: it needs the offline AMP check too
        self.__dict__.update(state)
        _offline_amp_check()

    def events(self) -> dict:
        # Training keeps Ultralytics' own CPU thread count (cores - 1, at most 8), as a plain `yolo train`: on two
        # cores shared with one other busy process, two threads made an epoch 2.5-3.7x slower than one.
        return {"on_train_epoch_start": self.epoch_start, "on_train_batch_end": self.batch_end,
                "on_train_epoch_end": self.epoch_end, "on_fit_epoch_end": self.fit_epoch_end}

    def epoch_start(self, trainer) -> None:
        self.batches = 0

    def batch_end(self, trainer) -> None:
        self.batches += 1
        if self._main(trainer):
            total = max(1, len(trainer.train_loader))
            self.hooks.on_batch(trainer.epoch + 1, trainer.epochs, min(1.0, self.batches / total))

    def epoch_end(self, trainer) -> None:
        self.trained.add(trainer.epoch)
        losses = self._losses(trainer)
        if not all(math.isfinite(v) for v in losses.values()):
            if trainer.epoch == trainer.start_epoch:  # Ultralytics can only recover from a last.pt of a good epoch
                raise NanError(f"training loss is not finite in epoch {trainer.epoch + 1} "
                               f"({', '.join(f'{k} {v:.4g}' for k, v in losses.items())}); "
                               "lower lr0 or check the annotations")
            log.warning("epoch %d: training loss is not finite (%s)", trainer.epoch + 1, losses)

    @staticmethod
    def _losses(trainer) -> dict:
        if not trainer.tloss:
            return {}
        return {_tag(k): float(v) for k, v in trainer.label_loss_items(trainer.tloss, prefix="train").items()}

    def fit_epoch_end(self, trainer) -> None:
        if not self._main(trainer):
            return
        metrics = {_tag(k): float(v) for k, v in (trainer.metrics or {}).items()}
        if trainer.epoch not in self.trained:  # the extra call after training: metrics of best.pt
            self.hooks.on_final(metrics)
            return
        scalars = {**self._losses(trainer), **metrics, **{k: float(v) for k, v in (getattr(trainer, "lr", None) or {}).items()}}
        improved = trainer.fitness is not None and trainer.best_fitness == trainer.fitness
        self.hooks.on_epoch(EpochReport(
            epoch=trainer.epoch + 1, epochs=trainer.epochs, scalars=scalars, map50=metrics.get("metrics/mAP50"),
            best_improved=bool(improved and trainer.best.exists()), last=str(trainer.last), best=str(trainer.best)))


def _offline_amp_check() -> None:
    """Ultralytics checks AMP on a GPU by loading yolo26n.pt, downloading it when absent. Offline that is a
    crash, so the check is replaced by trusting `amp` (the user can set amp: false)."""
    import ultralytics.engine.trainer as trainer_module

    def check_amp(model) -> bool:
        return next(model.parameters()).device.type == "cuda"

    trainer_module.check_amp = check_amp


def train_device(gpu_id: str) -> str:
    """Ultralytics' device string for gpu_id ('' → cpu); every listed GPU must be visible."""
    ids = visible_gpus(gpu_id)
    if not ids:
        return "cpu"
    if len(ids) > 1:
        try:
            import cloudpickle  # noqa: F401  Ultralytics' DDP launcher pickles the trainer state with it
        except ImportError:
            raise ConfigError(f"config key 'gpu_id' {gpu_id!r}: multi-GPU training needs the cloudpickle "
                              "package in the image (Ultralytics DDP); use one GPU or install it") from None
    return ",".join(map(str, ids))


def train_detector(source: str, data_yaml: str, args: dict, hooks, run_dir: str) -> TrainResult:
    """Train `source` (a .pt checkpoint or a model .yaml) on `data_yaml` in-process; multi-GPU devices go
    through Ultralytics' DDP launcher. `args` are Ultralytics train arguments; progress goes to `hooks`."""
    from ultralytics import YOLO

    _offline_amp_check()
    if source.endswith(".pt") and not os.path.isfile(source):
        raise ModelError(f"weights file not found: {source}")  # a bare name would be downloaded
    try:
        model = YOLO(source, task="detect")
    except Exception as exc:
        raise ModelError(f"cannot load {source}: {type(exc).__name__}: {exc}") from exc
    if model.task != "detect":
        raise ModelError(f"{source} is a '{model.task}' model; a detection model is needed")
    bridge = _TrainerBridge(hooks)
    for event, callback in bridge.events().items():
        model.add_callback(event, callback)
    project, name = os.path.split(os.path.abspath(run_dir))
    try:
        model.train(data=data_yaml, project=project, name=name, exist_ok=True, save_period=-1, **args)
    except RuntimeError as exc:
        if "NaN" in str(exc):
            raise NanError(f"training diverged: {exc}") from exc
        if error_code(exc) == OutOfMemory.code:  # Ultralytics halves the batch in epoch 1 only, then gives up
            raise OutOfMemory(f"out of memory training with batch {args.get('batch')} (config key "
                              f"'batch_size_per_gpu' x GPUs) at img_size {args.get('imgsz')}; lower "
                              f"batch_size_per_gpu or img_size ({' '.join(str(exc).split())[:300]})") from exc
        raise
    weights = os.path.join(run_dir, "weights")
    best, last = os.path.join(weights, "best.pt"), os.path.join(weights, "last.pt")
    return TrainResult(best if os.path.isfile(best) else None, last if os.path.isfile(last) else None, run_dir)


def export_weights(checkpoint: str, target: str) -> None:
    """`checkpoint` without optimizer state (EMA weights, fp16) written atomically to `target`."""
    from ultralytics.utils.torch_utils import strip_optimizer

    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    tmp = f"{target}.tmp.pt"
    if not strip_optimizer(checkpoint, tmp):
        raise ModelError(f"{checkpoint} is not an Ultralytics checkpoint")
    os.replace(tmp, target)


