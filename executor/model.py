"""The inference adapter: the only module that loads a model for prediction (training: executor/trainer.py).

It turns a YOLOv8/YOLO11 detection or instance-segmentation checkpoint (or its ONNX export) into our own types
once. One forward pass of a letterboxed batch yields the head's decoded output `raw` (B, 4 + C + M, A): per
anchor point a box (cx, cy, w, h in network-input pixels), C independent sigmoid class probabilities (the head
is anchor-free and has no objectness) and, for a segmentation model, M mask coefficients (M = 0 for detection),
with the M mask prototypes (B, M, H/4, W/4) of a segmentation model beside it. From that we take
- post-NMS `Detections` per image, each box with its full class-probability vector and, for a segmentation
  model, its mask (made from the prototypes only when asked for: executor.masks.PredictedMasks), and
- dense class-probability maps per head level (B, C, H/stride, W/stride), for ALDD: the A anchor
  points are the cells of the three levels, level by level, row-major. The PyTorch backend makes these with
  the network up to the head and the head's class branch alone (`ClassMapsNet`): the box and mask branches,
  a fifth of yolov8n's work, serve nobody there.
The same post-processing serves the PyTorch and the ONNX Runtime backends, so both return the same boxes.
The detector implements mining.base.Detector and decides the geometry: `img_size` (the requested size rounded
up to a stride multiple) and `rect_stride` (None for a fixed square input).

Embeddings (selection: diverse) come from the same forward: the detector's `tap`, armed for one batch, keeps
that batch's raw output and, once `enable_embeddings()` was called, the inputs of the Detect head (the neck's
three feature maps P3, P4, P5), each GeM-pooled (generalised mean, p = 3) over the cells that lie on the image
(not its letterbox padding), L2-normalised per level and concatenated (/sqrt 3: unit length), float16. Torch: a
forward pre-hook on the head; ONNX: the same three tensors added as graph outputs of the loaded model (found by the head's first convolution
of each level), or, when they cannot be found, no embeddings and a warning.
"""
import ast
import copy
import logging
import os
import time
from typing import Sequence

import numpy as np
import torch

from executor.config import TASK_WORDS, gpu_list, task_words
from executor.errors import ConfigError, ModelError, NoGpuError
from executor.images import Letterbox, letterbox, round_up, same_shape_chunks
from executor.masks import PredictedMasks
from executor.nms import batched_nms
from executor.runtime import cpu_threads
from mining.base import Batch, Detections

log = logging.getLogger(__name__)
DEFAULT_STRIDES = (8, 16, 32)
MAX_NMS = 30000  # multi-label candidates per image before NMS, as Ultralytics' validator
# Devices where one NMS over the whole batch beats one per image: a kernel launch and a host sync per image
# cost a GPU more than the larger kernel; on CPU the kernel is O(N^2) in the boxes it sees, so per image wins.
WHOLE_BATCH_DEVICES = ("cuda",)
TASKS_SERVED = ("detect", "segment")  # the Ultralytics tasks this adapter predicts with
# Heads whose one-to-many class branch `cv3` (one module per level, logits (B, C, h, w)) gives exactly the
# class rows of their decoded output, after a sigmoid (tested against the whole head); others run it whole
CLASS_BRANCH_HEADS = ("Detect", "Segment")


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

def class_maps(raw: torch.Tensor, canvas: tuple[int, int], strides=DEFAULT_STRIDES,
               num_classes: int | None = None) -> list[torch.Tensor]:
    """The class probabilities of `raw` (B, 4+C+M, A) for input canvases of (height, width) as one (B, C, h, w)
    map per head level (views, no copy); `num_classes` C (None: every row after the box)."""
    probs = raw[:, 4:, :] if num_classes is None else raw[:, 4:4 + num_classes, :]
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
    """(anchor, class, score) of the boxes NMS considers in one image's class rows `probs` (C, A): each anchor's
    best class above conf_thres, or, with `multi_label` (Ultralytics' validator), every (anchor, class) pair above
    it, the MAX_NMS best. Reductions run along the classes of the head's own layout (no transposed copy), and
    only the anchors above the threshold look for their class."""
    if not multi_label:
        best = probs.amax(0)
        anchor = torch.where(best > conf_thres)[0]
        return anchor, probs[:, anchor].argmax(0), best[anchor]  # argmax: the first of equal maxima, as max()
    anchor, cls = torch.nonzero(probs.T > conf_thres, as_tuple=True)
    score = probs[cls, anchor]
    if len(score) > MAX_NMS:
        top = score.topk(MAX_NMS).indices
        anchor, cls, score = anchor[top], cls[top], score[top]
    return anchor, cls, score


