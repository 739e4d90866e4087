"""Inference with both backends, the infer task in platform mode (in process), and the local command line."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from executor.engine.images import letterbox, read_image
from executor.engine.loading import export_onnx
from executor.errors import ConfigError, ModelError
from tests.platform import (VOC, WEIGHTS, add_assets, coco_images, coco_names, make_env, monitor_fields, run_cli,
                            run_platform, template_detector)

pytestmark = pytest.mark.slow
SAMPLES = [*coco_images(4), *sorted((VOC / "JPEGImages").glob("*.jpg"))[:4]]


@pytest.fixture(scope="module")
def onnx_weights(tmp_path_factory):
    target = tmp_path_factory.mktemp("onnx") / "yolov8n.onnx"
    export_onnx(str(WEIGHTS), str(target), 640, 0)
    return target


@pytest.fixture(scope="module")
def dynamic_onnx_weights(tmp_path_factory):
    target = tmp_path_factory.mktemp("onnx") / "yolov8n-dynamic.onnx"
    export_onnx(str(WEIGHTS), str(target), 640, 0, dynamic=True)
    return target


def detect(detector, paths, stride=None):
    """One image at a time: rectangular canvases differ in shape."""
    found = []
    for p in paths:
        canvas, box = letterbox(read_image(str(p)), detector.img_size, stride)
        found += detector.predict_canvases(canvas[None], [box])
    return found


@pytest.mark.parametrize("export", ["static", "dynamic"])
def test_onnx_and_torch_give_the_same_boxes(export, onnx_weights, dynamic_onnx_weights):
    onnx_detector = template_detector(640, onnx_weights if export == "static" else dynamic_onnx_weights)
    torch_detector = template_detector(640)
    # a static export takes only img_size squares; a dynamic one takes the same rectangles as PyTorch
    assert torch_detector.rect_stride == 32 and onnx_detector.rect_stride == (None if export == "static" else 32)
    stride = onnx_detector.rect_stride
    torch_dets, onnx_dets = detect(torch_detector, SAMPLES, stride), detect(onnx_detector, SAMPLES, stride)
    assert sum(len(d) for d in torch_dets) > 20
    for t, o in zip(torch_dets, onnx_dets):
        assert len(t) == len(o)
        np.testing.assert_array_equal(t.cls, o.cls)
        assert np.abs(t.xyxy - o.xyxy).max(initial=0) <= 1.0
        assert np.abs(t.conf - o.conf).max(initial=0) <= 1e-3


def test_onnx_class_count_must_match_class_names(onnx_weights):
    with pytest.raises(ConfigError, match="20 names .* 80 classes") as err:
        template_detector(640, onnx_weights, class_names=[f"c{i}" for i in range(20)])
    assert err.value.code == 300001


def test_onnx_has_no_augmented_forward(onnx_weights):
    with pytest.raises(ConfigError, match="config key 'augment'.*is an ONNX model") as err:
        template_detector(640, onnx_weights).augmented()
    assert err.value.code == 300001


def test_unloadable_onnx_names_the_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    with pytest.raises(ModelError, match="model.onnx"):
        template_detector(640, bad)


@pytest.mark.parametrize("protocol, key", [("1.1.0", "boxes"), ("1.0.0", "annotations"), (None, "annotations")])
def test_infer_task_result_forms(tmp_path, protocol, key):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((120, 160, 3), 255, np.uint8))  # nothing to detect
    env = make_env(tmp_path, run_infer=True, candidates=[coco_images(1)[0], blank], protocol_version=protocol,
                   config={"img_size": 320})
    unreadable = tmp_path / "in" / "assets" / "zz" / "gone.jpg"
    with open(env.parent / "candidate-index.tsv", "a") as index:
        index.write(f"{unreadable}\n")
    status, log = run_platform(env)
    assert status == 0, log
    detection = json.loads((tmp_path / "out" / "infer-result.json").read_text())["detection"]
    names = [os.path.basename(p) for p in (env.parent / "candidate-index.tsv").read_text().split()]
    assert list(detection) == names
    first, empty, missing = (detection[n][key] for n in names)
    assert first and empty == [] and missing == []
    assert f"cannot read image {unreadable}" in log
    for record in first:
        assert set(record) == {"box", "class_name", "score"} and set(record["box"]) == {"x", "y", "w", "h"}
        assert all(isinstance(v, int) for v in record["box"].values()) and record["score"] > 0.25
    assert monitor_fields(env)[2:4] == ["1.0000", "2"]


def test_infer_with_the_onnx_export(tmp_path, onnx_weights, caplog):
    from executor.pipeline.job import Job
    from executor.pipeline.plan import make_plan
    from executor.pipeline.tasks import run as run_tasks

    caplog.set_level("INFO", "executor")
    out = tmp_path / "infer-result.json"  # the infer task driven in this process
    job = Job(candidates=add_assets(tmp_path / "assets", coco_images(2)), infer_result=str(out))
    run_tasks(make_plan(["infer"], job, {"model_params_path": [str(onnx_weights)], "class_names": coco_names()}))
    assert "OnnxDetector" in caplog.text
    detection = json.loads(out.read_text())["detection"]
    assert len(detection) == 2 and any(entry["boxes"] for entry in detection.values())


def test_local_cli_mine_topk_and_copy(capsys, tmp_path):
    images = tmp_path / "pool"
    images.mkdir()
    for source in coco_images(5):
        shutil.copy(source, images / source.name)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "ranked.tsv"
    status, err = run_cli(capsys, "mine", "--weights", WEIGHTS, "--images", images, "--algorithm", "entropy",
                          "--img-size", 320, "--topk", 2, "--select-dir", tmp_path / "pick", "--out", out)
    assert status == 0, err
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert len(rows) == 5 and [float(s) for _, s in rows] == sorted((float(s) for _, s in rows), reverse=True)
    top = (tmp_path / "ranked.top2.txt").read_text().split()
    assert top == [p for p, _ in rows[:2]]
    picked = sorted(os.listdir(tmp_path / "pick"))
    assert picked == [f"{i:05d}_{os.path.basename(p)}" for i, p in enumerate(top, 1)]
    assert "img/s" in err  # the progress bar
