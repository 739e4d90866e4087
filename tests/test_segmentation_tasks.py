"""Infer and mining with instance-segmentation models (issue 14, items 3-5): the COCO result with RLE masks at the
original size, the four algorithms on a seg model, CALD's mask term, the family checks in both directions, the
local CLI choosing the family from its model, and the same guarantees as detection (workers, determinism).

The seg model is tests.ymir_builders.write_seg_weights: yolov8n-seg whose box and class branches are the shared
yolov8n.pt's, so its boxes, classes and scores must be exactly those of the detection model."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from executor.protocol.templates import TEMPLATES_VAR, family_templates
from executor.shared import SEGMENTATION
from tests.platform import (WEIGHTS, add_assets, coco_images, coco_names, image_folder, make_env, monitor_fields,
                            read_result_tsv, run_cli, run_platform, run_start)

SEG_ENV = {TEMPLATES_VAR: family_templates(SEGMENTATION)}  # what the segmentation image sets


def coco_rle(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


def seg_detector(weights, img_size=640, **post):
    from executor.engine.loading import load_detector

    return load_detector(str(weights), "auto", "", img_size, conf_thres=post.get("conf", 0.25), iou_thres=0.45,
                         max_det=100, task="segment")


# ---------------------------------------------------------------- the adapter

@pytest.mark.slow
def test_a_seg_model_finds_the_boxes_of_its_detection_backbone_with_masks_inside_them(seg_weights):
    from executor.engine.loading import load_detector
    from tests.platform import batch_of

    paths = coco_images(3)[:1] + coco_images(6)[4:5]
    seg = seg_detector(seg_weights)
    det = load_detector(str(WEIGHTS), "auto", "", 640, conf_thres=0.25, iou_thres=0.45, max_det=100)
    assert (seg.task, seg.num_masks, seg.names) == ("segment", 32, det.names)
    for path in paths:
        batch = batch_of([path], seg)
        (a,), (b,) = seg.predict(batch), det.predict(batch)
        assert len(a) > 0 and a.masks is not None and b.masks is None
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
        rles = a.masks.rles()
        height, width = batch.images[0].shape[:2]
        assert len(rles) == len(a) and all(r["size"] == [height, width] for r in rles)
        for rle, (x1, y1, x2, y2) in zip(rles, a.xyxy):  # each mask lies inside its box (cropped as Ultralytics)
            mask = mask_utils.decode(coco_rle(rle))
            ys, xs = np.nonzero(mask)
            if len(xs):
                assert xs.min() >= np.floor(x1) and xs.max() < np.ceil(x2) + 1
                assert ys.min() >= np.floor(y1) and ys.max() < np.ceil(y2) + 1
        sub = a.subset(np.array([len(a) - 1, 0]))
        assert sub.masks.rles() == [rles[-1], rles[0]]


@pytest.mark.slow
def test_whole_batch_postprocess_keeps_the_masks_of_per_image_postprocess(seg_weights):
    from executor.engine.postprocess import postprocess
    from tests.platform import batch_of

    seg = seg_detector(seg_weights, 320)
    batch = batch_of([p for p in coco_images(12) if p.name in {"000000000139.jpg", "000000010764.jpg"}], seg)
    raw, proto, _ = seg.head(batch.canvases)
    per_image = postprocess(raw, batch.boxes, 0.1, 0.45, 50, num_classes=80, proto=proto, whole_batch=False)
    whole = postprocess(raw, batch.boxes, 0.1, 0.45, 50, num_classes=80, proto=proto, whole_batch=True)
    for a, b in zip(per_image, whole):
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
        assert a.masks.rles() == b.masks.rles()


@pytest.mark.slow
def test_onnx_seg_export_gives_the_torch_masks(seg_weights, tmp_path):
    from executor.engine.loading import export_onnx, load_detector
    from tests.platform import batch_of

    onnx_path = tmp_path / "seg.onnx"
    export_onnx(str(seg_weights), str(onnx_path), 640, 12, dynamic=True)
    torch_seg, onnx_seg = seg_detector(seg_weights), load_detector(
        str(onnx_path), "auto", "", 640, conf_thres=0.25, iou_thres=0.45, max_det=100, task="segment")
    assert (onnx_seg.task, onnx_seg.num_masks, onnx_seg.names) == ("segment", 32, torch_seg.names)
    batch = batch_of(coco_images(1), torch_seg)
    (a,), (b,) = torch_seg.predict(batch), onnx_seg.predict(batch)
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=0.05)
    pairs = [(coco_rle(x), coco_rle(y)) for x, y in zip(a.masks.rles(), b.masks.rles())]
    assert len(pairs) == len(a) > 0
    assert [mask_utils.area(x) == 0 for x, _ in pairs] == [mask_utils.area(y) == 0 for _, y in pairs]
    ious = [mask_utils.iou([x], [y], [0])[0, 0] for x, y in pairs if mask_utils.area(x)]  # two empty masks: IoU 0
    assert ious and min(ious) > 0.98


@pytest.mark.slow
@pytest.mark.parametrize("served, model", [("segment", "detection"), ("detect", "segmentation")])
def test_a_model_of_the_other_family_is_a_model_error_naming_both(seg_weights, served, model):
    from executor.engine.loading import load_detector
    from executor.errors import ModelError

    weights = WEIGHTS if model == "detection" else seg_weights
    with pytest.raises(ModelError) as err:
        load_detector(str(weights), "auto", "", 64, conf_thres=0.25, iou_thres=0.45, max_det=10, task=served)
    words = {"detect": "detection ('detect')", "segment": "segmentation ('segment')"}
    other = "detect" if served == "segment" else "segment"
    assert f"is a {words[other]} model, but this image serves {words[served]} models" in str(err.value)


# ---------------------------------------------------------------- CALD's mask term

def test_mask_views_move_a_mask_like_its_image():
    from mining.augment import make_views, mask_views

    image = np.zeros((60, 90, 3), np.uint8)
    image[10:30, 20:50] = 255
    mask = (image[..., 0] > 0).astype(np.uint8)
    views = make_views(image, np.array([[20, 10, 50, 30]], np.float32), np.random.default_rng(0))
    for (view, _), moved, name in zip(views, mask_views(mask), ("flip", "cutout", "rotate", "resize")):
        if name == "cutout":
            assert (moved == mask).all()  # the object stays where it was; part of it is hidden
            continue
        seen = view[..., 0] > 127
        assert (seen == moved.astype(bool)).mean() > 0.99, name


def test_cald_with_masks_counts_the_mask_iou_of_each_matched_pair():
    from mining.cald import BETA, SCORE_OFFSET, cald_score

    boxes = np.array([[10, 10, 50, 50]], np.float32)
    probs = np.array([[0.9, 0.05]], np.float32)
    conf = probs.max(1)
    full = np.zeros((100, 100, 1), np.uint8)
    full[10:50, 10:50] = 1
    left = np.zeros_like(full)
    left[10:50, 10:30] = 1  # half of the reference mask
    rle = lambda m: {**mask_utils.encode(np.asfortranarray(m))[0]}  # noqa: E731
    same_view = (boxes.copy(), conf.copy(), probs.copy())
    plain = cald_score(probs, conf, [boxes], [same_view])
    assert plain == pytest.approx(SCORE_OFFSET - abs(1 + 0.9 - BETA))  # C = IoU 1 + conf 0.9
    same = cald_score(probs, conf, [boxes], [same_view], view_masks_ref=[[rle(full)]], view_masks=[[rle(full)]])
    assert same == pytest.approx(plain)  # mask IoU 1: the box term unchanged
    half = cald_score(probs, conf, [boxes], [same_view], view_masks_ref=[[rle(full)]], view_masks=[[rle(left)]])
    assert half == pytest.approx(SCORE_OFFSET - abs((1 + 0.5) / 2 + 0.9 - BETA))  # overlap (1 + 0.5) / 2


# ---------------------------------------------------------------- platform mode

def seg_candidates(tmp_path):
    broken = tmp_path / "src" / "broken.jpg"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an image")
    return [*coco_images(4), broken]


@pytest.fixture(scope="module")
def seg_infer_run(tmp_path_factory, seg_weights):
    root = tmp_path_factory.mktemp("seg-infer")
    env = make_env(root, run_infer=True, run_mining=True, weights=seg_weights, candidates=seg_candidates(root),
                   config={"mining_algorithm": "entropy", "img_size": 320})
    return env, run_platform(env, SEG_ENV)


@pytest.mark.slow
def test_seg_infer_writes_the_coco_result_with_rle_masks_for_every_candidate(seg_infer_run, seg_weights):
    env, (status, log) = seg_infer_run
    assert status == 0, log[-3000:]
    assert monitor_fields(env)[2:] == ["1.0000", "2", "0"]
    result = json.loads((env.parent.parent / "out" / "infer-result.json").read_text())
    keys = [line for line in (env.parent / "candidate-index.tsv").read_text().splitlines()]
    assert [im["file_name"] for im in result["images"]] == [os.path.basename(k) for k in keys]
    assert [im["id"] for im in result["images"]] == list(range(1, len(keys) + 1))
    sizes = {im["id"]: (im["height"], im["width"]) for im in result["images"]}
    assert sizes[len(keys)] == (0, 0)  # the unreadable one is listed, with no annotations
    names = json.loads(json.dumps(result["categories"]))
    assert [c["id"] for c in names] == list(range(1, 81)) and names[0]["name"] == "person"
    annotations = result["annotations"]
    assert annotations and [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))
    assert {a["image_id"] for a in annotations} <= set(range(1, len(keys)))
    detector = seg_detector(seg_weights, 320)
    for a in annotations:
        assert set(a) == {"id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd", "confidence"}
        assert a["segmentation"]["size"] == list(sizes[a["image_id"]])  # the original's size, not the canvas'
        assert a["area"] == int(mask_utils.area(coco_rle(a["segmentation"])))
        assert a["iscrowd"] == 0 and detector.conf_thres < a["confidence"] <= 1
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= sizes[a["image_id"]][1] + 0.01
    # the boxes are the detection backbone's: the same as yolov8n.pt's detections of the same images
    from executor.engine.loading import load_detector
    from tests.platform import batch_of

    det = load_detector(str(WEIGHTS), "auto", "", 320, conf_thres=0.25, iou_thres=0.45, max_det=100)
    first = [a for a in annotations if a["image_id"] == 1]
    (found,) = det.predict(batch_of([keys[0]], det))
    assert len(first) == len(found)
    np.testing.assert_allclose([a["bbox"] for a in first],
                               np.c_[found.xyxy[:, :2], found.xyxy[:, 2:] - found.xyxy[:, :2]], atol=0.02)


@pytest.mark.slow
def test_seg_mining_in_the_same_pass_ranks_like_the_detection_model(seg_infer_run, tmp_path):
    """Entropy reads only the class probabilities, which the seg model shares with yolov8n.pt: the same ranking."""
    env, (status, log) = seg_infer_run
    assert status == 0, log[-3000:]
    assert log.count("skipping unreadable image") == 1  # mining and infer: one pass over the images
    ranked = read_result_tsv(env)
    from executor.pipeline.job import Job
    from executor.pipeline.plan import make_plan
    from executor.pipeline.tasks import run as run_tasks

    result = tmp_path / "result.tsv"  # yolov8n.pt's ranking, driven in this process
    job = Job(candidates=add_assets(tmp_path / "assets", seg_candidates(tmp_path)), mining_result=str(result))
    run_tasks(make_plan(["mining"], job, {"model_params_path": [str(WEIGHTS)], "class_names": coco_names(),
                                          "mining_algorithm": "entropy", "img_size": 320}))
    theirs = [(key, float(score)) for key, score in (line.split("\t") for line in result.read_text().splitlines())]
    assert [os.path.basename(k) for k, _ in ranked] == [os.path.basename(k) for k, _ in theirs]
    np.testing.assert_allclose([s for _, s in ranked], [s for _, s in theirs], rtol=1e-4)


@pytest.mark.slow
def test_aldd_with_a_seg_model_reads_the_class_maps_of_the_detection_head(seg_weights):
    """ALDD's dense class maps come from the class rows only (the mask coefficients after them are cut off):
    the seg model seeded from yolov8n.pt gives yolov8n.pt's scores."""
    from executor.engine.loading import load_detector
    from executor.engine.postprocess import class_maps
    from mining.aldd import AlddScorer
    from tests.platform import batch_of

    seg = seg_detector(seg_weights, 320)
    det = load_detector(str(WEIGHTS), "auto", "", 320, conf_thres=0.25, iou_thres=0.45, max_det=100)
    batch = batch_of([p for p in coco_images(12) if p.name in {"000000000139.jpg", "000000010764.jpg"}], seg)
    assert [tuple(m.shape) for m in seg.predict_maps(batch)] == [tuple(m.shape) for m in det.predict_maps(batch)]
    # the class branch alone: no box, mask-coefficient or prototype branch runs, and the maps are the head's
    head, ran = seg.net.model[-1], []
    handles = [m.register_forward_hook(lambda *a, name=name: ran.append(name))
               for name, m in (("box", head.cv2[0]), ("coefficients", head.cv4[0]), ("prototypes", head.proto))]
    try:
        alone = seg.predict_maps(batch)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == []
    whole = class_maps(seg.forward(batch.canvases, batch.boxes).raw, batch.canvases.shape[1:3], seg.strides,
                       seg.num_classes)
    assert all(torch.equal(a, w) for a, w in zip(alone, whole))
    scorer = AlddScorer(class_distribution_scores=[])
    np.testing.assert_allclose(scorer.score(batch, seg), scorer.score(batch, det), rtol=1e-4)


