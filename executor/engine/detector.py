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

A forward is a value, `Forward`: one batch's raw output, prototypes, letterbox boxes and, when asked for, its
class-branch maps or embeddings. A batch holds the one it needs (`Batch.forward`, made by `forward_of`), so the
scorer's predictions, infer's records and the side data's boxes and embeddings read the same forward, each at its
own thresholds (`detections`, `maps`), and nothing of it outlives the batch. A forward made for class maps
alone runs the class branch only (torch); one that anything else reads runs the whole network.

Test-time augmentation (infer's `augment`): a detector made by `augmented()` runs Ultralytics' own augmented
forward (the canvas at scales 1, 0.83 flipped left-right and 0.67, its outputs mapped back onto the canvas and
joined before our one NMS); its forwards carry another model_key, so nothing else reads them (mining never sees an
augmented forward). Only a PyTorch detection model with Ultralytics' plain Detect head has that forward (its
segmentation, end-to-end and ONNX paths have none): anything else is a ConfigError naming the key.

Embeddings (selection: diverse), once `enable_embeddings()` was called and a forward asks for them, come from
the same forward: the inputs of the Detect head (the neck's three feature maps P3, P4, P5), each GeM-pooled
(generalised mean, p = 3) over the cells that lie on the image (not its letterbox padding), L2-normalised per
level and concatenated (/sqrt 3: unit length), float16 (executor.engine.embeddings). Torch: a forward pre-hook
on the head for that forward; ONNX: the same three tensors added as graph outputs of the loaded model (found by
the head's first convolution of each level), or, when they cannot be found, no embeddings and a warning.
"""

import copy
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from executor.engine.embeddings import pool_levels
from executor.engine.gpu_decode import letterbox_tensor
from executor.engine.images import Letterbox, letterbox, round_up, same_shape_chunks
from executor.engine.postprocess import DEFAULT_STRIDES, class_maps, postprocess
from executor.errors import ConfigError
from mining.base import Batch, Detections


TASKS_SERVED = ("detect", "segment")  # the Ultralytics tasks this adapter predicts with


def augment_refused(why: str) -> ConfigError:
    """The error of `augment: true` for a model that Ultralytics' augmented forward does not serve (`why`)."""
    return ConfigError(f"config key 'augment': test-time augmentation needs a PyTorch detection model (Ultralytics' "
                       f"augmented forward serves no other), but {why}; turn it off")


# ---------------------------------------------------------------- one batch's forward

@dataclass
class Forward:
    """One forward of one batch of canvases: what every consumer of that batch's predictions reads."""
    model: tuple                          # Detector.model_key of the model that made it: no other model reads it
    canvas: tuple[int, int]               # (height, width) of the network input
    boxes: Sequence[Letterbox]            # how each original maps into its canvas
    raw: torch.Tensor | None = None       # (B, 4+C+M, A) pre-NMS head output; None: the class branch ran alone
    proto: torch.Tensor | None = None     # (B, M, H/4, W/4) mask prototypes of a segmentation model
    maps: list[torch.Tensor] | None = None  # the class branch's maps (B, C, h_l, w_l), when it ran alone
    embeddings: np.ndarray | None = None  # (B, D) float16, when asked for
    pool_seconds: float = 0.0             # spent pooling the embeddings

    def serves(self, model: tuple, maps_only: bool, embeddings: bool) -> bool:
        """It is `model`'s, and holds what a reader needs: the raw output unless class maps suffice, and the
        embeddings when asked for."""
        return (self.model == model and (maps_only or self.raw is not None)
                and (not embeddings or self.embeddings is not None))


# ---------------------------------------------------------------- detectors

class Detector:
    """A loaded detection or segmentation model with its post-processing settings. Subclasses implement `head`
    (and `class_branch` where they have a cheaper way to the class maps).

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
    embedding_dim = 0  # > 0 once enable_embeddings() succeeded (copies made afterwards inherit it)
    augment = False    # forwards are Ultralytics' augmented ones (augmented())

    def __init__(self, weights: str, conf_thres: float, iou_thres: float, max_det: int):
        self.weights = weights
        self.conf_thres, self.iou_thres, self.max_det = conf_thres, iou_thres, max_det
        self.multi_label = False

    @property
    def model_key(self) -> tuple:
        """What a forward depends on besides its canvases: detectors with equal keys (the copies with_postprocess
        makes) compute equal forwards, so each reads the other's."""
        return type(self).__name__, self.weights, self.img_size, str(self.device), self.augment

    def enable_embeddings(self) -> bool:
        """Let forwards that ask for embeddings pool them; False (with a warning) where this model cannot."""
        return False

    def with_postprocess(self, conf_thres: float, iou_thres: float, max_det: int,
                         multi_label: bool = False) -> "Detector":
        """The same loaded model with other NMS settings (a shallow copy: the network is shared)."""
        other = copy.copy(self)
        other.conf_thres, other.iou_thres, other.max_det = conf_thres, iou_thres, max_det
        other.multi_label = multi_label
        return other

    def augmented(self) -> "Detector":
        """The same loaded model whose forwards are test-time augmented; a ConfigError where it has none."""
        raise augment_refused(f"{type(self).__name__} runs {self.weights}")

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

    def head(self, canvases: np.ndarray, features: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor] | None]:
        """(B, H, W, 3) uint8 RGB letterboxed images → raw head output (B, 4+C+M, A) on self.device, for a
        segmentation model its mask prototypes (B, M, H/4, W/4) (else None), and with `features` (embeddings
        enabled) the head's input feature maps (B, C_l, h_l, w_l) per level (else None)."""
        raise NotImplementedError

    def class_branch(self, canvases: np.ndarray) -> list[torch.Tensor] | None:
        """The class maps per level from less than the whole network; None where this backend has no such part."""
        return None

    @torch.inference_mode()
    def forward(self, canvases: np.ndarray, boxes: Sequence[Letterbox], maps_only: bool = False,
                embeddings: bool = False) -> Forward:
        """One forward of `canvases` now: the class branch alone where `maps_only` and the backend has one, else
        the whole network, pooling the embeddings when asked for (and enabled)."""
        canvas = tuple(canvases.shape[1:3])
        embeddings = embeddings and self.embedding_dim > 0
        maps = self.class_branch(canvases) if maps_only and not embeddings else None
        if maps is not None:
            return Forward(self.model_key, canvas, boxes, maps=maps)
        raw, proto, levels = self.head(canvases, features=embeddings)
        found = Forward(self.model_key, canvas, boxes, raw=raw, proto=proto)
        if levels is not None:
            started = time.perf_counter()
            found.embeddings = pool_levels(levels, canvas, boxes)
            found.pool_seconds = time.perf_counter() - started
        return found

    def forward_of(self, batch: Batch, maps_only: bool = False, embeddings: bool = False) -> Forward:
        """The batch's forward: the one it holds when this model made it with what is asked for, else one made now,
        which the batch then holds for its other readers."""
        embeddings = embeddings and self.embedding_dim > 0
        if batch.forward is None or not batch.forward.serves(self.model_key, maps_only, embeddings):
            batch.forward = self.forward(batch.canvases, batch.boxes, maps_only, embeddings)
        return batch.forward

    def detections(self, forward: Forward, conf_thres: float | None = None, capped: bool = True) -> list[Detections]:
        """Post-NMS detections per image of a whole-network forward, at this detector's NMS settings;
        `conf_thres` overrides its threshold, `capped=False` drops the max_det cut."""
        conf = self.conf_thres if conf_thres is None else conf_thres
        return postprocess(forward.raw, forward.boxes, conf, self.iou_thres, self.max_det if capped else None,
                           self.multi_label, num_classes=self.num_classes, proto=forward.proto)

    def maps(self, forward: Forward) -> list[torch.Tensor]:
        """The dense class maps per level of `forward`: the class branch's, or views of the raw output."""
        if forward.maps is not None:
            return forward.maps
        return class_maps(forward.raw, forward.canvas, self.strides, self.num_classes)

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return letterbox(image, self.img_size, self.rect_stride)

    def letterbox_on_device(self, image: torch.Tensor) -> tuple[torch.Tensor, Letterbox]:
        """letterbox of an (H, W, 3) uint8 tensor, on its device (the same geometry, within rounding)."""
        return letterbox_tensor(image.permute(2, 0, 1), self.img_size, self.rect_stride)

    def predict_canvases(self, canvases: np.ndarray, boxes: Sequence[Letterbox], conf_thres: float | None = None,
                         capped: bool = True) -> list[Detections]:
        """Detections of canvases that are no batch's (evaluation, CALD's views): a forward of their own."""
        return self.detections(self.forward(canvases, boxes), conf_thres, capped)

    def predict(self, batch: Batch, conf_thres: float | None = None, capped: bool = True) -> list[Detections]:
        return self.detections(self.forward_of(batch), conf_thres, capped)

    def predict_maps(self, batch: Batch) -> list[torch.Tensor]:
        """Only the dense class maps, without the NMS nobody would read."""
        return self.maps(self.forward_of(batch, maps_only=True))

    def embed(self, batch: Batch) -> np.ndarray | None:
        """(B, D) float16 embeddings of `batch`, from its forward; None when embeddings are not enabled."""
        return self.forward_of(batch, embeddings=True).embeddings if self.embedding_dim else None

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