def postprocess(raw: torch.Tensor, boxes: Sequence[Letterbox], conf_thres: float, iou_thres: float,
                max_det: int | None, multi_label: bool = False, whole_batch: bool | None = None,
                num_classes: int | None = None, proto: torch.Tensor | None = None) -> list[Detections]:
    """Class-aware NMS per image on `raw` (B, 4+C+M, A), the `max_det` best kept (None: all); boxes mapped back
    to original pixels. `num_classes` C (None: no mask coefficients, C = rows - 4); with the prototypes `proto`
    (B, M, H/4, W/4) of a segmentation model each image's detections carry their masks. On a GPU (or with
    `whole_batch`) the batch goes through one NMS kernel and one host copy."""
    num_classes = raw.shape[1] - 4 if num_classes is None else num_classes
    if raw.device.type in WHOLE_BATCH_DEVICES if whole_batch is None else whole_batch:
        return _postprocess_whole_batch(raw, boxes, conf_thres, iou_thres, max_det, multi_label, num_classes, proto)
    results = []
    for i, (pred, box) in enumerate(zip(raw.transpose(1, 2), boxes)):  # (A, 4+C+M) per image
        probs = pred[:, 4:4 + num_classes]
        anchor, cls, score = candidates(raw[i, 4:4 + num_classes], conf_thres, multi_label)
        xyxy = xywh_to_xyxy(pred[anchor, :4])
        order = batched_nms(xyxy, score, cls, iou_thres)[:max_det]
        original = box.to_original(xyxy[order].float().cpu().numpy())
        coefficients = pred[anchor[order], 4 + num_classes:].float().cpu().numpy() if proto is not None else None
        results.append(Detections(
            xyxy=original,
            conf=score[order].float().cpu().numpy(),
            cls=cls[order].cpu().numpy().astype(np.int64),
            probs=probs[anchor[order]].float().cpu().numpy(),
            masks=image_masks(proto, i, coefficients, box, original),
        ))
    return results


def image_masks(proto: torch.Tensor | None, index: int, coefficients: np.ndarray | None, box: Letterbox,
                original: np.ndarray) -> PredictedMasks | None:
    """The (lazy) masks of image `index`'s detections, or None for a detection model."""
    if proto is None:
        return None
    canvas = (proto.shape[2] * 4, proto.shape[3] * 4)  # the prototypes lie at a quarter of the network input
    return PredictedMasks(proto[index], coefficients, canvas, box, original)


