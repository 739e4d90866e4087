"""The inference adapter: the only module that loads a model for prediction (training: executor/trainer.py).

It turns a YOLOv8/YOLO11 detection checkpoint (or its ONNX export) into our own types once. One forward
pass of a letterboxed batch yields the head's decoded output `raw` (B, 4 + C, A): per anchor point a box
(cx, cy, w, h in network-input pixels) and C independent sigmoid class probabilities (the head is
anchor-free and has no objectness). From that single tensor we take
- post-NMS `Detections` per image, each box with its full class-probability vector, and
- dense class-probability maps per head level (B, C, H/stride, W/stride), for ALDD: the A anchor
  points are the cells of the three levels, level by level, row-major.
The same post-processing serves the PyTorch and the ONNX Runtime backends, so both return the same boxes.
The detector implements mining.base.Detector and decides the geometry: `img_size` (the requested size rounded
up to a stride multiple) and `rect_stride` (None for a fixed square input).
"""
import ast
import copy
import logging
import os
from typing import Sequence

import numpy as np
import torch

from executor.config import gpu_list
from executor.errors import ConfigError, ModelError, NoGpuError
from executor.images import Letterbox, letterbox, round_up, same_shape_chunks
from executor.nms import batched_nms
from executor.runtime import cpu_threads
from mining.base import Batch, Detections

log = logging.getLogger(__name__)
DEFAULT_STRIDES = (8, 16, 32)
MAX_NMS = 30000  # multi-label candidates per image before NMS, as Ultralytics' validator


# ---------------------------------------------------------------- devices

def visible_gpus(gpu_id: str) -> list[int]:
    """The GPUs of `gpu_id` ('' = none), each checked against what CUDA sees. Never a silent CPU fallback."""
    ids = gpu_list(gpu_id)
    available = torch.cuda.device_count() if ids and torch.cuda.is_available() else 0
    if ids and max(ids) >= available:
        raise NoGpuError(f"config key 'gpu_id' asks for GPU {gpu_id} but {available} CUDA device(s) are visible")
    return ids


def select_device(gpu_id: str) -> torch.device:
    """'' = CPU; '0' or '0,1' = the first listed container-local GPU."""
    ids = visible_gpus(gpu_id)
    if not ids:
        return torch.device("cpu")
    if len(ids) > 1:
        log.warning("gpu_id %s: mining and inference run on GPU %d only", gpu_id, ids[0])
    return torch.device(f"cuda:{ids[0]}")


# ---------------------------------------------------------------- post-processing (both backends)

