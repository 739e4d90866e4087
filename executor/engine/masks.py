"""Instance masks: COCO `segmentation` (polygons or RLE) → the one polygon per instance Ultralytics trains on, and
predicted masks (prototypes × coefficients) → binary masks at the original image's resolution → COCO RLE.

Annotations (ymir-protocol §4.4: `segmentation` is `[[x1, y1, x2, y2, ...], ...]` or `{counts, size: [h, w]}`),
the way Ultralytics' own COCO converter reads them (ultralytics.data.converter.convert_coco):
- polygons in image pixels; an instance of several parts is merged into one polygon joined by thin lines
  at the parts' closest points (Ultralytics' merge_multi_segment);
- RLE (compressed string or uncompressed counts) decoded with pycocotools; its outer contours
  (cv2.findContours, RETR_EXTERNAL: holes are not kept) are the parts;
- validation: a polygon that is not an even-length list of finite numbers, an RLE without counts and size or
  that does not decode is *broken* (DatasetError); a polygon lying wholly outside the image, or an RLE whose
  size is not the image's, is a *mask outside the image* (DatasetError); points outside the image are clipped
  (counted); parts with fewer than 3 points or no area, and masks with no pixel, are *degenerate*: dropped
  and counted by reason. An instance with no usable part is dropped.
The ground truth of evaluation is each instance's own mask as annotated (RLE of its polygons, clipped, or its
RLE), not the merged polygon.
"""
import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from executor.errors import DatasetError

MAX_MASK_PIXELS = 16_000_000  # masks resized to the original size per chunk: at most this many float pixels


@dataclass
class Instance:
    polygon: np.ndarray   # (K, 2) float32 pixel coordinates: the polygon Ultralytics trains on (parts merged)
    rle: dict             # COCO RLE ({size: [h, w], counts: bytes}) of the annotated mask, for evaluation
    clipped: bool         # some point lay outside the image and was moved onto its border


# ---------------------------------------------------------------- annotations → instances

def polygon_area(points: np.ndarray) -> float:
    """Shoelace area of a (K, 2) polygon (absolute)."""
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def polygon_parts(segmentation: list, where: str) -> list[np.ndarray]:
    """The (K, 2) float64 parts of a COCO polygon segmentation; a flat list of numbers is one part."""
    parts = [segmentation] if segmentation and all(not isinstance(v, list) for v in segmentation) else segmentation
    found = []
    for number, part in enumerate(parts, 1):
        label = f"{where}: polygon {number} of {len(parts)}" if len(parts) > 1 else f"{where}: polygon"
        if not isinstance(part, list) or not all(_is_number(v) for v in part):
            raise DatasetError(f"{label} is broken: expected a list of finite numbers x1, y1, x2, y2, ..., got "
                               f"{str(part)[:80]}")
        if len(part) % 2:
            raise DatasetError(f"{label} is broken: {len(part)} coordinates, an odd count (x, y pairs expected)")
        found.append(np.asarray(part, np.float64).reshape(-1, 2))
    return found


def clip_part(points: np.ndarray, width: int, height: int, where: str) -> tuple[np.ndarray, bool]:
    """The part clipped to the image, and whether it changed; a part wholly outside is a DatasetError."""
    (x1, y1), (x2, y2) = points.min(0), points.max(0)
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise DatasetError(f"{where}: the mask lies outside the image ({width}x{height}): its polygon spans "
                           f"x {x1:g}..{x2:g}, y {y1:g}..{y2:g}")
    clipped = np.stack([points[:, 0].clip(0, width), points[:, 1].clip(0, height)], 1)
    return clipped, bool((clipped != points).any())


def rle_object(segmentation: dict, width: int, height: int, where: str) -> tuple[dict, np.ndarray]:
    """A COCO RLE of the image's size (compressed), from a compressed or uncompressed one, and its decoded
    (height, width) mask."""
    from pycocotools import mask as mask_utils

    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_number(v) for v in size)) or \
            not isinstance(counts, (str, bytes, list)):
        raise DatasetError(f"{where}: the RLE mask is broken: it needs 'size' [h, w] and 'counts', got keys "
                           f"{sorted(segmentation)}")
    if [int(size[0]), int(size[1])] != [height, width]:
        raise DatasetError(f"{where}: the mask lies outside the image: RLE size [h, w] {list(size)} is not the "
                           f"image's [{height}, {width}]")
    try:
        if isinstance(counts, list):
            if not all(_is_number(v) and v >= 0 and v == int(v) for v in counts) or sum(counts) != height * width:
                raise ValueError(f"uncompressed counts must be non-negative integers summing to {height} x {width}")
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": [int(v) for v in counts]}, height, width)
        else:
            rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
        mask = mask_utils.decode(rle)  # a corrupt counts string raises here
    except Exception as exc:  # pycocotools raises TypeError / ValueError / its own errors for corrupt counts
        raise DatasetError(f"{where}: the RLE mask is broken ({type(exc).__name__}: {exc})") from None
    return rle, mask


