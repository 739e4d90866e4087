"""A small fake detector for scorer wiring tests: predictions are a pure function of each image's pixels,
so they do not depend on the batch, and every call is recorded."""
import numpy as np
import torch

from mining.base import Batch, Detections

NUM_CLASSES = 3


def fake_detections(image: np.ndarray, conf_thres: float) -> Detections:
    """Boxes from the image's mean colour: one box per colour channel whose mean / 255 exceeds conf_thres."""
    h, w = image.shape[:2]
    means = image.reshape(-1, 3).mean(0) / 255.0
    rows = [c for c in range(3) if means[c] > conf_thres]
    xyxy = np.array([[w * 0.1 * (c + 1), h * 0.1, w * 0.5, h * 0.5 + c] for c in rows], np.float32).reshape(-1, 4)
    probs = np.zeros((len(rows), NUM_CLASSES), np.float32)
    for i, c in enumerate(rows):
        probs[i] = [means[c] * 0.5, means[c], means[c] * 0.25][::1 if c % 2 else -1]
    conf = probs.max(1) if len(rows) else np.zeros(0, np.float32)
    return Detections(xyxy, conf.astype(np.float32), probs.argmax(1).astype(np.int64) if len(rows) else
                      np.zeros(0, np.int64), probs)


def image_batch(keys, images, names=None) -> Batch:
    canvases = np.stack([image[:32, :32] for image in images])
    return Batch(list(keys), list(images), canvases, [None] * len(keys), names=names)


class FakeDetector:
    num_classes = NUM_CLASSES

    def __init__(self, conf_thres: float = 0.25):
        self.conf_thres = conf_thres
        self.calls: list[tuple] = []

    def predict(self, batch: Batch, conf_thres=None, capped=True):
        self.calls.append(("predict", len(batch.keys), conf_thres, capped))
        conf = self.conf_thres if conf_thres is None else conf_thres
        return [fake_detections(image, conf) for image in batch.images]

    def predict_maps(self, batch: Batch):
        self.calls.append(("predict_maps", len(batch.keys)))
        x = torch.from_numpy(batch.canvases).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, 32, 32)
        return [x, x[..., ::2, ::2].contiguous(), x[..., ::4, ::4].contiguous()]

    def predict_views(self, views, batch_size):
        self.calls.append(("predict_views", len(views), batch_size))
        return [fake_detections(view, self.conf_thres) for view in views]


def random_images(count: int, seed: int = 0, size=(48, 64)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


class GivenMasks:
    """mining.base.InstanceMasks of masks already encoded (COCO RLE, one per detection)."""

    def __init__(self, rles):
        self._rles = list(rles)

    def rles(self):
        return self._rles

    def subset(self, keep):
        return GivenMasks([self._rles[k] for k in np.asarray(keep).reshape(-1)])
