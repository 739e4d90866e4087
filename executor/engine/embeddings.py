"""Embeddings from the detector's forward (selection: diverse): the tap that keeps one batch's raw output and
the neck's three feature maps, GeM-pooled over the image's cells, L2-normalised per level, concatenated.
"""

import time
from typing import Sequence

import numpy as np
import torch

from executor.engine.images import Letterbox
from mining.base import Batch


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
