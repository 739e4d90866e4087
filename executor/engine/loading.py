"""Loading a detector for prediction (PyTorch or ONNX), the task a checkpoint was trained for, and the ONNX
export.
"""

import logging
import os
from typing import Sequence

import torch

from executor.engine.detector import Detector
from executor.engine.device import select_device
from executor.engine.onnx_detector import OnnxDetector
from executor.engine.torch_detector import TorchDetector
from executor.errors import ConfigError, ModelError
from executor.runtime import usable_cpus
from executor.shared import TASK_WORDS, task_words

log = logging.getLogger(__name__)


def model_task(weights: str) -> str | None:
    """The Ultralytics task of a weights file ('detect', 'segment', ...) without preparing it for inference: an
    ONNX export's metadata, a checkpoint's model; None when the file does not say or cannot be read (loading it
    will report why)."""
    try:
        if weights.lower().endswith(".onnx"):
            import onnx

            meta = {p.key: p.value for p in onnx.load(weights, load_external_data=False).metadata_props}
            return meta.get("task", "detect")
        from ultralytics import YOLO

        return YOLO(weights, task=None).task
    except Exception:  # noqa: BLE001 — the loader names the problem with its own error code
        return None


def uses_onnx(weights: str, backend: str) -> bool:
    """ONNX Runtime runs `weights` (backend onnx, or auto and an .onnx file), else PyTorch."""
    return backend == "onnx" or (backend == "auto" and weights.lower().endswith(".onnx"))


def load_detector(weights: str, backend: str, gpu_id: str, img_size: int, *, conf_thres: float, iou_thres: float,
                  max_det: int, class_names: Sequence[str] = (), pin_memory: bool = False,
                  threads: int = 0, task: str | None = None) -> Detector:
    """The detector for `weights` (.pt → PyTorch, .onnx → ONNX Runtime, unless `backend` says so); `threads`:
    CPU threads (0: every CPU this process may use; a run's plan passes its own count); `task`: the family this image serves ('detect',
    'segment'): a model of the other family is a ModelError naming both (None: whichever the model is)."""
    device = select_device(gpu_id)
    detector = (OnnxDetector if uses_onnx(weights, backend) else TorchDetector)(
        weights, device, img_size, threads or usable_cpus(), pin_memory=pin_memory, conf_thres=conf_thres,
        iou_thres=iou_thres, max_det=max_det)
    if task and detector.task != task:
        raise ModelError(f"model {weights} is a {task_words(detector.task)} model, but this image serves "
                         f"{task_words(task)} models; give a {TASK_WORDS[task]} model (or use the "
                         f"{TASK_WORDS[detector.task]} image)")
    if class_names:
        if len(class_names) != detector.num_classes:
            raise ConfigError(f"config key 'class_names' has {len(class_names)} names but the model {weights} "
                              f"predicts {detector.num_classes} classes")
        detector.names = list(class_names)
    log.info("loaded %s (%s, %s, %d classes, img_size %d) on %s", weights, type(detector).__name__,
             TASK_WORDS[detector.task], detector.num_classes, detector.img_size, detector.device)
    return detector


def export_onnx(weights: str, target: str, img_size: int, opset: int, dynamic: bool = False) -> None:
    """ONNX export of `weights` (detection or segmentation) with the raw head output the detector expects (and a
    segmentation model's prototypes as a second output): a static 1×3×img_size² input
    (what platforms import), or with `dynamic` any batch, height and width (rectangular batches)."""
    import shutil
    import tempfile

    from ultralytics import YOLO

    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(target))) as scratch:
        copy = os.path.join(scratch, os.path.splitext(os.path.basename(target))[0] + ".pt")
        shutil.copyfile(weights, copy)  # Ultralytics writes the .onnx next to the weights it exports
        threads = torch.get_num_threads()
        produced = YOLO(copy).export(format="onnx", imgsz=img_size, opset=opset or None,
                                                    simplify=True, dynamic=dynamic, device="cpu")
        torch.set_num_threads(threads)  # the exporter's CPU device set-up lowers it
        os.replace(str(produced), target)
