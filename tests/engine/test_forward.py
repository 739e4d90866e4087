"""A batch's one forward (executor.engine.detector.Forward): who makes it, who reads it, on a small fake backend
whose network is a fixed function of its input and counts what runs."""
import numpy as np
import torch

from executor.engine.detector import Detector
from executor.engine.images import letterbox
from executor.engine.postprocess import class_maps
from mining.base import Batch

NAMES = ["a", "b"]


class CountingDetector(Detector):
    """Per anchor a 16-px box at the anchor's cell and class probabilities from the mean grey level there, so
    detections depend on the thresholds; the class branch gives the same class rows, as the torch one does."""
    names = NAMES
    device = torch.device("cpu")
    rect_stride = 32

    def __init__(self, weights: str = "fake.pt", conf_thres: float = 0.25):
        super().__init__(weights, conf_thres=conf_thres, iou_thres=0.45, max_det=100)
        self.img_size, self.ran = 64, []

    def enable_embeddings(self) -> bool:
        self.embedding_dim = 3 * 4
        return True

    def levels(self, canvases: np.ndarray) -> list[torch.Tensor]:
        x = torch.from_numpy(np.asarray(canvases)).permute(0, 3, 1, 2).float() / 255.0
        return [torch.nn.functional.avg_pool2d(x, s).repeat(1, 4, 1, 1)[:, :4] + 0.1 for s in self.strides]

    def class_branch(self, canvases):
        self.ran.append("class branch")
        return self.rows_as_maps(canvases)

    def rows_as_maps(self, canvases) -> list[torch.Tensor]:
        ramp = torch.tensor([0.9, 0.3]).view(1, 2, 1, 1)
        return [level[:, :1].repeat(1, 2, 1, 1) * ramp for level in self.levels(canvases)]

    def head(self, canvases, features=False):
        self.ran.append("whole" + (" with features" if features else ""))
        maps = self.rows_as_maps(canvases)
        rows = []
        for stride, level in zip(self.strides, maps):
            b, _, h, w = level.shape
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            box = torch.stack([(xs + 0.5) * stride, (ys + 0.5) * stride, torch.full_like(xs, 16),
                               torch.full_like(xs, 16)]).float().flatten(1)
            rows.append(torch.cat([box.expand(b, 4, h * w), level.flatten(2)], 1))
        return torch.cat(rows, 2), None, (self.levels(canvases) if features else None)


def ramp_batch(*levels: int) -> Batch:
    """Images that darken from left to right, from each grey level to black."""
    ramp = np.linspace(1, 0, 64)[None, :, None]
    images = [np.broadcast_to(ramp * level, (48, 64, 3)).astype(np.uint8) for level in levels]
    boxed = [letterbox(image, 64, 32) for image in images]
    return Batch([f"img{i}" for i in range(len(images))], images, np.stack([c for c, _ in boxed]),
                 [b for _, b in boxed])


def test_class_maps_alone_run_the_class_branch_and_a_whole_forward_serves_every_later_reader():
    detector, batch = CountingDetector(), ramp_batch(200, 120)
    maps = detector.predict_maps(batch)
    assert detector.ran == ["class branch"] and batch.forward.raw is None
    found = detector.predict(batch)  # boxes need the whole network: it runs once and the batch holds it
    loose = detector.predict(batch, conf_thres=0.01, capped=False)
    again = detector.predict_maps(batch)
    assert detector.ran == ["class branch", "whole"]
    assert all(len(f) < len(lo) for f, lo in zip(found, loose))
    whole = class_maps(batch.forward.raw, batch.forward.canvas, detector.strides, 2)
    assert all(torch.equal(a, w) and torch.equal(m, w) for a, m, w in zip(again, maps, whole))


def test_copies_read_the_forward_of_their_model_and_other_models_run_their_own():
    detector, batch = CountingDetector(), ramp_batch(200, 120)
    detector.predict(batch)
    strict = detector.with_postprocess(0.5, 0.45, 1)
    held = batch.forward
    found = strict.predict(batch)
    assert detector.ran == ["whole"] and batch.forward is held
    own = strict.predict_canvases(batch.canvases, batch.boxes)  # canvases of no batch: a forward of their own
    assert detector.ran == ["whole", "whole"]
    for a, b in zip(found, own):
        np.testing.assert_array_equal(a.conf, b.conf)
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
    other = CountingDetector("other.pt")
    other.predict(batch)
    assert other.ran == ["whole"] and batch.forward is not held and batch.forward.model == other.model_key


def test_embeddings_come_with_the_forward_that_asked_for_them():
    detector, batch = CountingDetector(), ramp_batch(200, 120)
    assert detector.embed(batch) is None and detector.ran == []  # not enabled: nothing runs
    embedder = detector.with_postprocess(0.25, 0.45, 100)
    assert embedder.enable_embeddings() and detector.embedding_dim == 0
    embedder.predict_maps(batch)
    rows = embedder.embed(batch)  # the maps-only forward has none: the whole one, with the features
    assert detector.ran == ["class branch", "whole with features"]
    assert rows.shape == (2, 12) and rows.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(rows.astype(np.float32), axis=1), 1, atol=1e-2)
    detector.predict(batch)
    embedder.predict_maps(batch)
    assert embedder.forward_of(batch, embeddings=True).embeddings is rows and len(detector.ran) == 2
