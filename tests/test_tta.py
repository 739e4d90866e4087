"""Test-time augmentation of infer (`augment: true`, `--augment`): Ultralytics' own augmented forward on our canvas,
the refusals of models that have none, and mining untouched by it."""
import json

import numpy as np
import pytest

from executor.engine.images import read_image
from executor.errors import ConfigError
from tests.platform import (WEIGHTS, coco_images, image_folder, make_env, monitor_fields, run_cli, run_platform,
                            template_detector)
from tests.ymir_builders import SHARED

COCO8 = sorted((SHARED / "data" / "coco8" / "images").rglob("*.jpg"))[:2]


@pytest.mark.slow
def test_augmented_boxes_are_ultralytics_augmented_predict_on_the_same_canvas():
    from ultralytics import YOLO

    plain = template_detector(320)
    augmented = plain.augmented()
    ultralytics = YOLO(str(WEIGHTS))
    differs = 0
    for path in COCO8:
        canvas, box = augmented.letterbox(read_image(str(path)))
        ours = augmented.predict_canvases(canvas[None], [box])[0]
        # the canvas is already a stride multiple at imgsz = its shape: Ultralytics letterboxes it as it is
        theirs = ultralytics.predict(np.ascontiguousarray(canvas[..., ::-1]), imgsz=list(canvas.shape[:2]),
                                     augment=True, conf=plain.conf_thres, iou=plain.iou_thres,
                                     max_det=plain.max_det, device="cpu", verbose=False)[0].boxes
        assert len(ours) == len(theirs) > 0
        np.testing.assert_allclose(ours.xyxy, box.to_original(theirs.xyxy.numpy()), rtol=0, atol=1e-4)
        np.testing.assert_allclose(ours.conf, theirs.conf.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_array_equal(ours.cls, theirs.cls.numpy().astype(np.int64))
        single = plain.predict_canvases(canvas[None], [box])[0]
        differs += len(single) != len(ours) or not np.allclose(single.xyxy, ours.xyxy, atol=1e-2)
    assert differs  # the augmented forward is not the plain one


def test_augment_with_an_onnx_model_is_config_error_300001_in_platform_mode(tmp_path):
    fake_onnx = tmp_path / "model.onnx"
    fake_onnx.write_bytes(b"refused before it is loaded")
    env = make_env(tmp_path, run_infer=True, candidates=coco_images(1), weights=fake_onnx,
                   config={"augment": True})
    status, log = run_platform(env)
    assert status == 1
    fields = monitor_fields(env)
    assert fields[3] == "4" and "300001" in fields
    assert "config key 'augment'" in log and "model.onnx is an ONNX model" in log


@pytest.mark.slow
def test_augment_with_a_segmentation_model_is_config_error_300001_in_platform_mode(tmp_path, seg_weights):
    from executor.protocol.templates import TEMPLATES_VAR, family_templates
    from executor.shared import SEGMENTATION

    env = make_env(tmp_path, run_infer=True, candidates=coco_images(1), weights=seg_weights,
                   config={"augment": "true"})
    status, log = run_platform(env, environ={TEMPLATES_VAR: family_templates(SEGMENTATION)})
    assert status == 1 and "300001" in monitor_fields(env)
    assert "config key 'augment'" in log and "segmentation" in log


@pytest.mark.slow
def test_the_engine_refuses_a_segmentation_model_it_loaded(seg_weights):
    with pytest.raises(ConfigError, match="config key 'augment'.*segmentation") as err:
        template_detector(320, seg_weights).augmented()
    assert err.value.code == 300001


@pytest.mark.slow
def test_cli_refusals_are_usage_errors_naming_the_flag(capsys, tmp_path, seg_weights):
    fake_onnx = tmp_path / "model.onnx"
    fake_onnx.write_bytes(b"refused before it is loaded")
    images = SHARED / "data" / "coco8" / "images"  # refused before any is read
    status, err = run_cli(capsys, "infer", "--model", fake_onnx, "--source", images, "--augment",
                          "--out", tmp_path / "found.json")
    assert status == 2 and "--augment: test-time augmentation needs a PyTorch detection model" in err
    assert "model.onnx is an ONNX model" in err
    status, err = run_cli(capsys, "infer", "--model", seg_weights, "--source", images, "--augment",
                          "--out", tmp_path / "found.json")
    assert status == 2 and "--augment" in err and "segmentation" in err
    status, err = run_cli(capsys, "mine", "--model", WEIGHTS, "--source", images, "--augment",
                          "--out", tmp_path / "ranked.tsv")
    assert status == 2 and "--augment needs --infer-out" in err
    assert not (tmp_path / "found.json").exists() and not (tmp_path / "ranked.tsv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["entropy", "aldd"])
def test_mining_in_the_same_pass_is_byte_identical_with_augment(capsys, tmp_path, algorithm):
    pool = image_folder(tmp_path / "pool", 4)
    outputs = {}
    for augment in (False, True):
        ranked, found = tmp_path / f"ranked-{augment}.tsv", tmp_path / f"found-{augment}.json"
        status, err = run_cli(capsys, "mine", "--model", WEIGHTS, "--source", pool, "--imgsz", 320,
                              "--algorithm", algorithm, "--infer-out", found, "--out", ranked,
                              "--format", "coco", *(["--augment"] if augment else []))
        assert status == 0, err
        outputs[augment] = ranked.read_bytes(), json.loads(found.read_text())["annotations"]
    assert outputs[False][0] == outputs[True][0]
    assert outputs[False][1] != outputs[True][1]  # the detections are the augmented ones
