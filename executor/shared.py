"""What every layer names alike: the model families (a manifest's object_type) and their Ultralytics tasks, the
words for tasks in messages, a gpu_id as a list of GPUs, and a labelled sample (an image with its ground truth)
as the dataset readers make it and the evaluation reads it. Imports nothing of executor/."""
from dataclasses import dataclass
from typing import Any

import numpy as np


# ---------------------------------------------------------------- task families (manifest object_type)
# One code base serves two families; each has its own templates and manifest (ymir-protocol §3). Which one this
# process serves is the object_type of the manifest beside the templates it reads (active_templates_dir()).
DETECTION, SEGMENTATION = 2, 4
FAMILIES = {DETECTION: "detection", SEGMENTATION: "instance segmentation"}
# The Ultralytics task of each family (manifest object_type → task), and the words for tasks in messages.
TASK_OF_OBJECT_TYPE = {DETECTION: "detect", SEGMENTATION: "segment"}
OBJECT_TYPE_OF_TASK = {task: object_type for object_type, task in TASK_OF_OBJECT_TYPE.items()}
TASK_WORDS = {"detect": "detection", "segment": "segmentation", "pose": "pose", "obb": "oriented-box",
              "classify": "classification", "semseg": "semantic segmentation"}


def task_words(task: str) -> str:
    return f"{TASK_WORDS.get(task, task)} ('{task}')"


def gpu_list(value: Any) -> list[int]:
    """'' / None / 'cpu' = no GPU; '0', 0, '0,1' = container-local CUDA ids. The one gpu_id parser."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "cpu", "none")):
        return []
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"{value!r} is not comma-separated GPU numbers")
    return [int(p) for p in parts]


# ---------------------------------------------------------------- a labelled sample

@dataclass
class Sample:
    image: str            # absolute asset path, as in the index
    width: int            # decoded size (EXIF orientation applied)
    height: int
    suffix: str           # a real image suffix for the format found in the file ('jpg', 'png', ...)
    boxes: np.ndarray     # (N, 4) float32 x1, y1, x2, y2 in pixels, clipped to the image
    classes: np.ndarray   # (N,) int64 indices into class_names
    segments: list | None = None  # segmentation: per box its (K, 2) float32 polygon in pixels (Ultralytics' label)
    masks: list | None = None     # segmentation: per box its annotated mask as COCO RLE (the evaluation's truth)
    sources: list[str] | None = None  # per box where it is written (file and line, VOC object, COCO annotation id),
                                      # when the reader was asked (the label audit names it)
