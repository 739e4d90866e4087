"""The label audit's page: one self-contained HTML file in the mining report's style (its shell, CSS and thumbnail
helpers, executor/report/page.py). Findings are grouped by type, worst first; each card is a crop of the image
around the finding with every labelled box solid green, the prediction the finding rests on dashed orange and
the box it is about drawn bold (magenta for a labelled box; a missing box is the bold dashed prediction). No
script, no external resource: thumbnails are JPEG data: URIs. An unreadable image gets the grey placeholder."""

import os
from typing import Sequence

import numpy as np

from executor.engine.images import read_image
from executor.protocol.writers import atomic_write_text
from executor.report.audit_collect import TYPE_TITLES, AuditCard, AuditPageData
from executor.report.drawing import StyledBox, draw_styled_boxes
from executor.report.page import CSS, THUMB_SIDE, common_dir, esc, frame_thumbnail, jpeg_data_uri, path_html, \
    placeholder
from mining.audit import TYPES

TRUTH_RGB = (0, 170, 70)       # labelled boxes: solid green
PREDICTION_RGB = (255, 140, 0)  # the prediction: dashed orange
ACCUSED_RGB = (230, 0, 200)     # the labelled box a finding is about: bold magenta
CROP_MARGIN = 0.75              # the crop reaches this many times the finding's size beyond it on each side
CROP_MIN_SHARE = 0.3            # and is at least this share of the image's shorter side

AUDIT_CSS = CSS + """
.kind { font-weight: 600; margin-right: 6px; }
.split { font-size: 11px; border: 1px solid #999; border-radius: 3px; padding: 0 3px; margin-right: 6px; }
.evidence, .fix { margin-top: 3px; }
.fix { color: var(--ink); }
.fix b, .evidence b { color: var(--muted); font-weight: 500; }
.swatch { display: inline-flex; align-items: center; gap: 5px; margin-right: 14px; }
table.counts { border-collapse: collapse; }
table.counts th, table.counts td { padding: 3px 12px; border-bottom: 1px solid #eef1f4; text-align: right; }
table.counts th:first-child, table.counts td:first-child { text-align: left; }
table.counts tr.total td { font-weight: 600; border-top: 1px solid var(--line); }
"""


# ---------------------------------------------------------------------------------------------- thumbnails

def crop_region(boxes: Sequence, width: int, height: int) -> tuple[int, int, int, int]:
    """The part of a `width` x `height` image shown for a finding: its boxes' union with a margin, at least
    CROP_MIN_SHARE of the shorter side, inside the image."""
    union = np.asarray(boxes, np.float64).reshape(-1, 4)
    x1, y1 = np.clip(union[:, :2].min(axis=0), 0, None)
    x2, y2 = union[:, 2].max(), union[:, 3].max()
    side = max(x2 - x1, y2 - y1, 1.0)
    half_w = max((x2 - x1) / 2 + CROP_MARGIN * side, CROP_MIN_SHARE * min(width, height) / 2)
    half_h = max((y2 - y1) / 2 + CROP_MARGIN * side, CROP_MIN_SHARE * min(width, height) / 2)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = int(max(0, cx - half_w)), int(max(0, cy - half_h))
    return left, top, int(min(width, cx + half_w)), int(min(height, cy + half_h))


def styled_boxes(card: AuditCard) -> list[StyledBox]:
    """The card's boxes in image pixels, in drawing order: the labelled ones, the accused one bold, the prediction
    on top (dashed, so the box under it shows through)."""
    boxes = [StyledBox(box, name, TRUTH_RGB) for i, (box, name) in enumerate(card.truth) if i != card.accused]
    if 0 <= card.accused < len(card.truth):
        box, name = card.truth[card.accused]
        boxes.append(StyledBox(box, name, ACCUSED_RGB, bold=True))
    if card.prediction is not None:
        box, label = card.prediction
        boxes.append(StyledBox(box, label, PREDICTION_RGB, dashed=True, bold=card.accused < 0))
    return boxes


