"""Class-aware non-maximum suppression on torchvision's compiled kernel, without importing torchvision.

`import torchvision` costs ~1.6 s (its `ops` package imports torch._dynamo), about a third of the start-up of
a mining run, for this one function. The kernel lives in torchvision's C extension, which registers
`torch.ops.torchvision.nms` when it is loaded: we load that library alone, and import torchvision only if
the library cannot be found or loaded. Results are those of `torchvision.ops.batched_nms` (tested).
"""
import functools
import glob
import importlib.util
import os

import torch

# Above this many boxes one kernel call per class is faster on CPU than one call over all classes (the
# kernel compares each kept box with every later box); torchvision switches at the same sizes.
PER_CLASS_ABOVE = {"cpu": 1000, "cuda": 25000}


@functools.cache
def nms_kernel():
    """torch.ops.torchvision.nms(boxes (N, 4) xyxy, scores (N,), iou) -> kept indices by decreasing score."""
    spec = importlib.util.find_spec("torchvision")
    folder = os.path.dirname(spec.origin) if spec and spec.origin else ""
    for library in sorted(glob.glob(os.path.join(folder, "_C*"))):
        if library.endswith((".so", ".pyd", ".dylib")):
            try:
                torch.ops.load_library(library)
                return torch.ops.torchvision.nms
            except (OSError, RuntimeError):
                continue
    import torchvision  # noqa: F401  registers the kernel the slow way

    return torch.ops.torchvision.nms


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """Indices of the boxes that greedy NMS keeps within each class, by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    nms = nms_kernel()
    if len(boxes) <= PER_CLASS_ABOVE.get(boxes.device.type, PER_CLASS_ABOVE["cpu"]):
        # shift each class to its own region of the plane so that boxes of different classes never overlap
        offsets = classes.to(boxes.dtype) * (boxes.max() + 1)
        return nms(boxes + offsets[:, None], scores, iou_thres)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for cls in torch.unique(classes):
        members = torch.where(classes == cls)[0]
        keep[members[nms(boxes[members], scores[members], iou_thres)]] = True
    kept = torch.where(keep)[0]
    return kept[scores[kept].sort(descending=True, stable=True)[1]]
