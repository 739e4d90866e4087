"""The mining report: one self-contained HTML page (plus the same numbers as JSON, and a TensorBoard view) that
shows what a mining run ranked first and why it can be trusted, from data the run already computed.

The page needs nothing but a browser: thumbnails are JPEG data: URIs, plots are SVG written here, styles are
inline, and there is no script, so it opens from a USB stick on a machine without network. Only the images
shown (top / middle / bottom, near-duplicate groups) are read again, from their paths, to make thumbnails; one
that cannot be read gets a grey placeholder and its reason, never an exception."""

import base64
import html
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from executor.engine.images import read_image
from executor.protocol.writers import atomic_write_text
from executor.report.collect import (ReportData, ReportImage, class_name_of, class_summary, jsonable, report_json,
                                     score_histogram)
from executor.report.drawing import draw_detections, ramp_stops, thumbnail


THUMB_SIDE = 256          # longer side of a thumbnail on the page, pixels
DUPLICATE_THUMB_SIDE = 160
JPEG_QUALITY = 80
MAX_DUPLICATE_GROUPS = 24  # shown on the page (the JSON has all)
MAX_COPIES_SHOWN = 8
MAX_CLASS_ROWS = 30
MAX_UNREADABLE_ROWS = 500
MAX_RANK_POINTS = 2000     # the score-vs-rank line is drawn through at most this many points

TOP_COLOUR = "#d95f02"     # top N in every plot
POOL_COLOUR = "#8c96a3"    # the rest of the pool


# ---------------------------------------------------------------------------------------------- thumbnails

def placeholder(max_side: int, text: str = "unreadable") -> np.ndarray:
    height = max(1, max_side * 3 // 4)
    image = np.full((height, max_side, 3), 200, dtype=np.uint8)
    cv2.line(image, (0, 0), (max_side - 1, height - 1), (170, 170, 170), 1, cv2.LINE_AA)
    cv2.line(image, (0, height - 1), (max_side - 1, 0), (170, 170, 170), 1, cv2.LINE_AA)
    scale = max(0.4, max_side / 400)
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    origin = ((max_side - w) // 2, (height + h) // 2)
    cv2.rectangle(image, (origin[0] - 4, origin[1] - h - 4), (origin[0] + w + 4, origin[1] + 6), (200, 200, 200), -1)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (80, 80, 80), 1, cv2.LINE_AA)
    return image


def frame_thumbnail(image: np.ndarray, max_side: int = THUMB_SIDE) -> np.ndarray:
    """`image` scaled to fit a `max_side` × 3/4 `max_side` frame (the page's 4:3 card), never enlarged."""
    height, width = image.shape[:2]
    fit = min(max_side / width, 0.75 * max_side / height)
    return thumbnail(image, max(1, int(max(height, width) * fit)))


def render_thumbnail(path: str, class_names: Sequence[str], item: ReportImage | None = None,
                     max_side: int = THUMB_SIDE) -> tuple[np.ndarray, str | None]:
    """(RGB thumbnail with `item`'s boxes drawn, None) or (grey placeholder, why the image could not be read).
    The thumbnail fits a `max_side` × 3/4 `max_side` frame (the page's 4:3 card), so boxes and labels are drawn
    at the size they are shown, portrait images included."""
    try:
        image = read_image(path)
    except Exception as exc:  # noqa: BLE001 — any failure to read becomes a placeholder, never a crash
        return placeholder(max_side), str(exc) or type(exc).__name__
    small = frame_thumbnail(image, max_side)
    if item is not None and len(item.xyxy):
        scale_x, scale_y = small.shape[1] / image.shape[1], small.shape[0] / image.shape[0]
        boxes = item.xyxy * np.array([scale_x, scale_y, scale_x, scale_y])
        labels = [class_name_of(class_names, c) for c in item.classes]
        small = draw_detections(small, boxes, labels, item.conf)
    return small, None


def jpeg_data_uri(image_rgb: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG thumbnail")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


# ---------------------------------------------------------------------------------------------- SVG plots

def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class ScoreFormat:
    """One notation for every score of a report, plots included: 4 decimals, or scientific notation for all when
    any score would lose its digits in 4 decimals (non-zero below 1e-3) or be long (1e5 and above)."""
    scientific: bool

    @classmethod
    def of(cls, data: "ReportData") -> "ScoreFormat":
        shown = [v for item in (*data.top, *data.middle, *data.bottom) for v in (item.score, item.raw_score)
                 if v is not None]
        values = np.abs(np.concatenate([data.scores, np.asarray(shown, dtype=np.float64)]))
        values = values[np.isfinite(values) & (values > 0)]
        return cls(len(values) > 0 and bool(values.min() < 1e-3 or values.max() >= 1e5))

    def __call__(self, value: float | None) -> str:
        """A score for reading ('–' for none)."""
        if value is None:
            return "–"
        value = float(value)
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3e}" if self.scientific else f"{value:.4f}"

    def tick(self, value: float) -> str:
        """An axis label of a score axis: as short as the notation allows (2.5e-05, 0.25)."""
        if not self.scientific or value == 0:
            return f"{value:g}"
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if raw <= m * magnitude)
    start = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(float(f"{value:.12g}"))
        value += step
    return ticks