def card_thumbnail(card: AuditCard, max_side: int = THUMB_SIDE) -> tuple[np.ndarray, str | None]:
    """(the crop around the finding with its boxes drawn, None), or (placeholder, why the image was unreadable)."""
    try:
        image = read_image(card.image)
    except Exception as exc:  # noqa: BLE001 — a thumbnail never fails the page
        return placeholder(max_side), str(exc) or type(exc).__name__
    boxes = styled_boxes(card)
    about = [b.xyxy for b in boxes if b.bold or (card.prediction is not None and b.dashed)]
    left, top, right, bottom = crop_region(about or [(0, 0, image.shape[1], image.shape[0])], image.shape[1],
                                           image.shape[0])
    small = frame_thumbnail(image[top:bottom, left:right], max_side)
    scale_x, scale_y = small.shape[1] / max(right - left, 1), small.shape[0] / max(bottom - top, 1)
    moved = [StyledBox(((b.xyxy[0] - left) * scale_x, (b.xyxy[1] - top) * scale_y, (b.xyxy[2] - left) * scale_x,
                        (b.xyxy[3] - top) * scale_y), b.label, b.colour, b.dashed, b.bold) for b in boxes]
    return draw_styled_boxes(small, moved), None


# ---------------------------------------------------------------------------------------------- HTML

def _card_html(card: AuditCard, base: str | None) -> str:
    image, error = card_thumbnail(card)
    problem = f'<div class="bad">image unreadable: {esc(error)}</div>' if error else ""
    # the file's name and line (the folder is the image's, or in the tooltip): the line must not be cut off
    where = (f'<div class="path" title="{esc(card.where)}">{esc(os.path.basename(card.where))}</div>'
             if card.where else "")
    return (f'<figure class="card"><div class="frame"><img class="thumb" src="{jpeg_data_uri(image)}" '
            f'width="{image.shape[1]}" height="{image.shape[0]}" alt="{esc(card.kind)} #{card.rank}: '
            f'{esc(os.path.basename(card.image))}" data-section="{esc(card.kind)}" data-rank="{card.rank}" '
            f'data-path="{esc(card.image)}" data-score="{card.score!r}"></div>'
            f'<figcaption><span class="rank">#{card.rank}</span><span class="score">{card.score:.3f}</span> '
            f'<span class="kind">{esc(card.class_name)}</span>{split_html(card.split)}'
            f'{path_html(card.image, base)}{where}'
            f'<div class="evidence"><b>evidence</b> {esc(card.evidence)}</div>'
            f'<div class="fix"><b>fix</b> {esc(card.fix)}</div>{problem}</figcaption></figure>')


def split_html(split: str) -> str:
    """Whose image the card shows: the training's own (in-sample: the model learnt its labels), val, a fold."""
    if not split:
        return ""
    text = "train: in-sample" if split == "train" else split
    return f'<span class="split{" warn" if split == "train" else ""}">{esc(text)}</span>'


def _legend() -> str:
    def swatch(colour, dash, width, text):
        stroke = "#%02x%02x%02x" % colour
        return (f'<span class="swatch"><svg width="34" height="12" aria-hidden="true"><line x1="2" y1="6" x2="32" '
                f'y2="6" stroke="{stroke}" stroke-width="{width}"{dash}/></svg>{esc(text)}</span>')

    return ('<div class="legend">' + swatch(TRUTH_RGB, "", 2, "labelled box")
            + swatch(PREDICTION_RGB, ' stroke-dasharray="5 3"', 2, "prediction (class, confidence)")
            + swatch(ACCUSED_RGB, "", 4, "the labelled box the finding is about (bold)") + '</div>')


def _counts_html(data: AuditPageData) -> str:
    by_type, by_class = data.counts["by_type"], data.counts["by_class"]
    head = "".join(f"<th>{esc(kind)}</th>" for kind in TYPES)
    rows = [f"<tr><td>{esc(name)}</td>" + "".join(f"<td>{counts.get(kind, 0) or ''}</td>" for kind in TYPES)
            + f"<td>{sum(counts.values())}</td></tr>"
            for name, counts in sorted(by_class.items(), key=lambda item: (-sum(item[1].values()), item[0]))]
    total = ('<tr class="total"><td>all classes</td>' + "".join(f"<td>{by_type[kind]}</td>" for kind in TYPES)
             + f"<td>{sum(by_type.values())}</td></tr>")
    return (f'<table class="counts"><tr><th>class</th>{head}<th>all</th></tr>{"".join(rows)}{total}</table>'
            if by_class else '<p class="empty">No findings.</p>')


