"""The training adapter: Ultralytics training seen through our own types (the only module that trains).

EpochReport in, hooks out: executor/pipeline/training.py implements the hooks and never touches the trainer.
Everything here runs in the training process, or, for multi-GPU runs, in Ultralytics' DDP workers, which
receive the bridge pickled (so it holds no open files).
"""
import logging
import math
import os
from dataclasses import dataclass

from executor.engine.device import visible_gpus
from executor.errors import ConfigError, ModelError, NanError, OutOfMemory, error_code
from executor.shared import TASK_OF_OBJECT_TYPE, TASK_WORDS, task_words  # noqa: F401 (the family's task)

log = logging.getLogger(__name__)

TRAIN_ARGS_FROM_TEMPLATE = {  # Ultralytics train argument → the template key whose value it takes
    "epochs": "epochs", "batch": "batch_size_per_gpu", "workers": "num_workers_per_gpu", "imgsz": "img_size",
    "optimizer": "optimizer", "lr0": "lr0", "lrf": "lrf", "cos_lr": "cos_lr", "patience": "patience",
    "freeze": "freeze", "amp": "amp", "seed": "seed"}
TRAIN_ARGS_SET_BY = {**TRAIN_ARGS_FROM_TEMPLATE,  # arguments args_options may not set, and the key that does
                     "save_period": "save_period", "opset": "opset", "device": "gpu_id"}
TASK_EXAMPLES = {"detect": "yolov8n, yolov8s, yolo11n, yolo11m", "segment": "yolov8n-seg, yolov8s-seg, yolo11n-seg"}
TRAIN_KEYS_RESERVED = {"model", "data", "project", "name", "exist_ok", "mode", "task", "resume", "save", "save_dir",
                       "pretrained", "source", "format",
                       "cfg", "distill_model"}  # paths: a config file, a model file: only the platform gives those


@dataclass
class EpochReport:
    """One finished epoch (validation done, checkpoints written), in our terms."""
    epoch: int             # 1-based number of the epoch just finished
    epochs: int            # planned number of epochs
    scalars: dict          # floats by tensorboard tag: train/box_loss, val/cls_loss, metrics/mAP50, lr/pg0, ...
    map50: float | None    # Ultralytics' val (box) mAP@0.5 of this epoch's weights (None when it did not validate)
    best_improved: bool    # best.pt was rewritten this epoch
    last: str              # checkpoints in Ultralytics' run dir (with optimizer state)
    best: str
    mask_map50: float | None = None  # segmentation: Ultralytics' val mask mAP@0.5


@dataclass
class TrainResult:
    best: str | None       # best.pt (final_eval strips its optimizer), None when never written
    last: str | None
    run_dir: str


def train_arg_keys() -> frozenset:
    """Every argument Ultralytics' trainer accepts (its default.yaml)."""
    from ultralytics.utils import DEFAULT_CFG_DICT

    return frozenset(DEFAULT_CFG_DICT)


def train_args(settings, device: str, extra: dict, plots: bool = False) -> dict:
    """Ultralytics train arguments: the template's keys through the table, the batch over every GPU, `extra`
    (args_options, already checked) last. `plots`: Ultralytics' own pictures in its run dir (labels.jpg and
    train_batch0-2.jpg before and in the first epoch; after the last epoch and the final validation of best.pt the
    PR, F1, P and R curves, the confusion matrices, val_batch*.jpg and results.png); none during other epochs."""
    args = {arg: settings[key] for arg, key in TRAIN_ARGS_FROM_TEMPLATE.items()}
    args["batch"] *= len(device.split(",")) if device != "cpu" else 1
    return {**args, "device": device, "plots": plots, **extra}


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


