"""What a scorer sees: a batch of decoded images, a detector it may ask for predictions, and the contract
its scores must meet. This package imports nothing from `executor/`: the executor implements `Detector`.

A batch's predictions all come from one forward of its network inputs, which the batch holds once made
(`Batch.forward`): a scorer's predictions, the executor's inference records and side data read that one value,
each at its own thresholds, as every consumer of an Ultralytics prediction reads one `Results`.
"""
import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import torch


class InstanceMasks(Protocol):
    """The masks of a segmentation model's detections, made only when asked for (most scorers never look)."""

    def rles(self) -> list[dict]:
        """One COCO RLE ({size: [h, w], counts: str}) per detection, at the original image's size."""

    def subset(self, keep: np.ndarray) -> "InstanceMasks":
        """The masks of the detections `keep` (indices), in that order."""


@dataclass
class Detections:
    """Post-NMS detections of one image, in original-image pixels. probs[i].max() == conf[i]."""
    xyxy: np.ndarray   # (N, 4) float32
    conf: np.ndarray   # (N,) float32
    cls: np.ndarray    # (N,) int64
    probs: np.ndarray  # (N, C) float32
    masks: InstanceMasks | None = None  # a segmentation model's: one mask per detection; None for detection

    def __post_init__(self):
        n = len(self.conf)
        if self.xyxy.shape != (n, 4) or self.cls.shape != (n,) or self.probs.ndim != 2 or len(self.probs) != n:
            raise ValueError(f"inconsistent detection shapes {self.xyxy.shape} {self.conf.shape} "
                             f"{self.cls.shape} {self.probs.shape}")

    def __len__(self):
        return len(self.conf)

    def subset(self, keep: np.ndarray) -> "Detections":
        """The detections `keep` (indices), in that order, with their masks."""
        masks = None if self.masks is None else self.masks.subset(keep)
        return Detections(self.xyxy[keep], self.conf[keep], self.cls[keep], self.probs[keep], masks)

    @classmethod
    def empty(cls, num_classes: int) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                   np.zeros((0, num_classes), np.float32))


@dataclass
class Batch:
    """Images of one network-input shape, as the executor's loop hands them over."""
    keys: list[str]           # candidate paths, as given
    images: list[np.ndarray]  # originals, RGB uint8 (H, W, 3)
    canvases: np.ndarray      # letterboxed network inputs (B, H, W, 3) uint8, one shape per batch (a torch
    #                           tensor on the detector's device when the executor decoded them there)
    boxes: list[Any]          # how each original maps into its canvas (opaque here: the detector reads it)
    device_images: list | None = None  # the originals as (H, W, 3) uint8 tensors on the detector's device, when
    #                                    the executor decoded them there (CALD builds its views from them)
    names: list[str] | None = None     # the result keys, where they are not the paths (the CLI's: relative to
    #                                    --source); seeds are drawn from them, so a moved pool draws the same
    forward: Any = field(default=None, repr=False, compare=False)  # the batch's one forward once the detector
    #                                    made it (opaque here: the detector makes it and reads it)

    def sizes(self) -> list[tuple[int, int]]:
        """(height, width) of each original (the device's copy where the executor decoded it there)."""
        return [tuple((image if image is not None else on_device).shape[:2])
                for image, on_device in zip(self.images, self.device_images or [None] * len(self.images))]

    def result_keys(self) -> list[str]:
        """What the results call each image (names, else keys): the key of its random stream (image_seed)."""
        return self.names or self.keys


class Detector(Protocol):
    """The predictions a scorer may ask for (executor/engine/ implements them for torch and ONNX). `predict` and
    `predict_maps` read the batch's one forward (`Batch.forward`), made by its first reader that needs it."""
    num_classes: int

    def predict(self, batch: Batch, conf_thres: float | None = None, capped: bool = True) -> list[Detections]:
        """Detections per image; `conf_thres` overrides the detector's own, `capped=False` keeps every box NMS
        keeps (no max_det cut)."""

    def predict_maps(self, batch: Batch) -> list[torch.Tensor]:
        """Dense class-probability maps per head level (B, C, h_l, w_l), without NMS (a forward made for them
        alone may run only the part of the network they come from)."""

    def predict_views(self, views: Sequence[np.ndarray], batch_size: int) -> list[Detections]:
        """Detections of extra images (e.g. augmented views), letterboxed like any candidate."""


def image_seed(seed: int, key: str) -> int:
    """The one per-image random stream: 64 bits that depend only on (seed, key), never on batch or order."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Scorer:
    """One finite score >= 0 per image, higher = label first. Subclasses implement `_score` and declare
    `params`: the names of their keyword arguments, which are the template keys that set them."""
    needs_model = True
    params: tuple[str, ...] = ()

    def _score(self, batch: Batch, detector: Detector | None) -> np.ndarray:
        raise NotImplementedError

    def score(self, batch: Batch, detector: Detector | None) -> np.ndarray:
        """`_score`, checked: (len(batch.keys),) float64, finite, >= 0."""
        scores = np.asarray(self._score(batch, detector), dtype=np.float64)
        if scores.shape != (len(batch.keys),) or not np.isfinite(scores).all() or (scores < 0).any():
            raise RuntimeError(f"{type(self).__name__} broke the scorer contract (one finite score >= 0 per "
                               f"image, {len(batch.keys)} images): {scores}")
        return scores