def _run_html(data: AuditPageData) -> str:
    model, source = data.about.get("model", {}), data.about.get("data", {})
    rows = [("Model", f"<code>{esc(model.get('weights', '?'))}</code> ({len(model.get('classes', []))} classes)"),
            ("Data", f"{esc(source.get('source') or source.get('spec', '?'))}"),
            ("Audited", f"{data.images} images, {data.boxes} labelled boxes"
                        + (f", <span class='warn'>{len(data.unreadable)} unreadable (not audited)</span>"
                           if data.unreadable else "")),
            ("Trained on", _trained_html(model, source)),
            ("Settings", " · ".join(f"{esc(k)} <code>{esc(v)}</code>"
                                    for k, v in data.about.get("settings", {}).items()))]
    table = "<table class='kv'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    if data.unreadable:
        table += ("<details><summary class='warn'>unreadable images</summary><ul>"
                  + "".join(f"<li class='mono'>{esc(p)}</li>" for p in data.unreadable[:500]) + "</ul></details>")
    return table


def _trained_html(model: dict, source: dict) -> str:
    """What the audit knows of whether the model trained on the audited images."""
    folds = model.get("folds")
    if folds:
        return (f"cross-fitted: {len(folds)} folds, each audited by a model that never saw it (" + "; ".join(
            f"fold {f['fold']}: {f['images']} images, trained on {f['trained_on']}"
            + ("" if f.get("mAP50") is None else f", held-out mAP50 {f['mAP50']:.3f}") for f in folds) + ")")
    if "in_training_set" not in source:
        return "not said"
    known = {True: "<span class='warn'>these images: the audit is in-sample</span>", False: "other images"}
    said = f" (the checkpoint names <code>{esc(model.get('trained_on'))}</code>)" if model.get("trained_on") else ""
    return known.get(source["in_training_set"], "unknown") + said


def _type_html(data: AuditPageData, kind: str, base: str | None, json_name: str) -> str:
    cards = data.cards.get(kind, [])
    body = ('<div class="grid-cards">' + "".join(_card_html(card, base) for card in cards) + "</div>"
            if cards else '<p class="empty">None.</p>')
    more = data.hidden(kind)
    if more:
        body += (f'<p class="note">{more} more {esc(kind)} findings, with lower scores, are listed in '
                 f'{esc(json_name)}.</p>')
    total = data.counts["by_type"][kind]
    return (f'<section id="{kind}"><h2>{esc(TYPE_TITLES[kind])} ({total})</h2>'
            + (f'<p class="note">The worst {len(cards)} of {total}, highest score first.</p>' if cards else "")
            + body + "</section>")


def audit_html(data: AuditPageData, json_name: str = "audit.json") -> str:
    """The page; `json_name` is the audit file it points to for the findings it does not show."""
    weights = os.path.basename(str(data.about.get("model", {}).get("weights", "")))
    total = sum(data.counts["by_type"].values())
    figures = [(data.images, "images audited"), (data.boxes, "labelled boxes"), (total, "findings"),
               *((data.counts["by_type"][kind], kind) for kind in TYPES), (len(data.unreadable), "unreadable")]
    figures_html = "".join(f'<div class="figure"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
                           for v, k in figures)
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title in
                  [("run", "Run"), ("counts", "Counts"), *((kind, f"{kind} ({data.counts['by_type'][kind]})")
                                                           for kind in TYPES)])
    shown = [card.image for cards in data.cards.values() for card in cards]
    base = common_dir(shown)
    source = data.about.get("data", {})
    body = [f'<header><h1>Label audit · {esc(weights)}</h1><div class="sub">the likely mistakes of '
            f'{esc(source.get("source") or source.get("spec", "the labelled set"))}, most likely wrong first</div>'
            f'<div class="figures">{figures_html}</div><nav>{nav}</nav></header><main>',
            f'<section id="run"><h2>Run</h2>{_run_html(data)}</section>',
            f'<section id="counts"><h2>Findings per class and type</h2><p class="note">The class of the labelled '
            f'box (for a missing box, the predicted class).</p>{_counts_html(data)}</section>',
            f'<section id="how"><h2>How to read the cards</h2>{_legend()}<p class="note">Each card is a crop of '
            f'the image around the finding. Score in [0, 1]: how likely a mistake (docs/audit.md). '
            + (f"Paths are relative to <code>{esc(base)}</code>. " if base else "") + '</p></section>']
    body += [_type_html(data, kind, base, json_name) for kind in TYPES]
    body.append(f'<footer>Written by Quarry start.py audit. Self-contained: images are embedded, nothing is loaded '
                f'from the network. Every finding is in {esc(json_name)}.</footer></main>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>Label audit · {esc(weights)}</title><style>{AUDIT_CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")


def write_audit_page(html_path: str, data: AuditPageData, json_name: str = "audit.json") -> None:
    """The page, written atomically (temp file in its folder + rename)."""
    atomic_write_text(html_path, audit_html(data, json_name))
