"""The detector adapter: the only module that imports ultralytics.

It turns a YOLOv8/YOLO11 detection checkpoint (or its ONNX export) into our own types once. One forward
pass of a letterboxed batch yields the head's decoded output `raw` (B, 4 + C, A): per anchor point a box
(cx, cy, w, h in network-input pixels) and C independent sigmoid class probabilities (the head is
anchor-free and has no objectness). From that single tensor we take
- post-NMS `Detections` per image, each box with its full class-probability vector, and
- dense class-probability maps per head level (B, C, H/stride, W/stride), for ALDD: the A anchor
  points are the cells of the three levels, level by level, row-major.
The same post-processing serves the PyTorch and the ONNX Runtime backends, so both return the same boxes.
"""
import ast
import copy
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from executor.errors import ConfigError, ModelError, NoGpuError
from executor.images import Letterbox
from executor.nms import batched_nms

log = logging.getLogger(__name__)
DEFAULT_STRIDES = (8, 16, 32)


@dataclass
class Detections:
    """Post-NMS detections of one image, in original-image pixels. probs[i].max() == conf[i]."""
    xyxy: np.ndarray   # (N, 4) float32
    conf: np.ndarray   # (N,) float32
    cls: np.ndarray    # (N,) int64
    probs: np.ndarray  # (N, C) float32

    def __post_init__(self):
        n = len(self.conf)
        if self.xyxy.shape != (n, 4) or self.cls.shape != (n,) or self.probs.ndim != 2 or len(self.probs) != n:
            raise ValueError(f"inconsistent detection shapes {self.xyxy.shape} {self.conf.shape} "
                             f"{self.cls.shape} {self.probs.shape}")

    def __len__(self):
        return len(self.conf)

    @classmethod
    def empty(cls, num_classes: int) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                   np.zeros((0, num_classes), np.float32))


@dataclass
class Prediction:
    """What one forward pass of a batch gives: detections per image and dense maps per head level."""
    detections: list[Detections]
    class_maps: list[torch.Tensor]  # per level (B, C, h_l, w_l), on the model's device


# ---------------------------------------------------------------- devices

def select_device(gpu_id: str) -> torch.device:
    """'' = CPU; '0' or '0,1' = the first listed container-local GPU. Never a silent CPU fallback."""
    if not gpu_id:
        return torch.device("cpu")
    first = int(gpu_id.split(",")[0])
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if first >= available:
        raise NoGpuError(f"config key 'gpu_id' asks for GPU {gpu_id} but {available} CUDA device(s) are visible")
    if "," in gpu_id:
        log.warning("gpu_id %s: mining and inference run on GPU %d only", gpu_id, first)
    return torch.device(f"cuda:{first}")


def use_all_cpu_threads() -> None:
    """Ultralytics' device set-up leaves torch with cpu_count - 1 threads (1 on two cores): undo that."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))


def round_img_size(img_size: int, stride: int) -> int:
    return int(math.ceil(img_size / stride) * stride)


# ---------------------------------------------------------------- post-processing (both backends)

def level_shapes(canvas: tuple[int, int], strides=DEFAULT_STRIDES) -> list[tuple[int, int]]:
    return [(canvas[0] // s, canvas[1] // s) for s in strides]


def class_maps(raw: torch.Tensor, canvas: tuple[int, int], strides=DEFAULT_STRIDES) -> list[torch.Tensor]:
    """The class probabilities of `raw` (B, 4+C, A) for input canvases of (height, width) as one (B, C, h, w)
    map per head level (views, no copy)."""
    probs = raw[:, 4:, :]
    shapes = level_shapes(canvas, strides)
    if sum(h * w for h, w in shapes) != probs.shape[2]:
        raise ModelError(f"head output has {probs.shape[2]} anchor points; expected {shapes} for an input of "
                         f"{canvas[0]}x{canvas[1]}")
    maps, start = [], 0
    for h, w in shapes:
        maps.append(probs[:, :, start:start + h * w].unflatten(2, (h, w)))
        start += h * w
    return maps


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    half = boxes[:, 2:] / 2
    return torch.cat((boxes[:, :2] - half, boxes[:, :2] + half), 1)


def postprocess(raw: torch.Tensor, boxes: list[Letterbox], conf_thres: float, iou_thres: float,
                max_det: int | None) -> list[Detections]:
    """Class-aware NMS per image on `raw` (B, 4+C, A), the `max_det` best kept (None: all); boxes mapped back to
    original pixels."""
    results = []
    preds = raw.transpose(1, 2)  # (B, A, 4+C)
    for pred, box in zip(preds, boxes):
        probs = pred[:, 4:]
        score, cls = probs.max(1)
        keep = score > conf_thres
        xyxy = xywh_to_xyxy(pred[keep, :4])
        order = batched_nms(xyxy, score[keep], cls[keep], iou_thres)[:max_det]
        kept_xyxy = xyxy[order].float().cpu().numpy()
        results.append(Detections(
            xyxy=box.to_original(kept_xyxy),
            conf=score[keep][order].float().cpu().numpy(),
            cls=cls[keep][order].cpu().numpy().astype(np.int64),
            probs=probs[keep][order].float().cpu().numpy(),
        ))
    return results


# ---------------------------------------------------------------- detectors

class Detector:
    """A loaded detection model with its post-processing settings. Subclasses implement `forward`.

    `rect_stride`: canvases may be any rectangle of multiples of it (None: only img_size × img_size)."""
    names: list[str]
    img_size: int
    device: torch.device
    strides = DEFAULT_STRIDES
    rect_stride: int | None = None

    def __init__(self, weights: str, conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 100):
        self.weights = weights
        self.conf_thres, self.iou_thres, self.max_det = conf_thres, iou_thres, max_det

    def with_postprocess(self, conf_thres: float, iou_thres: float, max_det: int | None) -> "Detector":
        """The same loaded model with other NMS settings (a shallow copy: the network is shared)."""
        other = copy.copy(self)
        other.conf_thres, other.iou_thres, other.max_det = conf_thres, iou_thres, max_det
        return other

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def forward(self, canvases: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 RGB letterboxed images → raw head output (B, 4+C, A) on self.device."""
        raise NotImplementedError

    def predict(self, canvases: np.ndarray, boxes: list[Letterbox]) -> Prediction:
        raw = self.forward(canvases)
        return Prediction(postprocess(raw, boxes, self.conf_thres, self.iou_thres, self.max_det),
                          class_maps(raw, canvases.shape[1:3], self.strides))

    def predict_maps(self, canvases: np.ndarray) -> list[torch.Tensor]:
        """Only the dense class maps of `predict`, without the NMS nobody would read."""
        return class_maps(self.forward(canvases), canvases.shape[1:3], self.strides)


