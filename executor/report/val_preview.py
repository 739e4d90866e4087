"""A few validation images with their ground truth (solid green, as on the audit page) and a model's predictions
(dashed orange, "class 0.87") as one picture: what training shows in tensorboard after each epoch, to see at a
glance that the labels were read right and what the model has learnt so far."""
from typing import Sequence

import numpy as np

from executor.report.audit_page import PREDICTION_RGB, TRUTH_RGB
from executor.report.drawing import StyledBox, draw_styled_boxes, thumbnail

BACKGROUND = 255


def preview_cell(image: np.ndarray, truth_xyxy, truth_classes, det, class_names: Sequence[str],
                 cell: int) -> np.ndarray:
    """`image` (RGB) shrunk to fit `cell` pixels, its labelled boxes and the detections `det` (mining.base.Detections,
    original pixels) drawn on it."""
    small = thumbnail(image, cell)
    scale = small.shape[1] / image.shape[1]

    def name(cls) -> str:
        return class_names[int(cls)] if 0 <= int(cls) < len(class_names) else str(int(cls))

    boxes = [StyledBox(tuple(np.asarray(b, float) * scale), name(c), TRUTH_RGB)
             for b, c in zip(truth_xyxy, truth_classes)]
    boxes += [StyledBox(tuple(np.asarray(b, float) * scale), f"{name(c)} {s:.2f}", PREDICTION_RGB, dashed=True)
              for b, c, s in zip(det.xyxy, det.cls, det.conf)]
    return draw_styled_boxes(small, boxes)


def grid(cells: Sequence[np.ndarray], cell: int, columns: int = 2) -> np.ndarray:
    """`cells` (RGB, each at most `cell` pixels a side) centred on white squares, row by row."""
    columns = max(1, min(columns, len(cells)))
    rows = -(-len(cells) // columns)
    picture = np.full((rows * cell, columns * cell, 3), BACKGROUND, dtype=np.uint8)
    for n, image in enumerate(cells):
        r, c = divmod(n, columns)
        h, w = image.shape[:2]
        y, x = r * cell + (cell - h) // 2, c * cell + (cell - w) // 2
        picture[y:y + h, x:x + w] = image
    return picture