@pytest.mark.slow
def test_cald_mines_with_a_seg_model(tmp_path, seg_weights):
    """CALD's views through the pipeline with a seg model (masks on every view); its determinism for a seed is
    tests/test_determinism.py's (CALD draws per image by its result key, whatever the family)."""
    env = make_env(tmp_path / "seg", run_mining=True, weights=seg_weights, candidates=seg_candidates(tmp_path),
                   config={"mining_algorithm": "cald", "img_size": 256, "seed": 5})
    status, log = run_platform(env, SEG_ENV)
    assert status == 0, log[-3000:]
    rows = read_result_tsv(env)
    assert sorted(k for k, _ in rows) == sorted(k for k in (env.parent / "candidate-index.tsv").read_text().split())
    scores = sorted(s for _, s in rows)
    assert scores[0] == -1.0 and all(s >= 0 for s in scores[1:])  # the broken image alone is unscored


@pytest.mark.slow
def test_cald_with_a_seg_model_uses_the_masks(seg_weights):
    """The same images and views, with and without the masks: the mask term changes CALD's scores."""
    from mining.cald import CaldScorer
    from tests.platform import batch_of

    seg = seg_detector(seg_weights, 320)
    batch = batch_of([p for p in coco_images(12) if p.name in {"000000000139.jpg", "000000010764.jpg"}], seg)
    scorer = CaldScorer(seed=1)
    with_masks = scorer.score(batch, seg)

    class Boxes:  # the same detector, its masks hidden
        def __getattr__(self, name):
            return getattr(seg, name)

        def predict(self, *args, **kwargs):
            return [dataclasses.replace(d, masks=None) for d in seg.predict(*args, **kwargs)]

        def predict_views(self, views, batch_size):
            return [dataclasses.replace(d, masks=None) for d in seg.predict_views(views, batch_size)]

    boxes_only = scorer.score(batch, Boxes())
    assert (with_masks > 0).all() and (boxes_only > 0).all()
    assert not np.allclose(with_masks, boxes_only)


