"""The ONNX Runtime backend: an exported model as a Detector, with the neck's feature maps added as graph
outputs for embeddings when they can be found.
"""

import ast
import logging
import os

import numpy as np
import torch

from executor.engine.detector import Detector, TASKS_SERVED, augment_refused
from executor.errors import ModelError
from executor.shared import task_words

log = logging.getLogger(__name__)


def onnx_augment_refused(weights: str):
    """The error of `augment: true` with an ONNX model."""
    return augment_refused(f"{weights} is an ONNX model (the augmented forward is Ultralytics' PyTorch one)")


class OnnxDetector(Detector):
    """ONNX Runtime on an Ultralytics ONNX export: output0 = (B, 4+C+M, A), same as the torch head, and for a
    segmentation export (metadata task 'segment') output1 = the prototypes (B, M, H/4, W/4)."""

    def __init__(self, weights: str, device: torch.device, img_size: int, threads: int, pin_memory: bool = False,
                 **post):
        super().__init__(weights, **post)
        if not os.path.isfile(weights):
            raise ModelError(f"weights file not found: {weights}")
        import onnxruntime as ort

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else [
            "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # threads that sleep between runs, like torch's (OMP_WAIT_POLICY=PASSIVE): spinning ones take the CPUs
        # from whatever else runs in or beside this process
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(weights, options, providers=providers)
        except Exception as exc:
            raise ModelError(f"cannot load ONNX model {weights}: {type(exc).__name__}: {exc}") from exc
        self.device = torch.device("cpu")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.fixed_size = inp.shape[2] if isinstance(inp.shape[2], int) else None
        self.img_size = self.input_size(img_size)
        self.rect_stride = None if self.fixed_size else max(self.strides)  # an export with dynamic height and width
        if self.fixed_size and self.fixed_size != img_size:
            log.warning("ONNX model %s has a fixed input size %d; img_size %d is ignored", weights,
                        self.fixed_size, img_size)
        meta = self.session.get_modelmeta().custom_metadata_map
        outputs = self.session.get_outputs()
        if meta.get("task", "detect") not in TASKS_SERVED:
            raise ModelError(f"ONNX model {weights} is a {task_words(meta['task'])} model; a detection or "
                             "segmentation model is needed")
        if meta.get("task") == "segment" or (len(outputs) > 1 and len(outputs[1].shape) == 4):
            self.task, self.num_masks = "segment", int(outputs[1].shape[1])
        self.head_names = [o.name for o in outputs[:2 if self.num_masks else 1]]
        num_classes = int(outputs[0].shape[1]) - 4 - self.num_masks
        self.names = onnx_class_names(meta.get("names"), num_classes)
        self.options, self.providers = options, providers
        self.feature_outputs: list[str] = []

    def augmented(self) -> Detector:
        raise onnx_augment_refused(self.weights)

    def enable_embeddings(self) -> bool:
        """Reload the model with the Detect head's inputs as extra outputs (the same graph: output0 is computed
        exactly as before). False, with a warning, when the head's first convolutions cannot be found."""
        if self.embedding_dim:
            return True
        import onnxruntime as ort

        try:
            model, names, channels = onnx_with_head_inputs(self.weights)
            session = ort.InferenceSession(model.SerializeToString(), self.options, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 — any failure here means: no embeddings, mining goes on
            log.warning("ONNX model %s: no embeddings (%s: %s); selection 'diverse' falls back to the score order",
                        self.weights, type(exc).__name__, exc)
            return False
        self.session, self.feature_outputs, self.embedding_dim = session, names, sum(channels)
        log.info("embeddings: ONNX outputs %s (%d channels) from the same forward", ", ".join(names),
                 self.embedding_dim)
        return True

    def input_size(self, img_size: int) -> int:
        return self.fixed_size or super().input_size(img_size)

    @property
    def uses_cpu_cores(self) -> bool:  # outputs come back as CPU tensors whichever provider ran the graph
        return "CUDAExecutionProvider" not in self.session.get_providers()

    def head(self, canvases: np.ndarray, features: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor] | None]:
        x = onnx_input(canvases)
        step = self.fixed_batch or len(x)
        wanted = self.head_names + (self.feature_outputs if features else [])
        runs = [self.session.run(wanted, {self.input_name: x[i:i + step]}) for i in range(0, len(x), step)]
        joined = [torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0]) for parts in zip(*runs)]
        heads, levels = joined[:len(self.head_names)], joined[len(self.head_names):]
        return heads[0], (heads[1] if self.num_masks else None), levels if features else None


def onnx_input(canvases: np.ndarray) -> np.ndarray:
    """The network input of uint8 canvases (B, H, W, 3 RGB): float32 (B, 3, H, W) in [0, 1]."""
    return np.ascontiguousarray(canvases.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def onnx_with_head_inputs(weights: str):
    """(onnx model with extra graph outputs, their names, their channel counts): the inputs of the first
    convolution of each level's box branch (`/model.N/cv2.i/cv2.i.0/...Conv` in an Ultralytics export, N the
    head's module index), i.e. the neck's P3, P4, P5 feature maps that the Detect head receives."""
    import re

    import onnx

    model = onnx.load(weights)
    graph = model.graph
    pattern = re.compile(r"^/model\.(\d+)/cv2\.(\d+)/cv2\.\2\.0/")
    found: dict[int, tuple[int, str, str]] = {}
    for node in graph.node:
        match = pattern.match(node.name)
        if match and node.op_type == "Conv":
            level = int(match.group(2))
            module = int(match.group(1))
            if level not in found or module > found[level][0]:
                found[level] = (module, node.input[0], node.input[1])
    if not found or sorted(found) != list(range(len(found))) or len({m for m, _, _ in found.values()}) != 1:
        raise ModelError("no Detect head input found (expected the convolutions /model.N/cv2.i/cv2.i.0/…)")
    weights_by_name = {init.name: init for init in graph.initializer}
    names, channels = [], []
    for level in sorted(found):
        _, tensor, kernel = found[level]
        if kernel not in weights_by_name:
            raise ModelError(f"the head convolution's weight {kernel} is not an initializer")
        names.append(tensor)
        channels.append(int(weights_by_name[kernel].dims[1]))
    existing = {o.name for o in graph.output}
    for name in names:
        if name not in existing:
            graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model, names, channels


def onnx_class_names(text: str | None, num_classes: int) -> list[str]:
    """Class names from an Ultralytics export's metadata (a dict literal); numbered names when absent."""
    if text:
        try:
            names = ast.literal_eval(text)  # a literal only: never evaluates code
            return [str(names[i]) for i in sorted(names)]
        except (ValueError, SyntaxError, TypeError, KeyError):
            log.warning("ONNX metadata 'names' is unreadable; using numbered class names")
    return [f"class{i}" for i in range(num_classes)]