def _tick_label(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.1e}"
    return f"{value:g}"


class _Axes:
    """Maps data coordinates onto an SVG plot area with margins and draws axes, ticks and labels."""

    def __init__(self, width, height, x_range, y_range, margin=(14, 16, 44, 58)):
        self.width, self.height = width, height
        self.top, self.right, self.bottom, self.left = margin
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        if self.x1 <= self.x0:
            self.x0, self.x1 = self.x0 - 0.5, self.x0 + 0.5
        if self.y1 <= self.y0:
            self.y0, self.y1 = self.y0 - 0.5, self.y0 + 0.5

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        span = self.height - self.top - self.bottom
        return self.height - self.bottom - (value - self.y0) / (self.y1 - self.y0) * span

    def frame(self, x_label: str, y_label: str, x_ticks=None, y_ticks=None, x_text=_tick_label,
              y_text=_tick_label) -> list[str]:
        """Grid, axes, ticks and labels; `x_text`/`y_text` write the tick values (a score axis: ScoreFormat.tick)."""
        parts = []
        bottom, left = self.height - self.bottom, self.left
        for tick in (y_ticks if y_ticks is not None else _nice_ticks(self.y0, self.y1)):
            if self.y0 <= tick <= self.y1:
                ty = self.y(tick)
                parts.append(f'<line class="grid" x1="{left}" x2="{self.width - self.right}" '
                             f'y1="{ty:.1f}" y2="{ty:.1f}"/>')
                parts.append(f'<text class="tick" x="{left - 6}" y="{ty + 4:.1f}" '
                             f'text-anchor="end">{y_text(tick)}</text>')
        for tick in (x_ticks if x_ticks is not None else _nice_ticks(self.x0, self.x1)):
            if self.x0 <= tick <= self.x1:
                tx = self.x(tick)
                parts.append(f'<line class="axis" x1="{tx:.1f}" x2="{tx:.1f}" y1="{bottom}" y2="{bottom + 5}"/>')
                parts.append(f'<text class="tick" x="{tx:.1f}" y="{bottom + 18}" '
                             f'text-anchor="middle">{x_text(tick)}</text>')
        parts.append(f'<line class="axis" x1="{left}" x2="{self.width - self.right}" y1="{bottom}" y2="{bottom}"/>')
        parts.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{self.top}" y2="{bottom}"/>')
        parts.append(f'<text class="label" x="{(left + self.width - self.right) / 2:.1f}" y="{self.height - 8}" '
                     f'text-anchor="middle">{esc(x_label)}</text>')
        mid = (self.top + bottom) / 2
        parts.append(f'<text class="label" x="14" y="{mid:.1f}" text-anchor="middle" '
                     f'transform="rotate(-90 14 {mid:.1f})">{esc(y_label)}</text>')
        return parts


def _svg(width: int, height: int, title: str, parts: list[str]) -> str:
    return (f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{esc(title)}"><title>{esc(title)}</title>'
            + "".join(parts) + "</svg>")


def _histogram_svg(hist: dict, fmt: ScoreFormat, raw: bool = False) -> str:
    edges, counts, top_counts = hist["bin_edges"], hist["counts"], hist["top_counts"]
    if not counts:
        return '<p class="empty">No readable image was scored.</p>'
    width, height = 620, 290
    axes = _Axes(width, height, (edges[0], edges[-1]), (0, max(counts) * 1.08))
    parts = axes.frame("score", "images", x_text=fmt.tick)
    for low, high, count, top in zip(edges[:-1], edges[1:], counts, top_counts):
        if count == 0:
            continue
        x0, x1 = axes.x(low), axes.x(high)
        w = max(0.8, x1 - x0 - 1)
        y_all, y_rest = axes.y(count), axes.y(count - top)
        tip = f"{fmt(low)} – {fmt(high)}: {count} images, {top} of them in the top {hist['top_n']}"
        parts.append(f'<g><title>{esc(tip)}</title>'
                     f'<rect x="{x0 + 0.5:.1f}" y="{y_all:.1f}" width="{w:.1f}" height="{axes.y(0) - y_all:.1f}" '
                     f'fill="{POOL_COLOUR}"/>')
        if top:
            parts.append(f'<rect x="{x0 + 0.5:.1f}" y="{y_all:.1f}" width="{w:.1f}" height="{y_rest - y_all:.1f}" '
                         f'fill="{TOP_COLOUR}"/>')
        parts.append("</g>")
    if hist["cut_score"] is not None:
        cx = axes.x(hist["cut_score"])
        parts.append(f'<line class="cut" x1="{cx:.1f}" x2="{cx:.1f}" y1="{axes.top}" y2="{axes.y(0):.1f}"/>')
        anchor, dx = ("end", -5) if cx > width * 0.6 else ("start", 5)
        parts.append(f'<text class="cut-label" x="{cx + dx:.1f}" y="{axes.top + 12}" text-anchor="{anchor}">'
                     + (f'lowest raw score in the top {hist["top_n"]}: {fmt(hist["cut_score"])}' if raw else
                        f'top {hist["top_n"]} cut: score ≥ {fmt(hist["cut_score"])}') + '</text>')
    return _svg(width, height, f"Histogram of the {'raw' if raw else 'written'} scores, top N stacked in orange",
                parts)