def _postprocess_whole_batch(raw: torch.Tensor, boxes: Sequence[Letterbox], conf_thres: float, iou_thres: float,
                             max_det: int | None, multi_label: bool, num_classes: int,
                             proto: torch.Tensor | None) -> list[Detections]:
    """`postprocess` with one NMS over the whole batch (each (image, class) its own group; boxes in float64 so the
    group offsets cost no precision) and one copy of every kept row to the host."""
    preds = raw.transpose(1, 2)  # (B, A, 4+C+M)
    picks = [candidates(rows[4:4 + num_classes], conf_thres, multi_label) for rows in raw]
    image = torch.cat([torch.full_like(anchor, i) for i, (anchor, _, _) in enumerate(picks)])
    anchor, cls, score = (torch.cat([p[k] for p in picks]) for k in range(3))
    rows = preds[image, anchor]
    xyxy = xywh_to_xyxy(rows[:, :4])
    keep = batched_nms(xyxy.double(), score.double(), image * num_classes + cls, iou_thres)  # by decreasing score
    keep = keep[torch.sort(image[keep], stable=True).indices]  # image by image, each by decreasing score
    counts = torch.bincount(image[keep], minlength=len(preds))
    if max_det is not None:  # the max_det best of each image
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(keep), device=keep.device) - starts.repeat_interleave(counts)
        keep = keep[rank < max_det]
        counts = counts.clamp(max=max_det)
    packed = torch.cat([xyxy[keep], score[keep, None], cls[keep, None].to(xyxy.dtype), rows[keep, 4:]], 1)
    host = packed.float().cpu().numpy()
    results = []
    for i, (part, box) in enumerate(zip(np.split(host, np.cumsum(counts.cpu().numpy())[:-1]), boxes)):
        original = box.to_original(part[:, :4])
        coefficients = part[:, 6 + num_classes:].copy() if proto is not None else None
        results.append(Detections(xyxy=original, conf=part[:, 4].copy(), cls=part[:, 5].astype(np.int64),
                                  probs=part[:, 6:6 + num_classes].copy(),
                                  masks=image_masks(proto, i, coefficients, box, original)))
    return results


# ---------------------------------------------------------------- embeddings from the same forward

EMBEDDING_VERSION = "neck-masked-gem3-l2-v1"  # in the shards' fingerprint: another pooling, other side files
GEM_P = 3.0  # generalised-mean exponent: 1 = average pooling, ∞ = max pooling (docs/mining.md#selection)


def pool_levels(levels: Sequence[torch.Tensor], canvas: tuple[int, int], boxes: Sequence[Letterbox]) -> np.ndarray:
    """(B, D) float16 image embeddings from the head's input feature maps (B, C_l, h_l, w_l): per level and
    channel the generalised mean (mean of x^p)^(1/p), x clamped to > 0 (SiLU outputs dip to -0.28), over the cells
    whose centre lies on the image itself (every cell when none does), L2-normalised; the levels concatenated and
    divided by sqrt(levels), so every row has unit length and each level weighs the same (Radenović, Tolias,
    Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2019: GeM pooling)."""
    parts = []
    for feature in levels:
        feature = feature.float()
        b, _, h, w = feature.shape
        sy, sx = canvas[0] / h, canvas[1] / w
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) * sy
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) * sx
        mask = torch.zeros((b, 1, h, w), dtype=torch.float32)
        for i, box in enumerate(boxes):
            rows = (ys >= box.pad_y) & (ys < box.pad_y + box.height * box.ratio)
            cols = (xs >= box.pad_x) & (xs < box.pad_x + box.width * box.ratio)
            inside = rows[:, None] & cols[None, :]
            mask[i, 0] = inside.float() if inside.any() else 1.0
        mask = mask.to(feature.device)
        pooled = ((feature.clamp(min=1e-6).pow(GEM_P) * mask).sum((2, 3)) / mask.sum((2, 3))).pow(1.0 / GEM_P)
        parts.append(torch.nn.functional.normalize(pooled, dim=1))
    joined = torch.cat(parts, 1) / np.sqrt(len(parts))
    return joined.cpu().numpy().astype(np.float16)


