"""Static int8 quantisation of an ONNX export: onnxruntime's quantiser in QDQ form (QuantizeLinear /
DequantizeLinear pairs around int8 weights and activations, which any ONNX runtime reads), activation ranges
calibrated (min-max) on images prepared exactly as OnnxDetector prepares its input.
"""
import logging
import os
from typing import Iterable, Iterator

import numpy as np

from executor.engine.images import read_image
from executor.engine.onnx_detector import OnnxDetector, onnx_input
from executor.errors import ImageError, ModelError

log = logging.getLogger(__name__)
MAX_INTERMEDIATE_OUTPUTS = 16  # calibration merges the activation ranges every this many images (bounded memory)


def calibration_inputs(detector: OnnxDetector, images: Iterable[str]) -> Iterator[dict]:
    """{input name: one image's network input} for each readable image (letterboxed by `detector`, as it predicts);
    an unreadable image is skipped with a warning."""
    for path in images:
        try:
            canvas, _ = detector.letterbox(read_image(path))
        except ImageError as exc:
            log.warning("int8 calibration skips an unreadable image: %s", exc)
            continue
        yield {detector.input_name: onnx_input(canvas[None])}


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over calibration_inputs, counting what it gave."""

    def __init__(self, inputs: Iterator[dict]):
        self.inputs, self.count = inputs, 0

    def get_next(self) -> dict | None:
        found = next(self.inputs, None)
        self.count += found is not None
        return found


def decode_nodes(float_onnx: str) -> list[str]:
    """The nodes of the Detect head outside its convolution branches (`/model.N/cvK...`): the box decoding (DFL,
    anchors, strides), the sigmoid and the concatenations into output0. Quantised, boxes in pixels and class
    scores in [0, 1] would share one int8 scale in output0, and the scores would lose almost all their resolution.
    An Ultralytics export names the head's nodes `/model.N/...`, N the last module."""
    import re

    import onnx

    graph = onnx.load(float_onnx, load_external_data=False).graph
    modules = [int(m.group(1)) for m in (re.match(r"^/model\.(\d+)/", n.name) for n in graph.node) if m]
    if not modules:
        raise ModelError(f"{float_onnx}: no Ultralytics head found (node names /model.N/...)")
    head = f"/model.{max(modules)}/"
    return [n.name for n in graph.node if n.name.startswith(head) and not re.match(r"cv\d+[./]", n.name[len(head):])]


def quantize_int8(float_onnx: str, target: str, images: Iterable[str], img_size: int, threads: int = 0) -> int:
    """`float_onnx` statically quantised to int8 (QDQ, per-channel weights, activations calibrated on `images`)
    and written to `target`; returns the number of calibration images. A ModelError when no image is readable."""
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    detector = OnnxDetector(float_onnx, torch.device("cpu"), img_size, threads, conf_thres=0.25, iou_thres=0.7,
                            max_det=300)
    reader = _Reader(calibration_inputs(detector, images))
    CalibrationDataReader.register(_Reader)
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    partial = f"{target}.tmp.onnx"
    try:
        quantize_static(float_onnx, partial, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=decode_nodes(float_onnx),
                        extra_options={"CalibMaxIntermediateOutputs": MAX_INTERMEDIATE_OUTPUTS})
        if not reader.count:
            raise ModelError(f"int8 calibration of {float_onnx}: no readable image")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return reader.count