def _rank_svg(scores: np.ndarray, top_n: int, fmt: ScoreFormat, raw: bool = False) -> str:
    count = len(scores)
    if count == 0:
        return '<p class="empty">No readable image was scored.</p>'
    width, height = 620, 290
    low, high = float(scores.min()), float(scores.max())
    pad = (high - low) * 0.05 or 0.5
    axes = _Axes(width, height, (1, max(count, 2)), (low - pad, high + pad))
    parts = axes.frame("rank (1 = written first)", "raw score" if raw else "score", y_text=fmt.tick)
    keep = np.unique(np.concatenate([np.linspace(0, count - 1, min(count, MAX_RANK_POINTS)).round().astype(np.int64),
                                     np.arange(min(top_n, count))[:: max(1, top_n // 200)],
                                     [min(max(top_n - 1, 0), count - 1), min(top_n, count - 1)]]))

    def line(indices, colour, css):
        if len(indices) == 0:
            return ""
        points = " ".join(f"{axes.x(i + 1):.1f},{axes.y(scores[i]):.1f}" for i in indices)
        if len(indices) == 1:
            return (f'<circle cx="{axes.x(indices[0] + 1):.1f}" cy="{axes.y(scores[indices[0]]):.1f}" r="3" '
                    f'fill="{colour}"/>')
        return f'<polyline class="{css}" fill="none" stroke="{colour}" points="{points}"/>'

    top_n = min(top_n, count)
    parts.append(line(keep[keep >= max(top_n - 1, 0)], POOL_COLOUR, "rank-line"))
    parts.append(line(keep[keep < top_n], TOP_COLOUR, "rank-line top"))
    if 0 < top_n < count:
        cx = axes.x(top_n + 0.5)
        parts.append(f'<line class="cut" x1="{cx:.1f}" x2="{cx:.1f}" y1="{axes.top}" y2="{axes.y(axes.y0):.1f}"/>')
        anchor, dx = ("end", -5) if cx > width * 0.6 else ("start", 5)
        parts.append(f'<text class="cut-label" x="{cx + dx:.1f}" y="{axes.top + 12}" text-anchor="{anchor}">'
                     f'top {top_n}</text>')
    return _svg(width, height, "Raw score against written rank" if raw else "Written score against rank", parts)


def _class_svg(data: ReportData, json_name: str | None) -> str:
    top, pool = data.class_counts_top, data.class_counts_pool
    top_total, pool_total = int(top.sum()), int(pool.sum())
    if pool_total == 0 and top_total == 0:
        return '<p class="empty">The model predicted no boxes.</p>'
    top_share = top / top_total if top_total else np.zeros(len(top))
    pool_share = pool / pool_total if pool_total else np.zeros(len(pool))
    rows = [i for i in range(len(top)) if top[i] or pool[i]]
    rows.sort(key=lambda i: (-max(top_share[i], pool_share[i]), i))
    hidden = len(rows) - MAX_CLASS_ROWS
    rows = rows[:MAX_CLASS_ROWS]
    label_w, bar_w, row_h = 150, 560, 26
    width = label_w + bar_w + 150
    height = 34 + row_h * len(rows) + 8
    biggest = max(max(top_share[i], pool_share[i]) for i in rows) or 1.0
    parts = [f'<rect x="{label_w}" y="6" width="12" height="10" fill="{TOP_COLOUR}"/>'
             f'<text class="tick" x="{label_w + 16}" y="15">top {data.cut} ({top_total} boxes)</text>'
             f'<rect x="{label_w + 190}" y="6" width="12" height="10" fill="{POOL_COLOUR}"/>'
             f'<text class="tick" x="{label_w + 206}" y="15">whole pool ({pool_total} boxes)</text>']
    for row, i in enumerate(rows):
        y = 30 + row * row_h
        name = class_name_of(data.class_names, i)
        parts.append(f'<text class="tick" x="{label_w - 8}" y="{y + 15}" text-anchor="end">{esc(name)}</text>')
        for offset, share, count, colour, who in ((0, top_share[i], top[i], TOP_COLOUR, f"top {data.cut}"),
                                                  (11, pool_share[i], pool[i], POOL_COLOUR, "pool")):
            w = share / biggest * bar_w
            parts.append(f'<g><title>{esc(name)}, {who}: {count} boxes = {share:.1%}</title>'
                         f'<rect x="{label_w}" y="{y + offset}" width="{max(w, 0.5):.1f}" height="10" fill="{colour}"/>'
                         f'<text class="value" x="{label_w + w + 5:.1f}" y="{y + offset + 9}">'
                         f'{share:.1%} ({count})</text></g>')
    svg = _svg(width, height, "Share of predicted boxes per class, top N against the whole pool", parts)
    if hidden > 0:
        svg += f'<p class="note">{hidden} more classes with smaller shares{_in_json(json_name)}.</p>'
    return svg


def _scatter_svg(points: np.ndarray, selected: np.ndarray) -> str:
    if len(points) == 0:
        return '<p class="empty">No embeddings.</p>'
    width, height = 620, 420
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = (hi - lo) * 0.05 + 1e-12
    axes = _Axes(width, height, (lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1]))
    parts = axes.frame("principal component 1", "principal component 2")
    order = np.concatenate([np.flatnonzero(~selected), np.flatnonzero(selected)])  # selected drawn on top
    for i in order:
        px, py = axes.x(points[i, 0]), axes.y(points[i, 1])
        if selected[i]:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="5" fill="{TOP_COLOUR}" stroke="#fff" '
                         f'stroke-width="1">'
                         f'<title>point {i}: selected</title></circle>')
        else:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{POOL_COLOUR}" fill-opacity="0.7">'
                         f'<title>point {i}</title></circle>')
    parts.append(f'<circle cx="{width - 150}" cy="24" r="5" fill="{TOP_COLOUR}"/>'
                 f'<text class="tick" x="{width - 140}" y="28">selected ({int(selected.sum())})</text>'
                 f'<circle cx="{width - 150}" cy="42" r="3.5" fill="{POOL_COLOUR}"/>'
                 f'<text class="tick" x="{width - 140}" y="46">not selected ({int((~selected).sum())})</text>')
    return _svg(width, height, "2-D PCA projection of the shown images' embeddings", parts)


