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
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torchvision

from executor.errors import ConfigError, ModelError, NoGpuError
from executor.images import Letterbox

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

def level_shapes(img_size: int, strides=DEFAULT_STRIDES) -> list[tuple[int, int]]:
    return [(img_size // s, img_size // s) for s in strides]


def class_maps(raw: torch.Tensor, img_size: int, strides=DEFAULT_STRIDES) -> list[torch.Tensor]:
    """The class probabilities of `raw` (B, 4+C, A) as one (B, C, h, w) map per head level (views, no copy)."""
    probs = raw[:, 4:, :]
    shapes = level_shapes(img_size, strides)
    if sum(h * w for h, w in shapes) != probs.shape[2]:
        raise ModelError(f"head output has {probs.shape[2]} anchor points; expected {shapes} for img_size {img_size}")
    maps, start = [], 0
    for h, w in shapes:
        maps.append(probs[:, :, start:start + h * w].unflatten(2, (h, w)))
        start += h * w
    return maps


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    half = boxes[:, 2:] / 2
    return torch.cat((boxes[:, :2] - half, boxes[:, :2] + half), 1)


def postprocess(raw: torch.Tensor, boxes: list[Letterbox], conf_thres: float, iou_thres: float,
                max_det: int) -> list[Detections]:
    """Class-aware NMS per image on `raw` (B, 4+C, A); boxes mapped back to original pixels."""
    results = []
    preds = raw.transpose(1, 2)  # (B, A, 4+C)
    for pred, box in zip(preds, boxes):
        probs = pred[:, 4:]
        score, cls = probs.max(1)
        keep = score > conf_thres
        xyxy = xywh_to_xyxy(pred[keep, :4])
        order = torchvision.ops.batched_nms(xyxy, score[keep], cls[keep], iou_thres)[:max_det]
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
    """A loaded detection model with its post-processing settings. Subclasses implement `forward`."""
    names: list[str]
    img_size: int
    device: torch.device
    strides = DEFAULT_STRIDES

    def __init__(self, conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 100):
        self.conf_thres, self.iou_thres, self.max_det = conf_thres, iou_thres, max_det

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def forward(self, canvases: np.ndarray) -> torch.Tensor:
        """(B, S, S, 3) uint8 RGB letterboxed images → raw head output (B, 4+C, A) on self.device."""
        raise NotImplementedError

    def predict(self, canvases: np.ndarray, boxes: list[Letterbox]) -> Prediction:
        raw = self.forward(canvases)
        return Prediction(postprocess(raw, boxes, self.conf_thres, self.iou_thres, self.max_det),
                          class_maps(raw, self.img_size, self.strides))


class TorchDetector(Detector):
    def __init__(self, weights: str, device: torch.device, img_size: int, **post):
        super().__init__(**post)
        self.device = device
        net, names, strides = load_torch_model(weights)
        self.names = names
        self.strides = strides
        self.img_size = round_img_size(img_size, max(strides))
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
    net = model.model.fuse() if hasattr(model.model, "fuse") else model.model
    head = net.model[-1]
    if getattr(head, "end2end", False):
        head.end2end = False  # keep the dense one-to-many output that NMS and ALDD work on
    names = [str(model.names[i]) for i in sorted(model.names)]
    strides = tuple(int(s) for s in head.stride.tolist())
    return net, names, strides


class OnnxDetector(Detector):
    """ONNX Runtime on an Ultralytics ONNX export (output0 = (B, 4+C, A), same as the torch head)."""

    def __init__(self, weights: str, device: torch.device, img_size: int, **post):
        super().__init__(**post)
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
