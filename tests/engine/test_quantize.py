"""The int8 export (executor/engine/quantize.py) of the COCO model at 320 px, calibrated on 8 coco-val images: a QDQ
model whose head decoding stays float, that evaluates close to its float export and mines like any ONNX."""
import numpy as np
import onnx
import pytest

from executor.engine.evaluation import evaluate
from executor.engine.loading import export_onnx, load_detector
from executor.engine.quantize import decode_nodes, quantize_int8
from tests.pipeline.test_training import coco_val_samples
from tests.platform import WEIGHTS, coco_names, run_cli

pytestmark = pytest.mark.slow
SIZE = 320


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(float ONNX with dynamic batch and size, its int8 quantisation) and the calibration's image count."""
    folder = tmp_path_factory.mktemp("int8")
    float_onnx, int8_onnx = folder / "best.onnx", folder / "best-int8.onnx"
    export_onnx(str(WEIGHTS), str(float_onnx), SIZE, 13, dynamic=True)
    calibration = [s.image for s in coco_val_samples(8)] + [str(folder / "missing.jpg")]  # skipped with a warning
    count = quantize_int8(str(float_onnx), str(int8_onnx), calibration, SIZE, threads=1)
    return float_onnx, int8_onnx, count


def test_the_int8_model_is_qdq_with_a_float_decoding(exports):
    float_onnx, int8_onnx, count = exports
    assert count == 8 and not list(int8_onnx.parent.glob("*.tmp.onnx"))
    graph = onnx.load(str(int8_onnx)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 50
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)  # int8 weights
    produced_by = {out: n for n in graph.node for out in n.output}
    assert produced_by[graph.output[0].name].op_type == "Concat"  # boxes and scores joined in float
    excluded = decode_nodes(str(float_onnx))
    assert "/model.22/Sigmoid" in excluded and not any("/cv2." in n or "/cv3." in n for n in excluded)


def test_the_int8_model_evaluates_close_to_the_float_export(exports):
    float_onnx, int8_onnx, _ = exports
    samples = coco_val_samples(132)[100:]  # not the calibration images
    found = {}
    for name, weights in (("float", float_onnx), ("int8", int8_onnx)):
        detector = load_detector(str(weights), "auto", "", SIZE, conf_thres=0.005, iou_thres=0.7, max_det=300,
                                 class_names=coco_names(), threads=1)
        assert type(detector).__name__ == "OnnxDetector" and detector.rect_stride == 32
        found[name] = evaluate(detector, samples, 0.5, 0.005, 8)
    assert found["float"].mAP > 0.3
    assert abs(found["int8"].mAP - found["float"].mAP) < 0.05, (found["int8"], found["float"])


def test_the_int8_model_mines_through_the_onnx_backend(exports, capsys, tmp_path):
    import shutil

    _, int8_onnx, _ = exports
    pool = tmp_path / "pool"
    pool.mkdir()
    for sample in coco_val_samples(110)[100:]:
        shutil.copy(sample.image, pool)
    out = tmp_path / "ranked.tsv"
    status, err = run_cli(capsys, "mine", "--weights", int8_onnx, "--images", pool, "--algorithm", "entropy",
                          "--img-size", SIZE, "--out", out)
    assert status == 0, err
    scores = [float(line.split("\t")[1]) for line in out.read_text().splitlines()]
    assert len(scores) == 10 and np.isfinite(scores).all() and scores == sorted(scores, reverse=True)
    assert max(scores) > 0