def _ramp_legend() -> str:
    stops = "".join(f'<stop offset="{p:.2f}" stop-color="{c}"/>' for p, c in ramp_stops())
    return ('<svg class="ramp" viewBox="0 0 260 34" width="260" height="34" role="img" '
            'aria-label="box colour by confidence">'
            f'<defs><linearGradient id="conf-ramp">{stops}</linearGradient></defs>'
            '<rect x="10" y="4" width="240" height="12" fill="url(#conf-ramp)" stroke="#999" stroke-width="0.5"/>'
            '<text class="tick" x="10" y="30">0</text><text class="tick" x="130" y="30" text-anchor="middle">0.5</text>'
            '<text class="tick" x="250" y="30" text-anchor="end">1</text></svg>')


# ---------------------------------------------------------------------------------------------- HTML

CSS = """
:root { --top: %(top)s; --pool: %(pool)s; --ink: #1f2328; --muted: #59636e; --line: #d8dee4; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: #fff; }
header { padding: 20px 32px 14px; border-bottom: 1px solid var(--line); background: var(--bg); }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .sub { color: var(--muted); }
nav { margin-top: 8px; font-size: 13px; }
nav a { color: #0969da; text-decoration: none; margin-right: 14px; }
main { max-width: 1360px; margin: 0 auto; padding: 8px 32px 40px; }
section { margin-top: 26px; }
h2 { font-size: 18px; margin: 0 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 6px; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 14px; }
.figure { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 130px; background: #fff; }
.figure .v { font-size: 20px; font-weight: 600; }
.figure .k { color: var(--muted); font-size: 12px; }
table.kv { border-collapse: collapse; }
table.kv th, table.kv td { text-align: left; vertical-align: top; padding: 4px 14px 4px 0;
                           border-bottom: 1px solid #eef1f4; }
table.kv th { color: var(--muted); font-weight: 500; white-space: nowrap; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.params td:first-child { padding-right: 10px; }
.warn { color: #9a3412; }
.plots { display: flex; flex-wrap: wrap; gap: 20px; }
svg.plot { max-width: 100%%; height: auto; background: #fff; }
svg text { font-family: inherit; }
svg .tick, svg .value { font-size: 11px; fill: var(--muted); }
svg .label { font-size: 12px; fill: var(--ink); }
svg .axis { stroke: #57606a; stroke-width: 1; }
svg .grid { stroke: #eaeef2; stroke-width: 1; }
svg .cut { stroke: var(--ink); stroke-width: 1.5; stroke-dasharray: 5 3; }
svg .cut-label { font-size: 12px; font-weight: 600; fill: var(--ink); }
svg .rank-line { stroke-width: 2; }
.grid-cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(236px, 1fr)); gap: 14px; }
figure.card { margin: 0; border: 1px solid var(--line); border-radius: 6px; overflow: hidden; background: #fff; }
figure.card .frame { aspect-ratio: 4 / 3; background: #eef1f4; display: flex; align-items: center;
                     justify-content: center; }
figure.card img { display: block; max-width: 100%%; max-height: 100%%; width: auto; height: auto; }
figure.card figcaption { padding: 6px 8px 8px; font-size: 12.5px; }
.rank { font-weight: 700; font-size: 14px; margin-right: 6px; }
.score { font-weight: 600; }
.raw { color: var(--muted); margin-left: 6px; }
.path { color: var(--muted); margin-top: 2px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.path b { color: var(--ink); font-weight: 600; }
.boxes { color: var(--muted); margin-top: 2px; }
.bad { color: #b42318; font-weight: 600; }
.legend { display: flex; align-items: center; gap: 10px; color: var(--muted); font-size: 13px; margin-bottom: 10px; }
.dup { display: flex; gap: 10px; align-items: flex-start; overflow-x: auto; padding: 8px 0;
       border-bottom: 1px solid #eef1f4; }
.dup figure.card { flex: 0 0 176px; }
.dup figure.kept { border: 2px solid var(--top); }
.note, .empty { color: var(--muted); }
.warning { border-left: 4px solid #c0392b; padding: 6px 10px; background: #fdecea; }
details summary { cursor: pointer; }
footer { color: var(--muted); font-size: 12px; margin-top: 36px; border-top: 1px solid var(--line); padding-top: 8px; }
@media print { nav { display: none; } figure.card { break-inside: avoid; } }
""" % {"top": TOP_COLOUR, "pool": POOL_COLOUR}

