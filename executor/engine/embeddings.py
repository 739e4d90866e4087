"""Embeddings from the detector's forward (selection: diverse): the neck's three feature maps that the forward
of a batch hands over (executor.engine.detector.Forward), GeM-pooled over the image's cells, L2-normalised per
level, concatenated.
"""

from typing import Sequence

import numpy as np
import torch

from executor.engine.images import Letterbox


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
