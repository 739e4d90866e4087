"""The PyTorch backend: a YOLOv8/YOLO11 checkpoint as a Detector, and the class-branch net (`ClassMapsNet`)
that makes ALDD's class maps without the box and mask branches.
"""

import copy
import logging
import os

import numpy as np
import torch

from executor.engine.detector import Detector, TASKS_SERVED, augment_refused
from executor.errors import ModelError
from executor.shared import task_words

log = logging.getLogger(__name__)


# Heads whose one-to-many class branch `cv3` (one module per level, logits (B, C, h, w)) gives exactly the
# class rows of their decoded output, after a sigmoid (tested against the whole head); others run it whole
CLASS_BRANCH_HEADS = ("Detect", "Segment")


class TorchDetector(Detector):
    def __init__(self, weights: str, device: torch.device, img_size: int, threads: int, pin_memory: bool = False,
                 **post):
        super().__init__(weights, **post)
        self.device = device
        net, names, strides, self.task, self.num_masks = load_torch_model(weights)
        self.class_net = ClassMapsNet(net) if ClassMapsNet.serves(net) else None
        self.detect_head = net.model[-1]  # whose inputs are the embeddings' feature maps
        self.names = names
        self.strides = strides
        self.img_size = self.input_size(img_size)
        self.rect_stride = max(strides)
        self.pin_memory = pin_memory and device.type == "cuda"
        net = net.to(device).float().eval()
        if device.type == "cpu":
            net = net.to(memory_format=torch.channels_last)  # ~30% faster convolutions on CPU
        self.net = net
        torch.set_num_threads(threads)  # after loading: Ultralytics' device set-up changes it

    def network_input(self, canvases: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 canvases → the network's input: float [0, 1] NCHW on the device (channels_last on
        CPU: ~30% faster convolutions there)."""
        if isinstance(canvases, torch.Tensor):  # letterboxed on the device already (gpu_decode)
            x = canvases
        else:
            x = torch.from_numpy(canvases)
            if self.pin_memory:  # page-locked host memory: the copy to the GPU runs asynchronously
                x = x.pin_memory()
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cpu" else x

    def batch_input(self, canvases: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, int]:
        """The network input of `canvases` and how many of its rows are theirs. On CPU a lone canvas goes beside a
        copy of itself: oneDNN computes a batch of one with other kernels, whose last bits differ from what the
        same image gets in any larger batch (1e-4 in the raw output), so an image's output would depend on how
        many images share its batch; with the copy it never does, whatever the batch size."""
        x = self.network_input(canvases)
        if len(x) == 1 and self.device.type == "cpu":
            return torch.cat([x, x]).contiguous(memory_format=torch.channels_last), 1
        return x, len(x)

    @torch.inference_mode()
    def class_branch(self, canvases: np.ndarray | torch.Tensor) -> list[torch.Tensor] | None:
        if self.class_net is None:
            return None
        x, count = self.batch_input(canvases)
        return [level[:count] for level in self.class_net(x)]

    @torch.inference_mode()
    def head(self, canvases: np.ndarray | torch.Tensor, features: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor] | None]:
        x, count = self.batch_input(canvases)
        levels: list[torch.Tensor] = []
        hook = None
        if features:  # the head's inputs, one feature map per level, before the head changes them (this forward's)
            hook = self.detect_head.register_forward_pre_hook(lambda module, args: levels.extend(args[0]))
        if self.augment and features:
            raise ValueError("an augmented forward has no embeddings: its head runs once per scale")
        try:
            out = self.net(x, augment=self.augment)  # augment: Ultralytics' DetectionModel._predict_augment
        finally:
            if hook is not None:
                hook.remove()
        raw, proto = head_outputs(out)
        return raw[:count], None if proto is None else proto[:count], [level[:count] for level in levels] \
            if features else None

    def augmented(self) -> "TorchDetector":
        from ultralytics.nn.modules.head import Detect

        # Ultralytics augments only a model whose head is exactly Detect (else it warns and runs one scale)
        if type(self.detect_head) is not Detect:
            what = "segmentation" if self.task == "segment" else f"{type(self.detect_head).__name__}-head"
            raise augment_refused(f"{self.weights} is a {what} model")
        other = copy.copy(self)
        other.augment = True
        log.info("test-time augmentation: Ultralytics' augmented forward (scales 1, 0.83 flipped, 0.67) for %s",
                 self.weights)
        return other

    def enable_embeddings(self) -> bool:
        if not self.embedding_dim:
            self.embedding_dim = sum(int(m.conv.in_channels) if hasattr(m, "conv") else int(m.in_channels)
                                     for m in (seq[0] for seq in self.detect_head.cv2))
            log.info("embeddings: the Detect head's %d input channels, pooled per level, from the same forward",
                     self.embedding_dim)
        return True


class ClassMapsNet(torch.nn.Module):
    """An Ultralytics detection or segmentation model up to its head, then only the head's class branch: the
    sigmoid class maps (B, C, h_l, w_l) per level, finest first, equal to the class rows of the whole head's
    output. The layers are the model's own (shared, not copied), routed as its forward routes them: layer
    `f` names the earlier outputs a layer reads (-1: the previous one), `save` which outputs are kept."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.layers, self.save = net.model, set(net.save)

    @staticmethod
    def serves(net: torch.nn.Module) -> bool:
        head = net.model[-1]
        return (type(head).__name__ in CLASS_BRANCH_HEADS and not head.end2end
                and getattr(head, "cv3", None) is not None and len(head.cv3) == head.nl)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        *body, head = self.layers
        kept = []
        for layer in body:
            if layer.f != -1:
                x = kept[layer.f] if isinstance(layer.f, int) else [x if j == -1 else kept[j] for j in layer.f]
            x = layer(x)
            kept.append(x if layer.i in self.save else None)
        features = [x if j == -1 else kept[j] for j in head.f]
        return [branch(level).sigmoid() for branch, level in zip(head.cv3, features)]


def head_outputs(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(raw, prototypes or None) of an Ultralytics model's eval output: Detect returns (raw, per-level maps),
    Segment ((raw, prototypes), per-level maps)."""
    first = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(first, (tuple, list)):
        return first[0], first[1]
    return first, None


def load_torch_model(weights: str):
    """(fused eval torch module, class names, strides, task, mask coefficients per box) from an Ultralytics
    detection or segmentation checkpoint."""
    if not os.path.isfile(weights):  # a bare name would make Ultralytics try to download it
        raise ModelError(f"weights file not found: {weights}")
    from ultralytics import YOLO  # imported here so that ONNX-only runs never pay for it

    try:
        model = YOLO(weights, task=None)
    except Exception as exc:  # corrupt pickle, wrong format, unknown architecture ...
        raise ModelError(f"cannot load weights {weights}: {type(exc).__name__}: {exc}") from exc
    if model.task not in TASKS_SERVED:
        raise ModelError(f"weights {weights} are a {task_words(model.task)} model; a detection or segmentation model "
                         "is needed")
    # verbose=False: the default also counts the model's FLOPs (a deep copy and a profiled forward, ~1 s on CPU)
    net = model.model.fuse(verbose=False) if hasattr(model.model, "fuse") else model.model
    head = net.model[-1]
    if getattr(head, "end2end", False):
        head.end2end = False  # keep the dense one-to-many output that NMS and ALDD work on
    names = [str(model.names[i]) for i in sorted(model.names)]
    strides = tuple(int(s) for s in head.stride.tolist())
    return net, names, strides, model.task, int(getattr(head, "nm", 0)) if model.task == "segment" else 0