RUN_FIELDS = [("model", "Model"), ("model_sha256", "Model SHA-256"), ("backend", "Backend"),
               ("algorithm", "Algorithm"), ("params", "Parameters"), ("error_model", "Error model"), ("seed", "Seed"), ("selection", "Selection"),
               ("selection_params", "Selection parameters"), ("shortlist", "Diversity shortlist"),
               ("duplicates_pushed_down", "Near-duplicates pushed down"), ("labeled_images", "Labelled images"),
               ("selection_note", "Selection note"), ("selection_seconds", "Selection time (s)"),
               ("raw_scores_file", "Raw scores"), ("pool_size", "Pool size"),
               ("seconds", "Time"), ("images_per_s", "Throughput"), ("started_at", "Started at"),
               ("versions", "Versions")]


# shown only when the run has them (selection diverse, an explicit backend)
_OPTIONAL_RUN_FIELDS = {"backend", "error_model", "selection_params", "shortlist", "duplicates_pushed_down", "labeled_images",
                        "selection_note", "selection_seconds", "raw_scores_file"}


def _value_html(value: Any) -> str:
    if isinstance(value, str):
        return esc(value)
    return f"<code>{esc(json.dumps(jsonable(value), ensure_ascii=False))}</code>"


def _run_rows(data: ReportData) -> str:
    run = data.run
    rows = []
    for key, title in RUN_FIELDS:
        value = run.get(key)
        if key in _OPTIONAL_RUN_FIELDS and key not in run:
            continue
        if key in ("params", "selection_params"):
            params = value if isinstance(value, dict) else {}
            cell = ("<table class='params'>" + "".join(
                f"<tr><td><code>{esc(k)}</code></td><td>{_value_html(v)}</td></tr>" for k, v in params.items())
                + "</table>") if params else '<span class="note">none</span>'
            if value is not None and not isinstance(value, dict):
                cell = _value_html(value)
        elif value is None:
            cell = '<span class="note">not recorded</span>'
        elif key == "model_sha256":
            cell = f'<code>{esc(value)}</code>'
        elif key == "model":
            cell = f'<code>{esc(value)}</code>'
        elif key == "pool_size":
            cell = (f"{esc(value)} images ({len(data.scores)} scored, "
                    f"<span class='{'warn' if data.unreadable else ''}'>{len(data.unreadable)} unreadable</span>)")
        elif key == "seconds":
            cell = f"{float(value):.1f} s" if isinstance(value, (int, float, np.number)) else _value_html(value)
        elif key == "images_per_s":
            cell = f"{float(value):.1f} images/s" if isinstance(value, (int, float, np.number)) else _value_html(value)
        elif key == "versions" and isinstance(value, dict):
            cell = " · ".join(f"{esc(k)} <code>{esc(v)}</code>" for k, v in value.items())
        else:
            cell = _value_html(value)
        rows.append(f"<tr><th>{esc(title)}</th><td>{cell}</td></tr>")
    known = {key for key, _ in RUN_FIELDS}
    for key, value in run.items():
        if key not in known:
            rows.append(f"<tr><th>{esc(key)}</th><td>{_value_html(value)}</td></tr>")
    return "<table class='kv'>" + "".join(rows) + "</table>"