def outer_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The outer contour of every connected region of a binary mask, (K, 2) float64 pixel coordinates."""
    import cv2

    contours = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    return [c.reshape(-1, 2).astype(np.float64) for c in contours]


def merge_parts(parts: Sequence[np.ndarray]) -> np.ndarray:
    """One polygon from several parts, as Ultralytics' COCO converter joins them (merge_multi_segment)."""
    if len(parts) == 1:
        return parts[0]
    from ultralytics.data.converter import merge_multi_segment

    return np.concatenate(merge_multi_segment([p.reshape(-1).tolist() for p in parts]), axis=0)


def instance_from_coco(segmentation, width: int, height: int, where: str, dropped: Counter) -> Instance | None:
    """The instance of one non-crowd COCO annotation on a `width` x `height` image; None when it is degenerate
    (counted in `dropped` by reason). Broken masks and masks outside the image raise DatasetError naming `where`."""
    from pycocotools import mask as mask_utils

    clipped = False
    if segmentation is None or (isinstance(segmentation, list) and not segmentation):
        dropped["no segmentation"] += 1
        return None
    if isinstance(segmentation, dict):
        rle, mask = rle_object(segmentation, width, height, where)
        if not mask.any():
            dropped["empty mask"] += 1
            return None
        parts = [p for p in outer_contours(mask) if len(p) >= 3 and polygon_area(p) > 0]
        if not parts:
            dropped["degenerate mask (no region with an area)"] += 1
            return None
    elif isinstance(segmentation, list):
        parts = []
        for points in polygon_parts(segmentation, where):
            if len(points) < 3 or polygon_area(points) == 0:
                continue
            points, changed = clip_part(points, width, height, where)
            clipped |= changed
            if polygon_area(points) > 0:
                parts.append(points)
        if not parts:
            dropped["degenerate polygon (under 3 points or no area)"] += 1
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects([p.reshape(-1).tolist() for p in parts], height, width))
    else:
        raise DatasetError(f"{where}: 'segmentation' is broken: expected polygons [[x1, y1, ...]] or an RLE "
                           f"{{counts, size}}, got {type(segmentation).__name__}")
    polygon = merge_parts(parts).astype(np.float32)
    return Instance(polygon, rle, clipped)


def polygon_box(polygon: np.ndarray) -> tuple[float, float, float, float]:
    """x1, y1, x2, y2 of a polygon (Ultralytics derives a segment's box the same way, segments2boxes)."""
    (x1, y1), (x2, y2) = polygon.min(0), polygon.max(0)
    return float(x1), float(y1), float(x2), float(y2)


def yolo_segment_line(cls: int, polygon: np.ndarray, width: int, height: int) -> str:
    """`cls x1 y1 x2 y2 ...` normalised to [0, 1] (Ultralytics' segment label format)."""
    normalised = polygon.astype(np.float64) / np.array([width, height], np.float64)
    return f"{cls} " + " ".join(f"{v:.6f}" for v in normalised.reshape(-1)) + "\n"


# ---------------------------------------------------------------- predictions → masks at the original size

def predicted_masks(proto, coefficients, canvas_shape: tuple[int, int], letterbox, original_boxes):
    """(N, H, W) uint8 binary masks at the original image's size from one image's prototypes (C, h, w) and its
    detections' coefficients (N, C), with Ultralytics' helpers in the order of its accurate path
    (process_mask_native): the mask logits upsampled to the network input (`canvas_shape`) as process_mask does,
    scale_masks to the original size with the letterbox's ratio and padding, > 0, crop_mask with the boxes in
    original pixels. Full-size float masks (chunked: at most MAX_MASK_PIXELS floats at a time): the reference
    that box_mask_rles computes box by box."""
    import torch
    import torch.nn.functional as F
    from ultralytics.utils.ops import crop_mask, scale_masks

    height, width = letterbox.height, letterbox.width
    count = len(coefficients)
    out = torch.zeros((count, height, width), dtype=torch.uint8)
    if count == 0:
        return out
    channels, proto_h, proto_w = proto.shape
    logits = (coefficients.float() @ proto.float().reshape(channels, -1)).reshape(-1, proto_h, proto_w)
    ratio_pad = ((letterbox.ratio, letterbox.ratio), (letterbox.pad_x, letterbox.pad_y))
    step = max(1, MAX_MASK_PIXELS // (height * width + canvas_shape[0] * canvas_shape[1]))
    for start in range(0, count, step):
        part = F.interpolate(logits[None, start:start + step], canvas_shape, mode="bilinear", align_corners=False)
        out[start:start + step] = (scale_masks(part, (height, width), ratio_pad=ratio_pad)[0] > 0).cpu()
    return crop_mask(out, torch.as_tensor(np.asarray(original_boxes), dtype=torch.float32).reshape(-1, 4))


def bilinear_weights(centres: np.ndarray, canvas_length: int, proto_length: int):
    """(n, proto_length) weights that sample a prototype axis at canvas pixel positions `centres` as PyTorch's
    bilinear upsampling of the prototypes to the canvas does (align_corners=False, borders clamped)."""
    import torch

    source = np.maximum(centres * proto_length / canvas_length - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), proto_length - 1)
    high = np.minimum(low + 1, proto_length - 1)
    frac = source - low
    weights = np.zeros((len(centres), proto_length), np.float32)
    rows = np.arange(len(centres))
    weights[rows, low] = 1 - frac
    weights[rows, high] += frac  # one entry per row: no repeated index within this assignment
    return torch.from_numpy(weights)