def model_yaml(name: str, task: str = "detect") -> str:
    """'yolov8n' → 'yolov8n.yaml' when Ultralytics knows it as a model of `task` (its bundled cfg, no download);
    a model of another task is a ConfigError naming both."""
    from ultralytics.nn.tasks import guess_model_task, yaml_model_load

    stem = os.path.basename(str(name).strip())
    if stem.lower().endswith((".pt", ".yaml", ".yml")):
        stem = os.path.splitext(stem)[0]
    try:
        cfg = yaml_model_load(f"{stem}.yaml")
    except Exception:  # FileNotFoundError for unknown names; anything else means the same to the user
        raise ConfigError(f"config key 'model': {name!r} is not a model Ultralytics knows "
                          f"(e.g. {TASK_EXAMPLES.get(task, TASK_EXAMPLES['detect'])})") from None
    found = guess_model_task(cfg)
    if found != task:
        word = "a detection model" if task == "detect" else f"a {TASK_WORDS.get(task, task)} model"
        raise ConfigError(f"config key 'model': {name!r} is not {word}: it is a {task_words(found)} model, and "
                          f"this image trains {task_words(task)} models (e.g. {TASK_EXAMPLES.get(task, '')})")
    return f"{stem}.yaml"


def detection_model_yaml(name: str) -> str:
    """'yolov8n' → 'yolov8n.yaml' when Ultralytics knows it as a detection model."""
    return model_yaml(name, "detect")


def segmentation_counterpart(detection_model) -> str | None:
    """The segmentation model of a detection model's architecture ('yolov8n.yaml' → 'yolov8n-seg.yaml'), when
    Ultralytics knows one: its backbone and neck are the detection model's."""
    yaml_file = str(getattr(detection_model, "yaml", {}).get("yaml_file") or "")
    stem = os.path.splitext(os.path.basename(yaml_file))[0]
    if not stem:
        return None
    try:
        return model_yaml(f"{stem}-seg", "segment")
    except ConfigError:
        return None


def transferred_tensors(source_model, target_yaml: str, nc: int) -> tuple[int, int]:
    """(tensors of `target_yaml` built for `nc` classes whose name and shape match `source_model`'s, all its
    tensors): what loading the source's weights into it copies."""
    from ultralytics.nn.tasks import SegmentationModel
    from ultralytics.utils.torch_utils import intersect_dicts

    target = SegmentationModel(target_yaml, nc=nc, verbose=False).state_dict()
    return len(intersect_dicts(source_model.float().state_dict(), target)), len(target)


def _tag(key: str) -> str:
    """Ultralytics' metric keys as tensorboard tags: 'metrics/mAP50(B)' → 'metrics/mAP50' (boxes, as for
    detection), 'metrics/mAP50(M)' → 'metrics/mask_mAP50' (masks)."""
    if key.endswith("(M)"):
        head, _, tail = key[:-3].rpartition("/")
        return f"{head}/mask_{tail}" if head else f"mask_{tail}"
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
            best_improved=bool(improved and trainer.best.exists()), last=str(trainer.last), best=str(trainer.best),
            mask_map50=metrics.get("metrics/mask_mAP50")))


class _LastIsBest:
    """No validation by Ultralytics (train_model with validate=False): its per-epoch and final-epoch validate() and
    its final_eval() of best.pt become no-ops, installed on the trainer instance before the first epoch (on every
    DDP rank: each one calls validate). validate() returns no metrics and a fitness that grows with the epoch, so
    every epoch is the best so far: save_model writes best.pt with last.pt's bytes (it does when best_fitness ==
    fitness) and EarlyStopping never stops (it stops only after `patience` epochs without a higher fitness).
    Picklable (DDP workers get it through cloudpickle)."""

    def events(self) -> dict:
        return {"on_pretrain_routine_end": self.install}

    @staticmethod
    def install(trainer) -> None:
        def validate() -> tuple[dict, float]:
            # the training loop stores these as trainer.metrics (a dict: save_metrics and save_model spread it)
            trainer.best_fitness = fitness = float(trainer.epoch + 1)
            return {}, fitness

        trainer.validate = validate
        trainer.final_eval = lambda: None  # (Ultralytics' also strips the optimizer: export_weights does that)


