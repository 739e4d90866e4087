"""The detector adapter on the real COCO-pretrained yolov8n."""
import numpy as np
import pytest
import torch

from executor.engine.device import select_device
from executor.engine.images import Letterbox
from executor.engine.loading import load_detector
from executor.engine.postprocess import class_maps, postprocess
from executor.errors import ConfigError, ModelError, NoGpuError
from mining.base import Detections
from tests.platform import COCO_VAL, WEIGHTS, batch_of, template_detector

PEOPLE = COCO_VAL / "images" / "000000005001.jpg"  # a street scene with several people


POST = {"conf_thres": 0.25, "iou_thres": 0.45, "max_det": 100}
SAME_SHAPE = [PEOPLE, COCO_VAL / "images" / "000000017627.jpg", COCO_VAL / "images" / "000000018575.jpg"]  # 640x480


@pytest.fixture(scope="module")
def detector():
    return template_detector(640)


@pytest.mark.slow
def test_people_are_found_with_full_class_vectors(detector):
    batch = batch_of([PEOPLE], detector)
    images, (det,) = batch.images, detector.predict(batch)
    names = [detector.names[c] for c in det.cls]
    assert names.count("person") >= 3
    assert det.probs.shape == (len(det), 80)
    np.testing.assert_allclose(det.probs.max(1), det.conf, rtol=1e-6)
    assert (det.probs.argmax(1) == det.cls).all()
    assert (det.conf > 0.25).all() and (np.diff(det.conf) <= 1e-6).all()
    h, w = images[0].shape[:2]
    assert (det.xyxy[:, [0, 2]] <= w).all() and (det.xyxy[:, [1, 3]] <= h).all() and (det.xyxy >= 0).all()
    assert (det.xyxy[:, 2] > det.xyxy[:, 0]).all()


@pytest.mark.slow
def test_class_maps_match_the_head(detector):
    batch = batch_of(SAME_SHAPE[:2], detector)
    maps, found = detector.predict_maps(batch), detector.predict(batch)
    shapes = [tuple(m.shape) for m in maps]
    assert shapes == [(2, 80, 60, 80), (2, 80, 30, 40), (2, 80, 15, 20)]
    assert all(float(m.min()) >= 0 and float(m.max()) <= 1 for m in maps)
    # a detected person's probability is also the peak of the person map somewhere
    top_person = max(d for d, c in zip(found[0].conf, found[0].cls) if c == 0)
    peak = max(float(m[0, 0].max()) for m in maps)
    assert peak == pytest.approx(top_person, rel=1e-5)


def branch_calls(detector) -> dict:
    """Counts of forward calls of the head as a whole and of its box branch, by forward hooks."""
    head, calls = detector.net.model[-1], {"head": 0, "box branch": 0}

    def count(name):
        def hook(module, args, output):
            calls[name] += 1
        return hook

    handles = [head.register_forward_hook(count("head")), head.cv2[0].register_forward_hook(count("box branch"))]
    return calls, handles


@pytest.mark.slow
def test_aldd_maps_come_from_the_class_branch_alone(detector):
    """predict_maps runs the network up to the head and the head's class branch only, with exactly the maps of
    the whole head; where the batch already holds a whole forward (made for what infer or the side data read),
    the maps are read from it and nothing runs again."""
    from executor.engine.torch_detector import ClassMapsNet

    batch = batch_of(SAME_SHAPE, detector)
    assert isinstance(detector.class_net, ClassMapsNet)
    whole = class_maps(detector.forward(batch.canvases, batch.boxes).raw, batch.canvases.shape[1:3],
                       detector.strides, 80)
    calls, handles = branch_calls(detector)
    try:
        alone = detector.predict_maps(batch)
        assert calls == {"head": 0, "box branch": 0} and batch.forward.raw is None
        for a, w in zip(alone, whole):
            assert a.shape == w.shape and torch.equal(a, w)
        detector.predict(batch)  # needs the raw output: the whole network, held by the batch from now on
        assert calls == {"head": 1, "box branch": 1} and batch.forward.raw is not None
        read = detector.predict_maps(batch)
        assert calls == {"head": 1, "box branch": 1}
        assert all(torch.equal(a, w) for a, w in zip(read, whole))
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.slow
def test_a_batch_forward_serves_its_model_and_its_copies_only(detector):
    """Copies with other NMS settings read the batch's forward, each at its own thresholds, the same detections as
    a forward of their own; a forward asked for embeddings keeps them and serves readers that want none."""
    batch = batch_of(SAME_SHAPE, detector)
    strict = detector.with_postprocess(0.5, 0.45, 2)
    calls, handles = branch_calls(detector)
    try:
        loose = detector.predict(batch, conf_thres=0.01, capped=False)
        held = batch.forward
        found = strict.predict(batch)
        assert calls["head"] == 1 and batch.forward is held
    finally:
        for handle in handles:
            handle.remove()
    own = strict.predict_canvases(batch.canvases, batch.boxes)
    assert all(len(a) <= 2 and len(b) > len(a) for a, b in zip(found, loose))
    for a, b in zip(found, own):
        np.testing.assert_array_equal(a.conf, b.conf)
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
    embedder = detector.with_postprocess(**POST)
    assert embedder.enable_embeddings() and embedder.embedding_dim == 448
    rows = embedder.embed(batch)  # the held forward has no embeddings: one forward more, held from now on
    assert rows.shape == (3, 448) and batch.forward is not held and batch.forward.embeddings is rows
    assert embedder.forward_of(batch) is batch.forward and detector.forward_of(batch) is batch.forward