def _unreadable_html(unreadable: Sequence[tuple[str, str]], json_name: str | None) -> str:
    if not unreadable:
        return '<p class="note">Every image in the pool could be read.</p>'
    shown = unreadable[:MAX_UNREADABLE_ROWS]
    rows = "".join(f"<tr><td class='mono'>{esc(p)}</td><td>{esc(r)}</td></tr>" for p, r in shown)
    more = (f'<p class="note">… and {len(unreadable) - len(shown)} more{_in_json(json_name)}.</p>'
            if len(unreadable) > len(shown) else "")
    opened = " open" if len(unreadable) <= 20 else ""
    return (f'<details{opened}><summary class="warn">{len(unreadable)} unreadable image'
            f'{"s" if len(unreadable) != 1 else ""} (not scored)</summary>'
            f"<table class='kv'><tr><th>path</th><th>reason</th></tr>{rows}</table>{more}</details>")


def common_dir(paths: Sequence[str]) -> str | None:
    """The deepest folder holding every path when there is a meaningful one (not '' or '/'), else None."""
    folders = [os.path.dirname(p) for p in paths]
    if len(folders) < 2 or not all(folders):
        return None
    try:
        common = os.path.commonpath(folders)
    except ValueError:  # absolute and relative mixed, or different drives
        return None
    return common if common not in ("", os.sep) else None


def path_html(path: str, base: str | None = None) -> str:
    """The path with its file name in bold; shown relative to `base` (the page says so) when it lies under it."""
    shown = os.path.relpath(path, base) if base and path.startswith(base + os.sep) else path
    folder, name = os.path.split(shown)
    # one line, cut with an ellipsis (CSS) when too long; the whole path in the tooltip
    return f'<div class="path" title="{esc(path)}">{esc(folder + os.sep) if folder else ""}<b>{esc(name)}</b></div>'


def _card(item: ReportImage, section: str, data: ReportData, base: str | None, fmt: ScoreFormat) -> str:
    image, error = render_thumbnail(item.path, data.class_names, item)
    raw = f'<span class="raw">raw {fmt(item.raw_score)}</span>' if item.raw_score is not None else ""
    classes = class_summary(data.class_names, item.classes)
    boxes = (f"{len(item.xyxy)} box{'es' if len(item.xyxy) != 1 else ''}: "
             + ", ".join(f"{esc(n)} {c}" for n, c in classes.items())) if len(item.xyxy) else "no boxes"
    problem = f'<div class="bad">image unreadable: {esc(error)}</div>' if error else ""
    alt = f"rank {item.rank}: {os.path.basename(item.path)}"
    return (f'<figure class="card"><div class="frame"><img class="thumb" src="{jpeg_data_uri(image)}" '
            f'width="{image.shape[1]}" height="{image.shape[0]}" alt="{esc(alt)}" data-section="{section}" '
            f'data-rank="{int(item.rank)}" data-path="{esc(item.path)}" data-score="{float(item.score)!r}"'
            f'{" data-unreadable=" + chr(34) + "1" + chr(34) if error else ""}></div>'
            f'<figcaption><span class="rank">#{int(item.rank)}</span><span class="score">{fmt(item.score)}</span>{raw}'
            f'{path_html(item.path, base)}<div class="boxes">{boxes}</div>{problem}</figcaption></figure>')


def _cards(items: Sequence[ReportImage], section: str, data: ReportData, base: str | None, fmt: ScoreFormat) -> str:
    if not items:
        return '<p class="empty">None.</p>'
    return '<div class="grid-cards">' + "".join(_card(item, section, data, base, fmt) for item in items) + "</div>"


def _near_duplicates_html(found: dict | None) -> str:
    """The warning (many flagged) and the histogram of each image's nearest photo-hash similarity, with the
    threshold from which an image counts as a copy."""
    if not found:
        return ""
    warning = f'<p class="warning">{esc(found["warning"])}</p>' if found.get("warning") else ""
    summary = (f'<p class="note">{found["flagged"]} of {found["readable"]} images are near-duplicates: the same '
               f'photo as one placed above them (share of agreeing perceptual-hash bits ≥ {found["threshold"]}, or a '
               f'crop of it). Different photos agree on about half of the bits.</p>')
    return warning + summary + _similarity_svg(found["bin_edges"], found["counts"], found["threshold"])