class _FrozenNorms:
    """Every BatchNorm layer in eval mode while training (its weights still learn unless frozen): the running
    statistics stay the pretrained ones. Ultralytics does this for the layers of `freeze` only; on a small set the
    batch statistics of a few augmented images drift the others (highway, 100 images: a run at lr0 0 lost 0.10
    mAP50, docs/simulation.md). Set before every batch: Ultralytics puts the model back in train mode each epoch.
    Picklable (DDP workers get it through cloudpickle)."""

    def events(self) -> dict:
        return {"on_train_batch_start": self.freeze}

    @staticmethod
    def freeze(trainer) -> None:
        import torch.nn as nn

        for module in trainer.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
                module.eval()


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
    """Train a detection model (train_model with task 'detect')."""
    return train_model(source, data_yaml, args, hooks, run_dir, "detect")


def _load(source: str):
    from ultralytics import YOLO

    if source.endswith(".pt") and not os.path.isfile(source):
        raise ModelError(f"weights file not found: {source}")  # a bare name would be downloaded
    try:
        return YOLO(source)  # the task of a checkpoint is its own, of a model YAML the one its head implies
    except Exception as exc:
        raise ModelError(f"cannot load {source}: {type(exc).__name__}: {exc}") from exc


def _seed_segmentation(detection, source: str, data_yaml: str, model_yaml: str | None, args: dict):
    """A segmentation model whose every tensor of matching name and shape comes from the detection checkpoint
    `source` (backbone, neck, box and class branches; the mask prototypes and coefficients start fresh): the
    segmentation counterpart of its architecture, else `model_yaml`. Ultralytics copies them itself when training
    starts (`pretrained`, which DDP workers read too); the count is logged here."""
    import yaml as yaml_lib

    target = segmentation_counterpart(detection.model) or model_yaml
    if target is None:
        raise ModelError(f"{source} is a {task_words('detect')} model with no segmentation counterpart, and no "
                         "segmentation model is configured (config key 'model')")
    if model_yaml and target != model_yaml:
        log.warning("config key 'model' (%s) is not used: the pretrained detection checkpoint %s is %s, so its "
                    "segmentation counterpart %s is trained", os.path.splitext(model_yaml)[0], source,
                    detection.model.yaml.get("yaml_file"), os.path.splitext(target)[0])
    with open(data_yaml, encoding="utf-8") as handle:
        nc = int(yaml_lib.safe_load(handle)["nc"])
    copied, total = transferred_tensors(detection.model, target, nc)
    log.info("pretrained weights: %d of %d tensors of %s transferred from the detection checkpoint %s (matching "
             "name and shape: backbone, neck, box and class branches; the mask head starts fresh)",
             copied, total, os.path.splitext(target)[0], source)
    if copied == 0:
        raise ModelError(f"no tensor of {os.path.splitext(target)[0]} matches the detection checkpoint {source}")
    return _load(target), {**args, "pretrained": os.path.abspath(source)}


def train_model(source: str, data_yaml: str, args: dict, hooks, run_dir: str, task: str = "detect",
                model_yaml: str | None = None, validate: bool = True, freeze_bn_stats: bool = False) -> TrainResult:
    """Train `source` (a .pt checkpoint or a model .yaml) as a `task` model on `data_yaml` in-process; multi-GPU
    devices go through Ultralytics' DDP launcher. `args` are Ultralytics train arguments; progress goes to
    `hooks`. A model of another task is a ModelError naming both, except that a detection checkpoint seeds a
    segmentation model (`model_yaml`, or the counterpart of its own architecture) with its matching weights.
    `validate=False`: Ultralytics validates nothing (no val metrics reach the hooks, no on_final) and best.pt is
    the last epoch's weights (_LastIsBest). `freeze_bn_stats`: every BatchNorm layer keeps its running statistics
    (_FrozenNorms)."""
    _offline_amp_check()
    model = _load(source)
    if model.task != task:
        if task == "segment" and model.task == "detect" and source.endswith(".pt"):
            model, args = _seed_segmentation(model, source, data_yaml, model_yaml, args)
        else:
            raise ModelError(f"{source} is a {task_words(model.task)} model, but this image trains "
                             f"{task_words(task)} models; give a {TASK_WORDS.get(task, task)} checkpoint")
    for events in (_TrainerBridge(hooks).events(), {} if validate else _LastIsBest().events(),
                   _FrozenNorms().events() if freeze_bn_stats else {}):
        for event, callback in events.items():
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