class EmbeddingTap:
    """What one forward of one batch leaves behind for the executor: armed for a batch's canvases, the forward
    that receives exactly that array keeps its raw output (for boxes the scorer did not ask for) and, when the
    detector can, the batch's embeddings. Shared by the shallow copies of a detector (with_postprocess)."""

    def __init__(self):
        self.canvases = None
        self.boxes = None
        self.raw = None
        self.proto = None     # a segmentation model's mask prototypes of that forward
        self.embeddings = None
        self.active = False   # inside the armed forward
        self.features = None  # the head's inputs seen during that forward
        self.dim = 0          # embedding length once the detector's enable_embeddings() succeeded
        self.seconds = 0.0    # spent pooling embeddings (their whole cost when the forward runs anyway)

    def arm(self, batch: Batch) -> None:
        self.canvases, self.boxes, self.raw, self.proto, self.embeddings = batch.canvases, batch.boxes, None, None, None

    def clear(self) -> None:
        self.canvases = self.boxes = self.raw = self.proto = self.embeddings = self.features = None
        self.active = False

    def wants(self, canvases) -> bool:
        return self.canvases is not None and canvases is self.canvases and self.raw is None

    def keep(self, raw: torch.Tensor, features, proto: torch.Tensor | None = None) -> None:
        self.raw, self.proto = raw, proto
        if features is not None:
            started = time.perf_counter()
            self.embeddings = pool_levels(features, self.canvases.shape[1:3], self.boxes)
            self.seconds += time.perf_counter() - started
        self.features, self.active = None, False


# ---------------------------------------------------------------- detectors

