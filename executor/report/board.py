"""The mining report as a TensorBoard view: the top N as an image grid, the summary as markdown, the scores as a
histogram.
"""

import json
from typing import Sequence

import cv2
import numpy as np

from executor.report.collect import ReportData, ReportImage, jsonable, score_histogram
from executor.report.page import RUN_FIELDS, ScoreFormat, render_thumbnail, thumbnails_note, top_title


# ---------------------------------------------------------------------------------------------- TensorBoard

def _grid(items: Sequence[ReportImage], class_names: Sequence[str], fmt: ScoreFormat, cell: int = 192,
          columns: int = 10) -> np.ndarray:
    """Top-N thumbnails with boxes, letterboxed onto white cells in rank order, rank and score under each."""
    columns = max(1, min(columns, len(items)))
    rows = -(-len(items) // columns)
    caption = 22
    grid = np.full((rows * (cell + caption), columns * cell, 3), 255, dtype=np.uint8)
    for n, item in enumerate(items):
        image, _ = render_thumbnail(item.path, class_names, item, cell - 4)
        r, c = divmod(n, columns)
        top, left = r * (cell + caption), c * cell
        h, w = image.shape[:2]
        y, x = top + (cell - h) // 2, left + (cell - w) // 2
        grid[y:y + h, x:x + w] = image
        cv2.putText(grid, f"#{item.rank} {fmt(item.score)}", (left + 4, top + cell + 15), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (30, 30, 30), 1, cv2.LINE_AA)
    return grid


def _markdown_summary(data: ReportData) -> str:
    run = data.run
    lines = ["| | |", "|---|---|"]
    for key, title in RUN_FIELDS:
        if key in run:
            value = run[key]
            lines.append(f"| {title} | `{json.dumps(jsonable(value), ensure_ascii=False)}` |")
    lines.append(f"| Scored | {len(data.scores)} |")
    lines.append(f"| Unreadable | {len(data.unreadable)} |")
    thumbnails = thumbnails_note(data)
    lines += ["", f"{top_title(data)}{'; ' + thumbnails if thumbnails else ''}:", "",
              "| rank | score | raw score | boxes | path |", "|---|---|---|---|---|"]
    fmt = ScoreFormat.of(data)
    for item in data.top:
        lines.append(f"| {item.rank} | {fmt(item.score)} | {fmt(item.raw_score)} | {len(item.xyxy)} | {item.path} |")
    for path, reason in data.unreadable[:50]:
        lines.append(f"\nunreadable: {path} ({reason})")
    if data.near_duplicates and data.near_duplicates.get("warning"):
        lines.append(f"\n**{data.near_duplicates['warning']}**")
    return "\n".join(lines)


def write_tensorboard(logdir: str, data: ReportData) -> None:
    """The report's essentials as TensorBoard events in `logdir`: the score histogram (with the same bins as the
    page), the top-N thumbnails with their boxes as one image grid in rank order, and a text summary."""
    from tensorboardX import SummaryWriter

    with SummaryWriter(logdir) as writer:
        if len(data.scores):
            hist = score_histogram(data.scores, data.cut)
            writer.add_histogram("mining/score", data.scores, 0, bins=np.asarray(hist["bin_edges"]))
        if data.top:
            writer.add_image("mining/top", _grid(data.top, data.class_names, ScoreFormat.of(data)), 0,
                             dataformats="HWC")
        writer.add_text("mining/summary", _markdown_summary(data), 0)
        for key in ("seconds", "images_per_s"):
            if isinstance(data.run.get(key), (int, float, np.number)):
                writer.add_scalar(f"mining/{key}", float(data.run[key]), 0)
