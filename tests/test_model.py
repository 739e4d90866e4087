"""The detector adapter on the real COCO-pretrained yolov8n."""
import numpy as np
import pytest
import torch

from executor.errors import ConfigError, ModelError, NoGpuError
from executor.images import letterbox, read_image
from executor.model import Detections, class_maps, load_detector, select_device
from tests.platform import COCO_VAL, WEIGHTS

PEOPLE = COCO_VAL / "images" / "000000005001.jpg"  # a street scene with several people


@pytest.fixture(scope="module")
def detector():
    return load_detector(str(WEIGHTS), "auto", "", 640)


def predict(detector, paths):
    images = [read_image(str(p)) for p in paths]
    boxed = [letterbox(image, detector.img_size) for image in images]
    return images, detector.predict(np.stack([c for c, _ in boxed]), [b for _, b in boxed])


def test_people_are_found_with_full_class_vectors(detector):
    images, prediction = predict(detector, [PEOPLE])
    det = prediction.detections[0]
    names = [detector.names[c] for c in det.cls]
    assert names.count("person") >= 3
    assert det.probs.shape == (len(det), 80)
    np.testing.assert_allclose(det.probs.max(1), det.conf, rtol=1e-6)
    assert (det.probs.argmax(1) == det.cls).all()
    assert (det.conf > 0.25).all() and (np.diff(det.conf) <= 1e-6).all()
    h, w = images[0].shape[:2]
    assert (det.xyxy[:, [0, 2]] <= w).all() and (det.xyxy[:, [1, 3]] <= h).all() and (det.xyxy >= 0).all()
    assert (det.xyxy[:, 2] > det.xyxy[:, 0]).all()


def test_class_maps_match_the_head(detector):
    _, prediction = predict(detector, [PEOPLE, COCO_VAL / "images" / "000000000139.jpg"])
    shapes = [tuple(m.shape) for m in prediction.class_maps]
    assert shapes == [(2, 80, 80, 80), (2, 80, 40, 40), (2, 80, 20, 20)]
    assert all(float(m.min()) >= 0 and float(m.max()) <= 1 for m in prediction.class_maps)
    # a detected person's probability is also the peak of the person map somewhere
    top_person = max(d for d, c in zip(prediction.detections[0].conf, prediction.detections[0].cls) if c == 0)
    peak = max(float(m[0, 0].max()) for m in prediction.class_maps)
    assert peak == pytest.approx(top_person, rel=1e-5)


def test_class_maps_are_level_by_level_row_major():
    raw = torch.arange(2 * 5 * (16 + 4 + 1), dtype=torch.float32).reshape(2, 5, 21)
    maps = class_maps(raw, (32, 32), strides=(8, 16, 32))
    assert [tuple(m.shape) for m in maps] == [(2, 1, 4, 4), (2, 1, 2, 2), (2, 1, 1, 1)]
    assert maps[0][0, 0, 1, 0] == raw[0, 4, 4] and maps[1][1, 0, 0, 1] == raw[1, 4, 17]
    with pytest.raises(ModelError, match="anchor points"):
        class_maps(raw, (64, 64), strides=(8, 16, 32))
    # a landscape canvas of 32x64: levels of 4x8, 2x4 and 1x2 cells, still row-major
    wide = torch.arange(5 * (32 + 8 + 2), dtype=torch.float32).reshape(1, 5, 42)
    maps = class_maps(wide, (32, 64), strides=(8, 16, 32))
    assert [tuple(m.shape) for m in maps] == [(1, 1, 4, 8), (1, 1, 2, 4), (1, 1, 1, 2)]
    assert maps[0][0, 0, 1, 0] == wide[0, 4, 8] and maps[2][0, 0, 0, 1] == wide[0, 4, 41]


def test_batch_composition_does_not_change_detections(detector):
    paths = [PEOPLE, COCO_VAL / "images" / "000000000139.jpg", COCO_VAL / "images" / "000000000802.jpg"]
    _, together = predict(detector, paths)
    for path, det in zip(paths, together.detections):
        _, alone = predict(detector, [path])
        np.testing.assert_allclose(alone.detections[0].xyxy, det.xyxy, atol=1e-3)
        np.testing.assert_allclose(alone.detections[0].probs, det.probs, atol=1e-5)


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="not found: .*nope.pt"):
        load_detector(str(tmp_path / "nope.pt"), "auto", "", 640)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="broken.pt"):
        load_detector(str(broken), "auto", "", 640)
    with pytest.raises(ConfigError, match="3 names .* 80 classes"):
        load_detector(str(WEIGHTS), "auto", "", 640, class_names=["a", "b", "c"])


def test_missing_gpu_is_an_error_not_a_fallback():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(NoGpuError) as err:
        select_device("0")
    assert err.value.code == 300102


def test_detections_validate_shapes():
    with pytest.raises(ValueError):
        Detections(np.zeros((2, 4), np.float32), np.zeros(1, np.float32), np.zeros(2, np.int64), np.zeros((2, 3)))
    assert len(Detections.empty(80)) == 0