class Detector:
    """A loaded detection or segmentation model with its post-processing settings. Subclasses implement `head`.

    `img_size`: the long side of every network input; `rect_stride`: canvases may be any rectangle of
    multiples of it (None: only img_size × img_size). `task`: 'detect' or 'segment' (Ultralytics' words);
    `num_masks`: the mask coefficients per box of a segmentation model (0 for detection)."""
    names: list[str]
    img_size: int
    device: torch.device
    strides = DEFAULT_STRIDES
    rect_stride: int | None = None
    task = "detect"
    num_masks = 0

    def __init__(self, weights: str, conf_thres: float, iou_thres: float, max_det: int):
        self.weights = weights
        self.conf_thres, self.iou_thres, self.max_det = conf_thres, iou_thres, max_det
        self.multi_label = False
        self.tap = EmbeddingTap()

    @property
    def embedding_dim(self) -> int:
        """> 0 once enable_embeddings() succeeded (on this detector or a copy: they share the tap)."""
        return self.tap.dim

    def enable_embeddings(self) -> bool:
        """Make armed forwards also keep embeddings; False (with a warning) where this model cannot."""
        return False

    def embed(self, batch: Batch) -> np.ndarray | None:
        """(B, D) float16 embeddings of `batch`: those its armed forward kept, else one forward now (an algorithm
        that never forwards, such as random). None when embeddings are not enabled."""
        if not self.embedding_dim:
            return None
        if self.tap.canvases is not batch.canvases:
            self.tap.arm(batch)
        if self.tap.embeddings is None:
            self.tap.raw = None
            self.forward(batch.canvases)
        return self.tap.embeddings

    def tapped_detections(self, batch: Batch) -> list[Detections]:
        """This detector's own detections of `batch`, from the raw output of its armed forward when there was
        one (no second forward), else predicted now."""
        if self.tap.canvases is batch.canvases and self.tap.raw is not None:
            return postprocess(self.tap.raw, batch.boxes, self.conf_thres, self.iou_thres, self.max_det,
                               self.multi_label, num_classes=self.num_classes, proto=self.tap.proto)
        return self.predict(batch)

    def with_postprocess(self, conf_thres: float, iou_thres: float, max_det: int,
                         multi_label: bool = False) -> "Detector":
        """The same loaded model with other NMS settings (a shallow copy: the network is shared)."""
        other = copy.copy(self)
        other.conf_thres, other.iou_thres, other.max_det = conf_thres, iou_thres, max_det
        other.multi_label = multi_label
        return other

    @property
    def uses_cpu_cores(self) -> bool:
        """The forward runs on this process's CPU cores (decoding meanwhile would take them from it)."""
        return self.device.type == "cpu"

    def input_size(self, img_size: int) -> int:
        """The network input size this detector makes of a requested img_size (a stride multiple)."""
        return round_up(img_size, max(self.strides))

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def head(self, canvases: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, H, W, 3) uint8 RGB letterboxed images → raw head output (B, 4+C+M, A) on self.device and, for a
        segmentation model, its mask prototypes (B, M, H/4, W/4) (None for detection)."""
        raise NotImplementedError

    def forward(self, canvases: np.ndarray) -> torch.Tensor:
        """The raw head output (B, 4+C+M, A) of `head`."""
        return self.head(canvases)[0]

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return letterbox(image, self.img_size, self.rect_stride)

    def letterbox_on_device(self, image: torch.Tensor) -> tuple[torch.Tensor, Letterbox]:
        """letterbox of an (H, W, 3) uint8 tensor, on its device (the same geometry, within rounding)."""
        from executor.gpu_decode import letterbox_tensor

        return letterbox_tensor(image.permute(2, 0, 1), self.img_size, self.rect_stride)

    def predict_canvases(self, canvases: np.ndarray, boxes: Sequence[Letterbox], conf_thres: float | None = None,
                         capped: bool = True) -> list[Detections]:
        conf = self.conf_thres if conf_thres is None else conf_thres
        raw, proto = self.head(canvases)
        return postprocess(raw, boxes, conf, self.iou_thres, self.max_det if capped else None, self.multi_label,
                           num_classes=self.num_classes, proto=proto)

    def predict(self, batch: Batch, conf_thres: float | None = None, capped: bool = True) -> list[Detections]:
        return self.predict_canvases(batch.canvases, batch.boxes, conf_thres, capped)

    def predict_maps(self, batch: Batch) -> list[torch.Tensor]:
        """Only the dense class maps, without the NMS nobody would read."""
        return class_maps(self.forward(batch.canvases), batch.canvases.shape[1:3], self.strides, self.num_classes)

    def predict_views(self, views: Sequence[np.ndarray], batch_size: int) -> list[Detections]:
        """Detections of extra images, each letterboxed like a candidate, forwarded in same-shape chunks; views
        that are (H, W, 3) tensors (made on the device from originals decoded there) are letterboxed there."""
        prepared = [self.letterbox_on_device(view) if isinstance(view, torch.Tensor) else self.letterbox(view)
                    for view in views]
        found: list[Detections | None] = [None] * len(views)
        for chunk in same_shape_chunks([canvas for canvas, _ in prepared], batch_size):
            stack = torch.stack if isinstance(prepared[chunk[0]][0], torch.Tensor) else np.stack
            canvases = stack([prepared[k][0] for k in chunk])
            for k, det in zip(chunk, self.predict_canvases(canvases, [prepared[k][1] for k in chunk])):
                found[k] = det
        return found


class TorchDetector(Detector):
    def __init__(self, weights: str, device: torch.device, img_size: int, threads: int, pin_memory: bool = False,
                 **post):
        super().__init__(weights, **post)
        self.device = device
        net, names, strides, self.task, self.num_masks = load_torch_model(weights)
        self.class_net = ClassMapsNet(net) if ClassMapsNet.serves(net) else None
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

    def network_input(self, canvases: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 canvases → the network's input: float [0, 1] NCHW on the device (channels_last on
        CPU: ~30% faster convolutions there)."""
        if isinstance(canvases, torch.Tensor):  # letterboxed on the device already (gpu_decode)
            x = canvases
        else:
            x = torch.from_numpy(canvases)
            if self.pin_memory:  # page-locked host memory: the copy to the GPU runs asynchronously
                x = x.pin_memory()
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cpu" else x

    @torch.inference_mode()
    def predict_maps(self, batch: Batch) -> list[torch.Tensor]:
        """The class branch alone, unless this forward is armed for the executor (the raw output it keeps
        needs the whole head)."""
        if self.class_net is None or self.tap.wants(batch.canvases):
            return super().predict_maps(batch)
        return self.class_net(self.network_input(batch.canvases))

    @torch.inference_mode()
    def head(self, canvases: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.network_input(canvases)
        tap = self.tap if self.tap.wants(canvases) else None
        if tap is not None:
            tap.active = True
        try:
            out = self.net(x)
        finally:
            if tap is not None:
                tap.active = False
        raw, proto = head_outputs(out)
        if tap is not None:
            tap.keep(raw, tap.features if self.embedding_dim else None, proto)
        return raw, proto

    def enable_embeddings(self) -> bool:
        if self.embedding_dim:
            return True
        head = self.net.model[-1]
        tap = self.tap

        def grab(module, args):  # the head's inputs: one feature map per level, before the head changes them
            if tap.active:
                tap.features = list(args[0])

        head.register_forward_pre_hook(grab)
        self.tap.dim = sum(int(m.conv.in_channels) if hasattr(m, "conv") else int(m.in_channels)
                           for m in (seq[0] for seq in head.cv2))
        log.info("embeddings: the Detect head's %d input channels, pooled per level, from the same forward",
                 self.embedding_dim)
        return True


class ClassMapsNet(torch.nn.Module):
    """An Ultralytics detection or segmentation model up to its head, then only the head's class branch: the
    sigmoid class maps (B, C, h_l, w_l) per level, finest first, equal to the class rows of the whole head's
    output. The layers are the model's own (shared, not copied), routed as its forward routes them: layer
    `f` names the earlier outputs a layer reads (-1: the previous one), `save` which outputs are kept."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.layers, self.save = net.model, set(net.save)

    @staticmethod
    def serves(net: torch.nn.Module) -> bool:
        head = net.model[-1]
        return (type(head).__name__ in CLASS_BRANCH_HEADS and not head.end2end
                and getattr(head, "cv3", None) is not None and len(head.cv3) == head.nl)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        *body, head = self.layers
        kept = []
        for layer in body:
            if layer.f != -1:
                x = kept[layer.f] if isinstance(layer.f, int) else [x if j == -1 else kept[j] for j in layer.f]
            x = layer(x)
            kept.append(x if layer.i in self.save else None)
        features = [x if j == -1 else kept[j] for j in head.f]
        return [branch(level).sigmoid() for branch, level in zip(head.cv3, features)]


def head_outputs(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(raw, prototypes or None) of an Ultralytics model's eval output: Detect returns (raw, per-level maps),
    Segment ((raw, prototypes), per-level maps)."""
    first = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(first, (tuple, list)):
        return first[0], first[1]
    return first, None


def load_torch_model(weights: str):
    """(fused eval torch module, class names, strides, task, mask coefficients per box) from an Ultralytics
    detection or segmentation checkpoint."""
    if not os.path.isfile(weights):  # a bare name would make Ultralytics try to download it
        raise ModelError(f"weights file not found: {weights}")
    from ultralytics import YOLO  # imported here so that ONNX-only runs never pay for it

    try:
        model = YOLO(weights, task=None)
    except Exception as exc:  # corrupt pickle, wrong format, unknown architecture ...
        raise ModelError(f"cannot load weights {weights}: {type(exc).__name__}: {exc}") from exc
    if model.task not in TASKS_SERVED:
        raise ModelError(f"weights {weights} are a {task_words(model.task)} model; a detection or segmentation model "
                         "is needed")
    # verbose=False: the default also counts the model's FLOPs (a deep copy and a profiled forward, ~1 s on CPU)
    net = model.model.fuse(verbose=False) if hasattr(model.model, "fuse") else model.model
    head = net.model[-1]
    if getattr(head, "end2end", False):
        head.end2end = False  # keep the dense one-to-many output that NMS and ALDD work on
    names = [str(model.names[i]) for i in sorted(model.names)]
    strides = tuple(int(s) for s in head.stride.tolist())
    return net, names, strides, model.task, int(getattr(head, "nm", 0)) if model.task == "segment" else 0


class OnnxDetector(Detector):
    """ONNX Runtime on an Ultralytics ONNX export: output0 = (B, 4+C+M, A), same as the torch head, and for a
    segmentation export (metadata task 'segment') output1 = the prototypes (B, M, H/4, W/4)."""

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
        # threads that sleep between runs, like torch's (OMP_WAIT_POLICY=PASSIVE): spinning ones take the CPUs
        # from whatever else runs in or beside this process
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        outputs = self.session.get_outputs()
        if meta.get("task", "detect") not in TASKS_SERVED:
            raise ModelError(f"ONNX model {weights} is a {task_words(meta['task'])} model; a detection or "
                             "segmentation model is needed")
        if meta.get("task") == "segment" or (len(outputs) > 1 and len(outputs[1].shape) == 4):
            self.task, self.num_masks = "segment", int(outputs[1].shape[1])
        self.head_names = [o.name for o in outputs[:2 if self.num_masks else 1]]
        num_classes = int(outputs[0].shape[1]) - 4 - self.num_masks
        self.names = onnx_class_names(meta.get("names"), num_classes)
        self.options, self.providers = options, providers
        self.feature_outputs: list[str] = []

    def enable_embeddings(self) -> bool:
        """Reload the model with the Detect head's inputs as extra outputs (the same graph: output0 is computed
        exactly as before). False, with a warning, when the head's first convolutions cannot be found."""
        if self.embedding_dim:
            return True
        import onnxruntime as ort

        try:
            model, names, channels = onnx_with_head_inputs(self.weights)
            session = ort.InferenceSession(model.SerializeToString(), self.options, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 — any failure here means: no embeddings, mining goes on
            log.warning("ONNX model %s: no embeddings (%s: %s); selection 'diverse' falls back to the score order",
                        self.weights, type(exc).__name__, exc)
            return False
        self.session, self.feature_outputs, self.tap.dim = session, names, sum(channels)
        log.info("embeddings: ONNX outputs %s (%d channels) from the same forward", ", ".join(names),
                 self.embedding_dim)
        return True

    def input_size(self, img_size: int) -> int:
        return self.fixed_size or super().input_size(img_size)

    @property
    def uses_cpu_cores(self) -> bool:  # outputs come back as CPU tensors whichever provider ran the graph
        return "CUDAExecutionProvider" not in self.session.get_providers()

    def head(self, canvases: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = np.ascontiguousarray(canvases.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        step = self.fixed_batch or len(x)
        tap = self.tap if self.tap.wants(canvases) else None
        wanted = self.head_names + (self.feature_outputs if tap is not None else [])
        runs = [self.session.run(wanted, {self.input_name: x[i:i + step]}) for i in range(0, len(x), step)]
        joined = [torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0]) for parts in zip(*runs)]
        heads, features = joined[:len(self.head_names)], joined[len(self.head_names):]
        raw, proto = heads[0], (heads[1] if self.num_masks else None)
        if tap is not None:
            tap.keep(raw, features if self.feature_outputs else None, proto)
        return raw, proto


def onnx_with_head_inputs(weights: str):
    """(onnx model with extra graph outputs, their names, their channel counts): the inputs of the first
    convolution of each level's box branch (`/model.N/cv2.i/cv2.i.0/...Conv` in an Ultralytics export, N the
    head's module index), i.e. the neck's P3, P4, P5 feature maps that the Detect head receives."""
    import re

    import onnx

    model = onnx.load(weights)
    graph = model.graph
    pattern = re.compile(r"^/model\.(\d+)/cv2\.(\d+)/cv2\.\2\.0/")
    found: dict[int, tuple[int, str, str]] = {}
    for node in graph.node:
        match = pattern.match(node.name)
        if match and node.op_type == "Conv":
            level = int(match.group(2))
            module = int(match.group(1))
            if level not in found or module > found[level][0]:
                found[level] = (module, node.input[0], node.input[1])
    if not found or sorted(found) != list(range(len(found))) or len({m for m, _, _ in found.values()}) != 1:
        raise ModelError("no Detect head input found (expected the convolutions /model.N/cv2.i/cv2.i.0/…)")
    weights_by_name = {init.name: init for init in graph.initializer}
    names, channels = [], []
    for level in sorted(found):
        _, tensor, kernel = found[level]
        if kernel not in weights_by_name:
            raise ModelError(f"the head convolution's weight {kernel} is not an initializer")
        names.append(tensor)
        channels.append(int(weights_by_name[kernel].dims[1]))
    existing = {o.name for o in graph.output}
    for name in names:
        if name not in existing:
            graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model, names, channels


def onnx_class_names(text: str | None, num_classes: int) -> list[str]:
    """Class names from an Ultralytics export's metadata (a dict literal); numbered names when absent."""
    if text:
        try:
            names = ast.literal_eval(text)  # a literal only: never evaluates code
            return [str(names[i]) for i in sorted(names)]
        except (ValueError, SyntaxError, TypeError, KeyError):
            log.warning("ONNX metadata 'names' is unreadable; using numbered class names")
    return [f"class{i}" for i in range(num_classes)]


def model_task(weights: str) -> str | None:
    """The Ultralytics task of a weights file ('detect', 'segment', ...) without preparing it for inference: an
    ONNX export's metadata, a checkpoint's model; None when the file does not say or cannot be read (loading it
    will report why)."""
    try:
        if weights.lower().endswith(".onnx"):
            import onnx

            meta = {p.key: p.value for p in onnx.load(weights, load_external_data=False).metadata_props}
            return meta.get("task", "detect")
        from ultralytics import YOLO

        return YOLO(weights, task=None).task
    except Exception:  # noqa: BLE001 — the loader names the problem with its own error code
        return None


def load_detector(weights: str, backend: str, gpu_id: str, img_size: int, *, conf_thres: float, iou_thres: float,
                  max_det: int, class_names: Sequence[str] = (), pin_memory: bool = False,
                  threads: int = 0, task: str | None = None) -> Detector:
    """The detector for `weights` (.pt → PyTorch, .onnx → ONNX Runtime, unless `backend` says so); `threads`:
    CPU threads (0: executor.runtime.cpu_threads' choice); `task`: the family this image serves ('detect',
    'segment'): a model of the other family is a ModelError naming both (None: whichever the model is)."""
    device = select_device(gpu_id)
    use_onnx = backend == "onnx" or (backend == "auto" and weights.lower().endswith(".onnx"))
    detector = (OnnxDetector if use_onnx else TorchDetector)(
        weights, device, img_size, cpu_threads(threads), pin_memory=pin_memory, conf_thres=conf_thres,
        iou_thres=iou_thres, max_det=max_det)
    if task and detector.task != task:
        raise ModelError(f"model {weights} is a {task_words(detector.task)} model, but this image serves "
                         f"{task_words(task)} models; give a {TASK_WORDS[task]} model (or use the "
                         f"{TASK_WORDS[detector.task]} image)")
    if class_names:
        if len(class_names) != detector.num_classes:
            raise ConfigError(f"config key 'class_names' has {len(class_names)} names but the model {weights} "
                              f"predicts {detector.num_classes} classes")
        detector.names = list(class_names)
    log.info("loaded %s (%s, %s, %d classes, img_size %d) on %s", weights, type(detector).__name__,
             TASK_WORDS[detector.task], detector.num_classes, detector.img_size, detector.device)
    return detector


def export_onnx(weights: str, target: str, img_size: int, opset: int, dynamic: bool = False) -> None:
    """ONNX export of `weights` (detection or segmentation) with the raw head output the detector expects (and a
    segmentation model's prototypes as a second output): a static 1×3×img_size² input
    (what platforms import), or with `dynamic` any batch, height and width (rectangular batches)."""
    import shutil
    import tempfile

    from ultralytics import YOLO

    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(target))) as scratch:
        copy = os.path.join(scratch, os.path.splitext(os.path.basename(target))[0] + ".pt")
        shutil.copyfile(weights, copy)  # Ultralytics writes the .onnx next to the weights it exports
        threads = torch.get_num_threads()
        produced = YOLO(copy).export(format="onnx", imgsz=img_size, opset=opset or None,
                                                    simplify=True, dynamic=dynamic, device="cpu")
        torch.set_num_threads(threads)  # the exporter's CPU device set-up lowers it
        os.replace(str(produced), target)