def class_maps(raw: torch.Tensor, canvas: tuple[int, int], strides=DEFAULT_STRIDES) -> list[torch.Tensor]:
    """The class probabilities of `raw` (B, 4+C, A) for input canvases of (height, width) as one (B, C, h, w)
    map per head level (views, no copy)."""
    probs = raw[:, 4:, :]
    shapes = [(canvas[0] // s, canvas[1] // s) for s in strides]
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


def candidates(probs: torch.Tensor, conf_thres: float, multi_label: bool):
    """(anchor, class, score) of the boxes NMS considers: each anchor's best class above conf_thres, or, with
    `multi_label` (Ultralytics' validator), every (anchor, class) pair above it, the MAX_NMS best."""
    if not multi_label:
        score, cls = probs.max(1)
        keep = score > conf_thres
        return torch.where(keep)[0], cls[keep], score[keep]
    anchor, cls = torch.nonzero(probs > conf_thres, as_tuple=True)
    score = probs[anchor, cls]
    if len(score) > MAX_NMS:
        top = score.topk(MAX_NMS).indices
        anchor, cls, score = anchor[top], cls[top], score[top]
    return anchor, cls, score


def postprocess(raw: torch.Tensor, boxes: Sequence[Letterbox], conf_thres: float, iou_thres: float,
                max_det: int | None, multi_label: bool = False) -> list[Detections]:
    """Class-aware NMS per image on `raw` (B, 4+C, A), the `max_det` best kept (None: all); boxes mapped back to
    original pixels."""
    results = []
    for pred, box in zip(raw.transpose(1, 2), boxes):  # (A, 4+C) per image
        probs = pred[:, 4:]
        anchor, cls, score = candidates(probs, conf_thres, multi_label)
        xyxy = xywh_to_xyxy(pred[anchor, :4])
        order = batched_nms(xyxy, score, cls, iou_thres)[:max_det]
        results.append(Detections(
            xyxy=box.to_original(xyxy[order].float().cpu().numpy()),
            conf=score[order].float().cpu().numpy(),
            cls=cls[order].cpu().numpy().astype(np.int64),
            probs=probs[anchor[order]].float().cpu().numpy(),
        ))
    return results


# ---------------------------------------------------------------- detectors

class Detector:
    """A loaded detection model with its post-processing settings. Subclasses implement `forward`.

    `img_size`: the long side of every network input; `rect_stride`: canvases may be any rectangle of
    multiples of it (None: only img_size × img_size)."""
    names: list[str]
    img_size: int
    device: torch.device
    strides = DEFAULT_STRIDES
    rect_stride: int | None = None

    def __init__(self, weights: str, conf_thres: float, iou_thres: float, max_det: int):
        self.weights = weights
        self.conf_thres, self.iou_thres, self.max_det = conf_thres, iou_thres, max_det
        self.multi_label = False

    def with_postprocess(self, conf_thres: float, iou_thres: float, max_det: int,
                         multi_label: bool = False) -> "Detector":
        """The same loaded model with other NMS settings (a shallow copy: the network is shared)."""
        other = copy.copy(self)
        other.conf_thres, other.iou_thres, other.max_det = conf_thres, iou_thres, max_det
        other.multi_label = multi_label
        return other

    def input_size(self, img_size: int) -> int:
        """The network input size this detector makes of a requested img_size (a stride multiple)."""
        return round_up(img_size, max(self.strides))

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def forward(self, canvases: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 RGB letterboxed images → raw head output (B, 4+C, A) on self.device."""
        raise NotImplementedError

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return letterbox(image, self.img_size, self.rect_stride)

    def predict_canvases(self, canvases: np.ndarray, boxes: Sequence[Letterbox], conf_thres: float | None = None,
                         capped: bool = True) -> list[Detections]:
        conf = self.conf_thres if conf_thres is None else conf_thres
        return postprocess(self.forward(canvases), boxes, conf, self.iou_thres, self.max_det if capped else None,
                           self.multi_label)

    def predict(self, batch: Batch, conf_thres: float | None = None, capped: bool = True) -> list[Detections]:
        return self.predict_canvases(batch.canvases, batch.boxes, conf_thres, capped)

    def predict_maps(self, batch: Batch) -> list[torch.Tensor]:
        """Only the dense class maps, without the NMS nobody would read."""
        return class_maps(self.forward(batch.canvases), batch.canvases.shape[1:3], self.strides)

    def predict_views(self, views: Sequence[np.ndarray], batch_size: int) -> list[Detections]:
        """Detections of extra images, each letterboxed like a candidate, forwarded in same-shape chunks."""
        prepared = [self.letterbox(view) for view in views]
        found: list[Detections | None] = [None] * len(views)
        for chunk in same_shape_chunks([canvas for canvas, _ in prepared], batch_size):
            canvases = np.stack([prepared[k][0] for k in chunk])
            for k, det in zip(chunk, self.predict_canvases(canvases, [prepared[k][1] for k in chunk])):
                found[k] = det
        return found


class TorchDetector(Detector):
    def __init__(self, weights: str, device: torch.device, img_size: int, threads: int, pin_memory: bool = False,
                 **post):
        super().__init__(weights, **post)
        self.device = device
        net, names, strides = load_torch_model(weights)
        self.names = names
        self.strides = strides
        self.img_size = self.input_size(img_size)
        self.rect_stride = max(strides)
        self.pin_memory = pin_memory and device.type == "cuda"
        net = net.to(device).float().eval()
        if device.type == "cpu":
            net = net.to(memory_format=torch.channels_last)  # ~30% faster convolutions on CPU
        self.net = net
        torch.set_num_threads(threads)  # after loading: Ultralytics' device set-up changes it

    @torch.inference_mode()
    def forward(self, canvases: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(canvases)
        if self.pin_memory:  # page-locked host memory: the copy to the GPU runs asynchronously
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
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

    def __init__(self, weights: str, device: torch.device, img_size: int, threads: int, pin_memory: bool = False,
                 **post):
        super().__init__(weights, **post)
        if not os.path.isfile(weights):
            raise ModelError(f"weights file not found: {weights}")
        import onnxruntime as ort

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else [
            "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(weights, options, providers=providers)
        except Exception as exc:
            raise ModelError(f"cannot load ONNX model {weights}: {type(exc).__name__}: {exc}") from exc
        self.device = torch.device("cpu")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.fixed_size = inp.shape[2] if isinstance(inp.shape[2], int) else None
        self.img_size = self.input_size(img_size)
        self.rect_stride = None if self.fixed_size else max(self.strides)  # an export with dynamic height and width
        if self.fixed_size and self.fixed_size != img_size:
            log.warning("ONNX model %s has a fixed input size %d; img_size %d is ignored", weights,
                        self.fixed_size, img_size)
        meta = self.session.get_modelmeta().custom_metadata_map
        num_classes = int(self.session.get_outputs()[0].shape[1]) - 4
        self.names = onnx_class_names(meta.get("names"), num_classes)

    def input_size(self, img_size: int) -> int:
        return self.fixed_size or super().input_size(img_size)

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


def load_detector(weights: str, backend: str, gpu_id: str, img_size: int, *, conf_thres: float, iou_thres: float,
                  max_det: int, class_names: Sequence[str] = (), pin_memory: bool = False,
                  threads: int = 0) -> Detector:
    """The detector for `weights` (.pt → PyTorch, .onnx → ONNX Runtime, unless `backend` says so); `threads`:
    CPU threads (0: executor.runtime.cpu_threads' choice)."""
    device = select_device(gpu_id)
    use_onnx = backend == "onnx" or (backend == "auto" and weights.lower().endswith(".onnx"))
    detector = (OnnxDetector if use_onnx else TorchDetector)(
        weights, device, img_size, cpu_threads(threads), pin_memory=pin_memory, conf_thres=conf_thres,
        iou_thres=iou_thres, max_det=max_det)
    if class_names:
        if len(class_names) != detector.num_classes:
            raise ConfigError(f"config key 'class_names' has {len(class_names)} names but the model {weights} "
                              f"predicts {detector.num_classes} classes")
        detector.names = list(class_names)
    log.info("loaded %s (%s, %d classes, img_size %d) on %s", weights, type(detector).__name__,
             detector.num_classes, detector.img_size, detector.device)
    return detector


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
