"""Drawing predicted boxes on images (the one box-drawing function of the project) and thumbnails.

Boxes are coloured by confidence on viridis, a fixed perceptually uniform ramp (dark violet at 0, yellow at 1)
that reads the same in grey print and to colour-blind eyes, so one colour means one confidence on every page."""
from typing import Sequence

import cv2
import numpy as np

# viridis sampled at 0, 0.1, ..., 1 (RGB); colours in between are interpolated linearly
_VIRIDIS = np.array([
    (0x44, 0x01, 0x54), (0x48, 0x25, 0x76), (0x41, 0x44, 0x87), (0x35, 0x60, 0x8D), (0x2A, 0x78, 0x8E),
    (0x21, 0x90, 0x8C), (0x22, 0xA8, 0x84), (0x43, 0xBF, 0x71), (0x7A, 0xD1, 0x51), (0xBB, 0xDF, 0x27),
    (0xFD, 0xE7, 0x25)], dtype=np.float64)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def confidence_colour(conf: float) -> tuple[int, int, int]:
    """RGB of `conf` (clipped to [0, 1]; NaN counts as 0) on the viridis ramp."""
    value = float(conf)
    value = 0.0 if not np.isfinite(value) else min(1.0, max(0.0, value))
    position = value * (len(_VIRIDIS) - 1)
    low = min(int(position), len(_VIRIDIS) - 2)
    mix = position - low
    rgb = _VIRIDIS[low] * (1.0 - mix) + _VIRIDIS[low + 1] * mix
    return tuple(int(round(c)) for c in rgb)


def ramp_stops(count: int = 11) -> list[tuple[float, str]]:
    """(position in [0, 1], '#rrggbb') stops of the confidence ramp, for legends drawn elsewhere (SVG, CSS)."""
    return [(p, "#%02x%02x%02x" % confidence_colour(p)) for p in np.linspace(0.0, 1.0, count)]


def _dark(rgb: tuple[int, int, int]) -> bool:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 128


def draw_detections(image_rgb: np.ndarray, xyxy, labels: Sequence[str], conf, *,
                    overlapping_labels: bool = False) -> np.ndarray:
    """A copy of `image_rgb` (uint8 H×W×3) with box i of `xyxy` (N, 4, pixels of this image) drawn in the colour
    of `conf[i]` and labelled "`labels[i]` 0.87". Each box gets a thin outline in contrast to its colour
    (white round dark colours, black round light ones) so it shows on any photo; lowest confidence is drawn
    first, so the surest boxes end on top. Labels go above their box when there is room, else just inside it,
    after all boxes; in a crowded image a label that would cover a surer box's label is left out (its box is
    still drawn) unless `overlapping_labels`. Boxes are clipped to the image; degenerate or non-finite ones are
    skipped. Line width and text size follow the image size (2 px and ~9 px text at 256 px)."""
    image = np.ascontiguousarray(image_rgb, dtype=np.uint8).copy()
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_detections wants an H×W×3 RGB image, got shape {image.shape}")
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(conf, dtype=np.float64).reshape(-1)
    if len(labels) != len(boxes) or len(scores) != len(boxes):
        raise ValueError(f"draw_detections: {len(boxes)} boxes, {len(labels)} labels, {len(scores)} confidences")
    height, width = image.shape[:2]
    side = max(height, width)
    thickness = max(2, int(round(side / 320)))
    font_scale = max(0.35, side / 680.0)
    font_thickness = max(1, int(round(side / 640)))
    pad = max(1, thickness // 2 + 1)
    order = np.argsort(np.nan_to_num(scores, nan=0.0), kind="stable")  # least sure first
    drawn = []  # (index, x1, y1, colour, edge) in drawing order
    for i in order:
        box = boxes[i]
        if not np.all(np.isfinite(box)):
            continue
        x1, x2 = sorted((min(max(box[0], 0.0), width - 1.0), min(max(box[2], 0.0), width - 1.0)))
        y1, y2 = sorted((min(max(box[1], 0.0), height - 1.0), min(max(box[3], 0.0), height - 1.0)))
        x1, y1, x2, y2 = (int(round(v)) for v in (x1, y1, x2, y2))
        if x2 <= x1 or y2 <= y1:
            continue
        colour = confidence_colour(scores[i])
        edge = (255, 255, 255) if _dark(colour) else (0, 0, 0)
        cv2.rectangle(image, (x1, y1), (x2, y2), edge, thickness + 2, lineType=cv2.LINE_AA)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, thickness, lineType=cv2.LINE_AA)
        drawn.append((i, x1, y1, colour, edge))
    placed = []  # label rectangles (left, top, right, bottom), surest first
    labelled = []
    for i, x1, y1, colour, edge in reversed(drawn):
        score_text = "nan" if not np.isfinite(scores[i]) else f"{scores[i]:.2f}"
        text = f"{labels[i]} {score_text}"
        (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, font_scale, font_thickness)
        label_h = text_h + baseline + 2 * pad
        top = y1 - label_h if y1 - label_h >= 0 else y1
        left = min(x1, max(0, width - text_w - 2 * pad))
        rect = (left, top, left + text_w + 2 * pad, top + label_h)
        if not overlapping_labels and any(rect[0] < r[2] and r[0] < rect[2] and rect[1] < r[3] and r[1] < rect[3]
                                          for r in placed):
            continue
        placed.append(rect)
        labelled.append((rect, text, text_h, colour, edge))
    for rect, text, text_h, colour, edge in reversed(labelled):
        cv2.rectangle(image, rect[:2], (rect[2], rect[3]), colour, -1)
        cv2.putText(image, text, (rect[0] + pad, rect[1] + pad + text_h), _FONT, font_scale, edge, font_thickness,
                    lineType=cv2.LINE_AA)
    return image


def thumbnail(image: np.ndarray, max_side: int = 256) -> np.ndarray:
    """`image` scaled (never enlarged) so its longer side is at most `max_side`, aspect ratio kept; area
    interpolation, so fine detail averages instead of aliasing. Returns the image itself when already small."""
    height, width = image.shape[:2]
    ratio = max_side / max(height, width, 1)
    if ratio >= 1.0:
        return image
    size = (max(1, int(round(width * ratio))), max(1, int(round(height * ratio))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