class TorchDetector(Detector):
    def __init__(self, weights: str, device: torch.device, img_size: int, **post):
        super().__init__(weights, **post)
        self.device = device
        net, names, strides = load_torch_model(weights)
        self.names = names
        self.strides = strides
        self.img_size = round_img_size(img_size, max(strides))
        self.rect_stride = max(strides)
        net = net.to(device).float().eval()
        if device.type == "cpu":
            net = net.to(memory_format=torch.channels_last)  # ~30% faster convolutions on CPU
        self.net = net
        use_all_cpu_threads()

    @torch.inference_mode()
    def forward(self, canvases: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(canvases).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.net(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def load_torch_model(weights: str):
    """(fused eval torch module, class names, strides) from an Ultralytics detection checkpoint."""
    if not os.path.isfile(weights):  # a bare name would make Ultralytics try to download it
        raise ModelError(f"weights file not found: {weights}")
    from ultralytics import YOLO  # imported here so that ONNX-only runs never pay for it

    try:
        model = YOLO(weights, task=None)
    except Exception as exc:  # corrupt pickle, wrong format, unknown architecture ...
        raise ModelError(f"cannot load weights {weights}: {type(exc).__name__}: {exc}") from exc
    if model.task != "detect":
        raise ModelError(f"weights {weights} are a '{model.task}' model; a detection model is needed")
    # verbose=False: the default also counts the model's FLOPs (a deep copy and a profiled forward, ~1 s on CPU)
    net = model.model.fuse(verbose=False) if hasattr(model.model, "fuse") else model.model
    head = net.model[-1]
    if getattr(head, "end2end", False):
        head.end2end = False  # keep the dense one-to-many output that NMS and ALDD work on
    names = [str(model.names[i]) for i in sorted(model.names)]
    strides = tuple(int(s) for s in head.stride.tolist())
    return net, names, strides


class OnnxDetector(Detector):
    """ONNX Runtime on an Ultralytics ONNX export (output0 = (B, 4+C, A), same as the torch head)."""

    def __init__(self, weights: str, device: torch.device, img_size: int, **post):
        super().__init__(weights, **post)
        if not os.path.isfile(weights):
            raise ModelError(f"weights file not found: {weights}")
        import onnxruntime as ort

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else [
            "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, os.cpu_count() or 1)
        try:
            self.session = ort.InferenceSession(weights, options, providers=providers)
        except Exception as exc:
            raise ModelError(f"cannot load ONNX model {weights}: {type(exc).__name__}: {exc}") from exc
        self.device = torch.device("cpu")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        fixed_size = inp.shape[2] if isinstance(inp.shape[2], int) else None
        self.img_size = fixed_size or round_img_size(img_size, 32)
        self.rect_stride = None if fixed_size else max(self.strides)  # an export with dynamic height and width
        if fixed_size and fixed_size != img_size:
            log.warning("ONNX model %s has a fixed input size %d; img_size %d is ignored", weights, fixed_size, img_size)
        meta = self.session.get_modelmeta().custom_metadata_map
        num_classes = int(self.session.get_outputs()[0].shape[1]) - 4
        self.names = onnx_class_names(meta.get("names"), num_classes)

    def forward(self, canvases: np.ndarray) -> torch.Tensor:
        x = np.ascontiguousarray(canvases.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        step = self.fixed_batch or len(x)
        outs = [self.session.run(None, {self.input_name: x[i:i + step]})[0] for i in range(0, len(x), step)]
        return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0])


def onnx_class_names(text: str | None, num_classes: int) -> list[str]:
    """Class names from an Ultralytics export's metadata (a dict literal); numbered names when absent."""
    if text:
        try:
            names = ast.literal_eval(text)  # a literal only: never evaluates code
            return [str(names[i]) for i in sorted(names)]
        except (ValueError, SyntaxError, TypeError, KeyError):
            log.warning("ONNX metadata 'names' is unreadable; using numbered class names")
    return [f"class{i}" for i in range(num_classes)]


def load_detector(weights: str, backend: str, gpu_id: str, img_size: int, class_names=(), **post) -> Detector:
    """The detector for `weights` (.pt → PyTorch, .onnx → ONNX Runtime, unless `backend` says so)."""
    device = select_device(gpu_id)
    use_onnx = backend == "onnx" or (backend == "auto" and weights.lower().endswith(".onnx"))
    detector = (OnnxDetector if use_onnx else TorchDetector)(weights, device, img_size, **post)
    if class_names:
        if len(class_names) != detector.num_classes:
            raise ConfigError(f"config key 'class_names' has {len(class_names)} names but the model {weights} "
                              f"predicts {detector.num_classes} classes")
        detector.names = list(class_names)
    log.info("loaded %s (%s, %d classes, img_size %d) on %s", weights, type(detector).__name__,
             detector.num_classes, detector.img_size, detector.device)
    return detector


# ---------------------------------------------------------------- training
# Ultralytics training seen through our own types: EpochReport in, TrainHooks out (executor/training.py
# implements the hooks; it never touches the trainer). Everything here runs in the training process, or, for
# multi-GPU runs, in Ultralytics' DDP workers, which receive the bridge pickled (so it holds no open files).
from executor.errors import NanError, OutOfMemory, error_code  # noqa: E402

TRAIN_KEYS_FROM_TEMPLATE = {  # Ultralytics argument → the template key that sets it
    "epochs": "epochs", "batch": "batch_size_per_gpu", "workers": "num_workers_per_gpu", "imgsz": "img_size",
    "optimizer": "optimizer", "lr0": "lr0", "lrf": "lrf", "cos_lr": "cos_lr", "patience": "patience",
    "freeze": "freeze", "save_period": "save_period", "amp": "amp", "seed": "seed", "opset": "opset",
    "device": "gpu_id"}
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


def check_train_args(args: dict, source: str = "args_options") -> dict:
    """Extra train arguments, checked by name against Ultralytics' own list and by type with its own checker."""
    import difflib

    from ultralytics.cfg import check_cfg

    known = train_arg_keys()
    for key in args:
        if key in TRAIN_KEYS_FROM_TEMPLATE:
            raise ConfigError(f"config key '{source}': '{key}' is set by config key "
                              f"'{TRAIN_KEYS_FROM_TEMPLATE[key]}'; use that key instead")
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
    if not gpu_id:
        return "cpu"
    ids = [int(p) for p in gpu_id.split(",")]
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if max(ids) >= available:
        raise NoGpuError(f"config key 'gpu_id' asks for GPU {gpu_id} but {available} CUDA device(s) are visible")
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


def export_onnx(weights: str, target: str, img_size: int, opset: int, dynamic: bool = False) -> None:
    """ONNX export of `weights` with the raw head output the detector expects: a static 1×3×img_size² input
    (what platforms import), or with `dynamic` any batch, height and width (rectangular batches)."""
    import shutil
    import tempfile

    from ultralytics import YOLO

    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(target))) as scratch:
        copy = os.path.join(scratch, os.path.splitext(os.path.basename(target))[0] + ".pt")
        shutil.copyfile(weights, copy)  # Ultralytics writes the .onnx next to the weights it exports
        threads = torch.get_num_threads()
        produced = YOLO(copy, task="detect").export(format="onnx", imgsz=img_size, opset=opset or None,
                                                    simplify=True, dynamic=dynamic, device="cpu")
        torch.set_num_threads(threads)  # the exporter's CPU device set-up lowers it
        os.replace(str(produced), target)
