"""The inference adapter, what its two backends share (torch_detector.py, onnx_detector.py); loading.py is the
only module that loads a model for prediction (training: executor/engine/trainer.py).

It turns a YOLOv8/YOLO11 detection or instance-segmentation checkpoint (or its ONNX export) into our own types
once. One forward pass of a letterboxed batch yields the head's decoded output `raw` (B, 4 + C + M, A): per
anchor point a box (cx, cy, w, h in network-input pixels), C independent sigmoid class probabilities (the head
is anchor-free and has no objectness) and, for a segmentation model, M mask coefficients (M = 0 for detection),
with the M mask prototypes (B, M, H/4, W/4) of a segmentation model beside it. From that we take
- post-NMS `Detections` per image, each box with its full class-probability vector and, for a segmentation
  model, its mask (made from the prototypes only when asked for: executor.engine.masks.PredictedMasks), and
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

import copy
from typing import Sequence

import numpy as np
import torch

from executor.engine.embeddings import EmbeddingTap
from executor.engine.gpu_decode import letterbox_tensor
from executor.engine.images import Letterbox, letterbox, round_up, same_shape_chunks
from executor.engine.postprocess import DEFAULT_STRIDES, class_maps, postprocess
from mining.base import Batch, Detections


TASKS_SERVED = ("detect", "segment")  # the Ultralytics tasks this adapter predicts with


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
