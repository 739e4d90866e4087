"""A fake detector for driving the pipeline end to end in this process (mining, infer, selection, the report)
in milliseconds, through the one seam where the pipeline loads a model: executor.pipeline.passes.Models.load.

    tasks.run(make_plan(["mining", "infer"], job, config), models=fake_models())   a caller that passes its Models
    the `fake_detector` fixture (tests/conftest.py)                         start.run_platform, the CLI in process

PixelDetector is an executor.engine.detector.Detector whose head is a pure function of the letterboxed canvas:
per head level (strides 8, 16, 32) each cell's mean colour gives the class probabilities (class c follows
channel c % 3, cubed, and a little less sure for every further class: only bright cells pass conf_thres) and a box of four strides around the cell. Everything
after the head is the product's own (NMS, letterbox geometry, class maps, the forward, views for CALD), so the
scores and boxes are deterministic, differ between images and depend only on the pixels. Embeddings are the
levels' pooled colours. The weights file must exist (shards fingerprint it); its content is never read.
A fault is injected with a `load` that raises, or a PixelDetector subclass that raises in `head`.
"""
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from executor.engine.detector import Detector
from executor.pipeline.passes import Models

NAMES = ("red", "green", "blue")


class PixelDetector(Detector):
    device = torch.device("cpu")
    rect_stride = 32

    def __init__(self, weights: str, img_size: int, names: Sequence[str] = NAMES, *, conf_thres: float = 0.25,
                 iou_thres: float = 0.45, max_det: int = 100):
        super().__init__(weights, conf_thres, iou_thres, max_det)
        self.names = list(names)
        self.img_size = self.input_size(img_size)
        self.forwards = 0  # canvases forwarded: what a test may count

    def levels(self, canvases) -> list[torch.Tensor]:
        """Each level's cell colours (B, 3, H/s, W/s) in [0, 1]."""
        x = torch.as_tensor(np.ascontiguousarray(canvases)).permute(0, 3, 1, 2).float() / 255.0
        return [F.avg_pool2d(x, stride) for stride in self.strides]

    def head(self, canvases, features: bool = False) -> tuple[torch.Tensor, None, list | None]:
        self.forwards += len(canvases)
        levels = self.levels(canvases)
        channel = torch.arange(self.num_classes) % 3
        sharpen = 3.0 + 0.05 * torch.arange(self.num_classes, dtype=torch.float32)
        rows = []
        for stride, colours in zip(self.strides, levels):
            b, _, h, w = colours.shape
            ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                    indexing="ij")
            size = torch.full((h, w), 4.0 * stride)
            boxes = torch.stack([(xs + 0.5) * stride, (ys + 0.5) * stride, size, size]).reshape(4, -1)
            probs = colours[:, channel].reshape(b, self.num_classes, -1) ** sharpen[None, :, None]
            rows.append(torch.cat([boxes.expand(b, 4, -1), probs], 1))
        return torch.cat(rows, 2), None, levels if features else None

    def enable_embeddings(self) -> bool:
        self.embedding_dim = 3 * len(self.strides)
        return True


def pixel_load(weights: str, backend: str, gpu_id: str, img_size: int, *, conf_thres: float, iou_thres: float,
               max_det: int, class_names: Sequence[str] = (), task: str | None = None, **ignored) -> PixelDetector:
    """executor.engine.loading.load_detector's signature: a PixelDetector with the config's class names."""
    return PixelDetector(weights, img_size, class_names or NAMES, conf_thres=conf_thres, iou_thres=iou_thres,
                         max_det=max_det)


def fake_models() -> Models:
    """Models that load a PixelDetector for any weights file."""
    return Models(load=pixel_load)