# ---------------------------------------------------------------- the local CLI

@pytest.mark.slow
def test_the_cli_takes_the_family_from_its_model(capsys, tmp_path, seg_weights):
    images = image_folder(tmp_path / "images", 3)
    out = tmp_path / "found.json"  # one thread and one-image shards: what each of two workers does below
    small = ("--imgsz", "320", "--set", "cpu_threads=1", "--set", "shard_size=1")
    status, err = run_cli(capsys, "infer", "--model", seg_weights, "--source", images, "--out", out, *small)
    assert status == 0, err[-3000:]
    result = json.loads(out.read_text())
    assert sorted(im["file_name"] for im in result["images"]) == sorted(p.name for p in coco_images(3))
    assert result["annotations"] and all("counts" in a["segmentation"] for a in result["annotations"])
    coco = tmp_path / "coco.json"
    status, _ = run_cli(capsys, "infer", "--model", seg_weights, "--source", images, "--out", coco, *small,
                        "--format", "coco")
    assert status == 0 and coco.read_bytes() == out.read_bytes()  # the COCO result is already COCO
    status, err = run_cli(capsys, "infer", "--model", seg_weights, "--source", images, "--out", tmp_path / "yolo",
                          "--format", "yolo")
    assert status == 2 and "a segmentation model's masks are written with --format ymir" in err
    two = tmp_path / "two.json"  # two worker processes: the same bytes
    proc = run_start("infer", "--model", seg_weights, "--source", images, "--out", two, "--imgsz", "320",
                     "--nproc", "2", "--set", "shard_size=1", "--set", "cpu_threads=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert two.read_bytes() == out.read_bytes()
    detection = tmp_path / "boxes.json"  # and a detection model keeps ymir's detection form
    assert run_cli(capsys, "infer", "--model", WEIGHTS, "--source", images, "--out", detection, "--imgsz", "320")[0] == 0
    assert set(json.loads(detection.read_text())) == {"detection"}