def test_candidates_are_each_anchors_best_class_or_every_pair_above_the_threshold():
    from executor.engine.postprocess import candidates

    probs = torch.tensor([[0.5, 0.1, 0.7, 0.3],
                          [0.5, 0.2, 0.9, 0.6],
                          [0.2, 0.05, 0.9, 0.6]])  # (C, A); anchor 0 and anchor 2 have tied maxima
    anchor, cls, score = candidates(probs, 0.25, multi_label=False)
    assert anchor.tolist() == [0, 2, 3] and cls.tolist() == [0, 1, 1]  # a tie goes to the first class, as max()
    assert score.tolist() == pytest.approx([0.5, 0.9, 0.6])
    anchor, cls, score = candidates(probs, 0.25, multi_label=True)  # anchor by anchor, classes in order
    assert list(zip(anchor.tolist(), cls.tolist())) == [(0, 0), (0, 1), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2)]
    assert score.tolist() == pytest.approx([0.5, 0.5, 0.7, 0.9, 0.9, 0.3, 0.6, 0.6])


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


@pytest.mark.slow
def test_batch_composition_does_not_change_detections(detector):
    paths = SAME_SHAPE[:2]
    together = detector.predict(batch_of(paths, detector))
    for path, det in zip(paths, together):
        (alone,) = detector.predict(batch_of([path], detector))
        np.testing.assert_allclose(alone.xyxy, det.xyxy, atol=1e-3)
        np.testing.assert_allclose(alone.probs, det.probs, atol=1e-5)


@pytest.mark.slow
def test_views_are_predicted_like_candidates(detector):
    batch = batch_of(SAME_SHAPE[:2], detector)
    other = batch_of([COCO_VAL / "images" / "000000000802.jpg"], detector)  # a portrait canvas: its own chunk
    views = detector.predict_views([batch.images[1], other.images[0], batch.images[0]], batch_size=2)
    direct = detector.predict(batch)
    for view, det in zip(views, [direct[1], detector.predict(other)[0], direct[0]]):
        np.testing.assert_allclose(view.xyxy, det.xyxy, atol=1e-3)


@pytest.mark.slow
def test_uncapped_and_lower_threshold_keep_more_boxes(detector):
    batch = batch_of([PEOPLE], detector)
    (capped,) = detector.with_postprocess(0.01, 0.45, 1).predict(batch)
    (uncapped,) = detector.with_postprocess(0.01, 0.45, 1).predict(batch, capped=False)
    (default,) = detector.predict(batch)
    assert len(capped) == 1 and len(uncapped) > len(default) > 1


def test_multi_label_reports_a_box_per_class():
    raw = torch.zeros(1, 4 + 3, 4)
    raw[0, :4, 0] = torch.tensor([20.0, 20, 10, 10])  # anchor 0: box at (15..25) with two likely classes
    raw[0, 4:, 0] = torch.tensor([0.9, 0.6, 0.0])
    raw[0, :4, 1] = torch.tensor([21.0, 20, 10, 10])  # anchor 1: the same object, lower score: suppressed
    raw[0, 4:, 1] = torch.tensor([0.8, 0.0, 0.0])
    raw[0, :4, 2] = torch.tensor([60.0, 60, 10, 10])  # anchor 2: below the threshold
    raw[0, 4:, 2] = torch.tensor([0.0005, 0.0, 0.0])
    box = Letterbox(ratio=0.5, pad_x=0.0, pad_y=10.0, height=200, width=200)
    (det,) = postprocess(raw, [box], 0.001, 0.7, 300, multi_label=True)
    assert det.cls.tolist() == [0, 1] and det.conf.tolist() == pytest.approx([0.9, 0.6])
    np.testing.assert_allclose(det.xyxy[0], [30, 10, 50, 30])  # (x - pad) / ratio
    (single,) = postprocess(raw, [box], 0.001, 0.7, 300)
    assert single.cls.tolist() == [0]


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="not found: .*nope.pt"):
        load_detector(str(tmp_path / "nope.pt"), "auto", "", 640, **POST)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="broken.pt"):
        load_detector(str(broken), "auto", "", 640, **POST)


@pytest.mark.slow
def test_class_names_must_match_the_checkpoint():
    with pytest.raises(ConfigError, match="3 names .* 80 classes"):
        load_detector(str(WEIGHTS), "auto", "", 640, class_names=["a", "b", "c"], **POST)


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


@pytest.mark.slow
@pytest.mark.parametrize("conf, max_det, multi_label", [(0.25, 100, False), (0.01, None, False), (0.01, 3, False),
                                                         (0.001, 300, True)])
def test_whole_batch_nms_keeps_what_per_image_nms_keeps(detector, conf, max_det, multi_label):
    """The GPU path (one NMS kernel and one host copy per batch), run on the CPU against the per-image path."""
    batch = batch_of(SAME_SHAPE, detector)
    raw = detector.forward(batch.canvases, batch.boxes).raw
    per_image = postprocess(raw, batch.boxes, conf, 0.45, max_det, multi_label, whole_batch=False)
    whole = postprocess(raw, batch.boxes, conf, 0.45, max_det, multi_label, whole_batch=True)
    assert sum(len(d) for d in whole) >= 9  # 3 per image with max_det 3
    for a, b in zip(per_image, whole):
        np.testing.assert_array_equal(a.cls, b.cls)
        np.testing.assert_array_equal(a.conf, b.conf)
        np.testing.assert_array_equal(a.probs, b.probs)
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-4)
