"""Drawing boxes on images and thumbnails: predicted boxes coloured by confidence (the mining report), and boxes in
fixed styles (the label audit's page: labelled, predicted, the one a finding is about).

Boxes are coloured by confidence on viridis, a fixed perceptually uniform ramp (dark violet at 0, yellow at 1)
that reads the same in grey print and to colour-blind eyes, so one colour means one confidence on every page."""
from dataclasses import dataclass
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
        clipped = pixel_box(boxes[i], width, height)
        if clipped is None:
            continue
        x1, y1, x2, y2 = clipped
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


def pixel_box(box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """`box` (x1, y1, x2, y2) clipped to a `width` x `height` image and rounded to pixels; None when it is not
    finite or has no area there."""
    if not np.all(np.isfinite(box)):
        return None
    x1, x2 = sorted((min(max(box[0], 0.0), width - 1.0), min(max(box[2], 0.0), width - 1.0)))
    y1, y2 = sorted((min(max(box[1], 0.0), height - 1.0), min(max(box[3], 0.0), height - 1.0)))
    x1, y1, x2, y2 = (int(round(v)) for v in (x1, y1, x2, y2))
    return None if x2 <= x1 or y2 <= y1 else (x1, y1, x2, y2)


def thumbnail(image: np.ndarray, max_side: int = 256) -> np.ndarray:
    """`image` scaled (never enlarged) so its longer side is at most `max_side`, aspect ratio kept; area
    interpolation, so fine detail averages instead of aliasing. Returns the image itself when already small."""
    height, width = image.shape[:2]
    ratio = max_side / max(height, width, 1)
    if ratio >= 1.0:
        return image
    size = (max(1, int(round(width * ratio))), max(1, int(round(height * ratio))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------- styled boxes

@dataclass(frozen=True)
class StyledBox:
    """A box drawn in a fixed colour, solid or dashed; `bold` (twice as thick) for the box a label-audit finding
    is about."""
    xyxy: tuple[float, float, float, float]
    label: str
    colour: tuple[int, int, int]
    dashed: bool = False
    bold: bool = False


def _dashed_line(image: np.ndarray, start, end, colour, thickness: int, dash: int) -> None:
    (x0, y0), (x1, y1) = start, end
    length = max(abs(x1 - x0), abs(y1 - y0))
    for begin in range(0, length + 1, 2 * dash):
        stop = min(begin + dash, length)
        a = (x0 + (x1 - x0) * begin // max(length, 1), y0 + (y1 - y0) * begin // max(length, 1))
        b = (x0 + (x1 - x0) * stop // max(length, 1), y0 + (y1 - y0) * stop // max(length, 1))
        cv2.line(image, a, b, colour, thickness, lineType=cv2.LINE_AA)


def _rectangle(image: np.ndarray, corners, colour, thickness: int, dashed: bool) -> None:
    x1, y1, x2, y2 = corners
    if not dashed:
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, thickness, lineType=cv2.LINE_AA)
        return
    dash = 3 * thickness + 3
    for start, end in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        _dashed_line(image, start, end, colour, thickness, dash)


def draw_styled_boxes(image_rgb: np.ndarray, boxes: Sequence[StyledBox]) -> np.ndarray:
    """A copy of `image_rgb` (uint8 H×W×3) with the boxes drawn in order (the last on top), each in its own style,
    outlined in contrast (white round dark colours, black round light ones) so it shows on any photo; bold ones
    twice as thick. Labels are placed from the last box back: above the box (inside when there is no room), else
    at its foot when that would cover a label already placed, else left out. Boxes are clipped to the image;
    degenerate ones are skipped."""
    image = np.ascontiguousarray(image_rgb, dtype=np.uint8).copy()
    height, width = image.shape[:2]
    side = max(height, width)
    thin = max(1, int(round(side / 256)))
    font_scale, pad = max(0.35, side / 720.0), 2
    drawn = []
    for box in boxes:
        corners = pixel_box(np.asarray(box.xyxy, np.float64), width, height)
        if corners is None:
            continue
        thickness = 2 * thin + 1 if box.bold else thin
        edge = (255, 255, 255) if _dark(box.colour) else (0, 0, 0)
        _rectangle(image, corners, edge, thickness + 2, box.dashed)
        _rectangle(image, corners, box.colour, thickness, box.dashed)
        drawn.append((box, corners, edge))
    placed = []
    for box, (x1, y1, _, y2), edge in reversed(drawn):
        if not box.label:
            continue
        (text_w, text_h), baseline = cv2.getTextSize(box.label, _FONT, font_scale, 1)
        label_h = text_h + baseline + 2 * pad
        left = min(x1, max(0, width - text_w - 2 * pad))
        tops = (y1 - label_h if y1 - label_h >= 0 else y1, max(0, y2 - label_h))  # above the box, else at its foot
        rect = next((r for r in ((left, t, left + text_w + 2 * pad, t + label_h) for t in tops)
                     if not any(r[0] < p[2] and p[0] < r[2] and r[1] < p[3] and p[1] < r[3] for p in placed)), None)
        if rect is None:
            continue
        placed.append(rect)
        cv2.rectangle(image, rect[:2], rect[2:], box.colour, -1)
        cv2.putText(image, box.label, (rect[0] + pad, rect[1] + pad + text_h), _FONT, font_scale, edge, 1,
                    lineType=cv2.LINE_AA)
    return image