def region_rle(region: np.ndarray, top: int, left: int, height: int, width: int) -> dict:
    """COCO RLE ({size, counts: str}) of a height x width mask that is `region` at (top, left) and 0 elsewhere,
    without building the full mask (COCO RLE runs column-major, from a run of zeros)."""
    from pycocotools import mask as mask_utils

    inside = np.flatnonzero(region.T.ravel())  # column-major positions within the region
    if not inside.size:
        counts = [height * width]
    else:
        col, row = np.divmod(inside, region.shape[0])
        pixel = (left + col) * height + top + row  # increasing: column-major in the whole image
        breaks = np.flatnonzero(np.diff(pixel) != 1)
        starts = np.concatenate(([pixel[0]], pixel[breaks + 1]))
        ends = np.concatenate((pixel[breaks], [pixel[-1]])) + 1
        runs = np.empty(2 * len(starts) + 1, np.int64)
        runs[0:-1:2] = starts - np.concatenate(([0], ends[:-1]))
        runs[1::2] = ends - starts
        runs[-1] = height * width - ends[-1]
        counts = runs[:-1].tolist() if runs[-1] == 0 else runs.tolist()  # no empty last run, as pycocotools
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def box_mask_rles(proto, coefficients, canvas_shape: tuple[int, int], letterbox, original_boxes) -> list[dict]:
    """COCO RLE of each detection's mask at the original image's size, computed inside its box only: the mask
    logits (coefficients x prototypes) sampled bilinearly at the original pixels' centres mapped through the
    letterbox, > 0, pixels r with x1 <= r < x2 (and the same for rows) kept, as Ultralytics crops. The masks of
    predicted_masks (Ultralytics' helpers, two interpolations) up to a pixel at edges, at a fraction of the cost:
    one bilinear sample per pixel of the box, no full-size float mask (tests/test_segmentation.py compares them)."""
    height, width = letterbox.height, letterbox.width
    channels, proto_h, proto_w = proto.shape
    if not len(coefficients):
        return []
    logits = (coefficients.float() @ proto.float().reshape(channels, -1)).reshape(-1, proto_h, proto_w).cpu()
    boxes = np.asarray(original_boxes, np.float64).reshape(-1, 4)
    found = []
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        left, right = int(np.clip(math.ceil(x1), 0, width)), int(np.clip(math.ceil(x2), 0, width))
        top, bottom = int(np.clip(math.ceil(y1), 0, height)), int(np.clip(math.ceil(y2), 0, height))
        if right <= left or bottom <= top:
            found.append(region_rle(np.zeros((0, 0), bool), 0, 0, height, width))
            continue
        ys = (np.arange(top, bottom) + 0.5) * letterbox.ratio + letterbox.pad_y
        xs = (np.arange(left, right) + 0.5) * letterbox.ratio + letterbox.pad_x
        wy = bilinear_weights(ys, canvas_shape[0], proto_h)
        wx = bilinear_weights(xs, canvas_shape[1], proto_w)
        region = (wy @ logits[k] @ wx.T) > 0
        found.append(region_rle(region.numpy(), top, left, height, width))
    return found


def encode(masks) -> list[dict]:
    """COCO RLE ({size: [h, w], counts: str}) of each (H, W) binary mask of an (N, H, W) array or tensor."""
    from pycocotools import mask as mask_utils

    array = masks.numpy() if hasattr(masks, "numpy") else np.asarray(masks)
    if not len(array):
        return []
    rles = mask_utils.encode(np.asfortranarray(array.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


class PredictedMasks:
    """The masks of one image's detections (mining.base.InstanceMasks), computed on first use: prototypes
    (C, h, w) of the image, coefficients (N, C) of its detections, the network input shape, the letterbox and the
    detections' boxes in original pixels (box_mask_rles crops to them)."""

    def __init__(self, proto, coefficients: np.ndarray, canvas_shape: tuple[int, int], letterbox,
                 boxes: np.ndarray):
        self.proto, self.coefficients = proto, coefficients
        self.canvas_shape, self.letterbox, self.boxes = canvas_shape, letterbox, boxes
        self._rles: list[dict] | None = None

    def __len__(self):
        return len(self.coefficients)

    def rles(self) -> list[dict]:
        if self._rles is None:
            import torch

            coefficients = torch.as_tensor(self.coefficients, device=self.proto.device)
            self._rles = box_mask_rles(self.proto, coefficients, self.canvas_shape, self.letterbox, self.boxes)
        return self._rles

    def subset(self, keep: np.ndarray) -> "PredictedMasks":
        keep = np.asarray(keep, np.int64).reshape(-1)
        other = PredictedMasks(self.proto, self.coefficients[keep], self.canvas_shape, self.letterbox, self.boxes[keep])
        if self._rles is not None:
            other._rles = [self._rles[k] for k in keep]
        return other