def _similarity_svg(edges: Sequence[float], counts: Sequence[int], threshold: float) -> str:
    if not sum(counts):
        return ""
    width, height = 620, 250
    axes = _Axes(width, height, (edges[0], edges[-1]), (0, max(counts) * 1.08))
    parts = axes.frame("highest photo-hash similarity to an image above", "images")
    for low, high, count in zip(edges[:-1], edges[1:], counts):
        if count:
            x0, y = axes.x(low), axes.y(count)
            parts.append(f'<rect x="{x0 + 0.5:.1f}" y="{y:.1f}" width="{max(0.8, axes.x(high) - x0 - 1):.1f}" '
                         f'height="{axes.y(0) - y:.1f}" fill="{TOP_COLOUR if low >= threshold else POOL_COLOUR}">'
                         f'<title>{low:.2f} – {high:.2f}: {count} images</title></rect>')
    cx = axes.x(threshold)
    parts.append(f'<line class="cut" x1="{cx:.1f}" x2="{cx:.1f}" y1="{axes.top}" y2="{axes.y(0):.1f}"/>'
                 f'<text class="cut-label" x="{cx - 5:.1f}" y="{axes.top + 12}" text-anchor="end">'
                 f'dedup_similarity {threshold}</text>')
    return _svg(width, height, "Histogram of each image's highest photo-hash similarity to an image above it", parts)


def _duplicates_html(groups: Sequence[tuple[str, list[str]]], data: ReportData, base: str | None,
                     json_name: str | None) -> str:
    ranks = {**{item.path: item.rank for item in (*data.top, *data.middle, *data.bottom)}, **data.duplicate_ranks}
    out = []
    for number, (kept, copies) in enumerate(groups[:MAX_DUPLICATE_GROUPS]):
        figures = []
        for role, path in [("kept", kept)] + [("copy", c) for c in copies[:MAX_COPIES_SHOWN]]:
            image, error = render_thumbnail(path, data.class_names, None, DUPLICATE_THUMB_SIDE)
            rank = f" · rank {ranks[path]}" if path in ranks else ""
            problem = f'<div class="bad">unreadable: {esc(error)}</div>' if error else ""
            figures.append(
                f'<figure class="card {role}"><div class="frame"><img class="thumb" src="{jpeg_data_uri(image)}" '
                f'width="{image.shape[1]}" height="{image.shape[0]}" '
                f'alt="{esc(role)}: {esc(os.path.basename(path))}" '
                f'data-section="duplicates" data-group="{number}" data-role="{role}" data-path="{esc(path)}"></div>'
                f'<figcaption><b>{"kept" if role == "kept" else "pushed down"}</b>{rank}'
                f'{path_html(path, base)}{problem}'
                f'</figcaption></figure>')
        if len(copies) > MAX_COPIES_SHOWN:
            figures.append(f'<p class="note">+{len(copies) - MAX_COPIES_SHOWN} more copies</p>')
        out.append(f'<div class="dup">{"".join(figures)}</div>')
    if len(groups) > MAX_DUPLICATE_GROUPS:
        out.append(f'<p class="note">{len(groups) - MAX_DUPLICATE_GROUPS} more groups{_in_json(json_name)}.</p>')
    return "".join(out)


def _in_json(json_name: str | None) -> str:
    return f" are listed in {esc(json_name)}" if json_name else " are not shown"


def top_title(data: ReportData) -> str:
    """'Top 24' (the top N shown), or with a selection 'Top 100 selected'."""
    return f"Top {data.top_n}" if data.selected is None else f"Top {data.cut} selected"


def thumbnails_note(data: ReportData) -> str:
    """What the thumbnails leave out of the selection ('' when they show all of it)."""
    if data.top_n >= data.cut:
        return ""
    return f"thumbnails of the first {data.top_n} (--report-top-n)"


def report_html(data: ReportData, json_name: str | None = "mining-report.json") -> str:
    """The page; `json_name` is the file the page points to for what it leaves out (None: no JSON written)."""
    run = data.run
    fmt = ScoreFormat.of(data)
    cut = data.cut
    hist = score_histogram(data.scores, cut)
    algorithm = str(run.get("algorithm", "?"))
    pool = run.get("pool_size", len(data.scores) + len(data.unreadable))
    counts = [(f"{data.top_n}", "top N shown")] if data.selected is None else \
        [(f"{cut}", "selected"), (f"{data.top_n}", "thumbnails")]
    figures = [(f"{pool}", "images in the pool"), *counts,
               (fmt(hist["cut_score"]), f"lowest raw score in the top {cut}" if data.score_kind == "raw"
                else f"score of rank {cut}"),
               (f"{len(data.unreadable)}", "unreadable")]
    if isinstance(run.get("seconds"), (int, float, np.number)):
        figures.append((f"{float(run['seconds']):.1f} s", "mining time"))
    if isinstance(run.get("images_per_s"), (int, float, np.number)):
        figures.append((f"{float(run['images_per_s']):.1f}", "images / s"))
    figures_html = "".join(f'<div class="figure"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
                           for v, k in figures)
    sections = [("run", "Run"), ("scores", "Scores"), ("top", f"Top {cut}"), ("contrast", "Middle and bottom"),
                ("classes", "Classes")]
    if data.duplicate_groups or data.near_duplicates:
        sections.append(("duplicates", "Near-duplicates"))
    if data.projection is not None:
        sections.append(("projection", "Projection"))
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title in sections)
    legend = f'<div class="legend">box colour = confidence {_ramp_legend()}</div>'
    shown = [item.path for item in (*data.top, *data.middle, *data.bottom)]
    shown += [p for kept, copies in data.duplicate_groups for p in (kept, *copies)]
    base = common_dir(shown)
    thumbnails = thumbnails_note(data)
    explain = ((f"{esc(thumbnails.capitalize())}. " if thumbnails else "")
               + "Score: the score written to result.tsv" + ("; raw: the algorithm's own score where selection "
               "reordered the ranking" if any(i.raw_score is not None for i in data.top) else "") + ". "
               + (f"Paths are relative to <code>{esc(base)}</code>." if base else ""))
    selection = run.get("selection")
    raw_kind = data.score_kind == "raw"
    body = [
        f'<header><h1>Mining report · {esc(algorithm)}</h1>'
        f'<div class="sub">{esc(pool)} images ranked, most worth labelling first'
        f'{" · selection " + esc(selection) if selection else ""}'
        f'{" · started " + esc(run["started_at"]) if run.get("started_at") else ""}</div>'
        f'<div class="figures">{figures_html}</div><nav>{nav}</nav></header><main>',
        f'<section id="run"><h2>Run</h2>{_run_rows(data)}<h3>Unreadable images</h3>'
        f'{_unreadable_html(data.unreadable, json_name)}</section>',
        '<section id="scores"><h2>Scores</h2><p class="note">'
        + (f'Every readable image\'s raw {esc(algorithm)} score ({len(data.scores)} images): selection reordered '
           f'the ranking, so result.tsv holds each image\'s selection priority and the raw scores are in '
           f'{esc(run.get("raw_scores_file") or "the raw scores file")}; the top {cut} in orange, the '
           f'dashed line is the lowest raw score among them.' if raw_kind else
           f'Every readable image\'s written score ({len(data.scores)} images); the top {cut} in orange, '
           f'the dashed line is the top-{cut} cut.') + '</p>'
        f'<div class="plots">{_histogram_svg(hist, fmt, raw_kind)}{_rank_svg(data.scores, cut, fmt, raw_kind)}'
        f'</div></section>',
        f'<section id="top"><h2>{esc(top_title(data))}, in result order</h2>{legend}'
        f'<p class="note">{explain}</p>{_cards(data.top, "top", data, base, fmt)}</section>',
        f'<section id="contrast"><h2>For contrast</h2><h3>From the middle of the ranking</h3>'
        f'{_cards(data.middle, "middle", data, base, fmt)}<h3>From the bottom of the ranking</h3>'
        f'{_cards(data.bottom, "bottom", data, base, fmt)}</section>',
        f'<section id="classes"><h2>Predicted boxes per class</h2><p class="note">Share of all predicted boxes, '
        f'so the top {cut} and the pool compare; counts in brackets.</p>{_class_svg(data, json_name)}</section>',
    ]
    if data.duplicate_groups or data.near_duplicates:
        body.append('<section id="duplicates"><h2>Near-duplicates</h2>' + _near_duplicates_html(data.near_duplicates)
                    + (f'<h3>Groups</h3><p class="note">Selection kept the first image of each group (orange frame) '
                       f'and pushed its copies down the ranking.</p>'
                       f'{_duplicates_html(list(data.duplicate_groups), data, base, json_name)}'
                       if data.duplicate_groups else '<p class="note">No near-duplicates were found.</p>')
                    + '</section>')
    if data.projection is not None:
        body.append(f'<section id="projection"><h2>Embedding projection</h2><p class="note">2-D PCA of the '
                    f'embeddings {esc(data.projection_note or "of the shown images")}; the top '
                    f'{cut} in orange.</p>'
                    f'{_scatter_svg(data.projection, data.projection_selected)}</section>')
    versions = run.get("versions") if isinstance(run.get("versions"), dict) else {}
    body.append(f'<footer>Written by Quarry {esc(versions.get("quarry", ""))}. Self-contained: images are embedded, '
                f'nothing is loaded from the network.'
                + (f' The numbers are also in {esc(json_name)}.' if json_name else '') + '</footer></main>')
    title = f"Mining report · {algorithm}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")


def write_report(html_path: str, json_path: str | None, data: ReportData) -> None:
    """Write the self-contained page to `html_path` and, unless None, its numbers to `json_path`; each file
    atomically (temp file in its directory + rename), so a reader never sees half a report."""
    if json_path is not None:
        text = json.dumps(report_json(data), indent=1, allow_nan=False, ensure_ascii=False)
        atomic_write_text(json_path, text + "\n")
    atomic_write_text(html_path, report_html(data, None if json_path is None else os.path.basename(json_path)))
