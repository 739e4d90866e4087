"""The mining report (executor/report/) and box drawing (executor/report/drawing.py), on real COCO val images with
their ground-truth boxes standing in for predictions."""
import base64
import json
import os
import struct
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from executor.report import board, drawing, page
from executor.report.board import write_tensorboard
from executor.report.collect import ReportData, ReportImage, pca_2d
from executor.report.drawing import confidence_colour, draw_detections, thumbnail
from executor.report.page import write_report

COCO = "/work/shared/data/coco-val"
NAMES = ["person", "bicycle", "car", "motorcycle", "bus", "truck", "dog", "cat", "chair", "dining table"]

pytestmark = pytest.mark.skipif(not os.path.isdir(os.path.join(COCO, "images")), reason=f"{COCO} is missing")


def _boxes_by_file(count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(path, xyxy, class index into NAMES) of the first `count` images, boxes of NAMES classes only."""
    with open(os.path.join(COCO, "annotations.json"), encoding="utf-8") as handle:
        coco = json.load(handle)
    ours = {c["id"]: NAMES.index(c["name"]) for c in coco["categories"] if c["name"] in NAMES}
    boxes: dict[int, list] = {}
    for ann in coco["annotations"]:
        if ann["category_id"] in ours:
            x, y, w, h = ann["bbox"]
            boxes.setdefault(ann["image_id"], []).append((x, y, x + w, y + h, ours[ann["category_id"]]))
    out = []
    for image in sorted(coco["images"], key=lambda i: i["file_name"])[:count]:
        rows = np.array(boxes.get(image["id"], []), dtype=np.float64).reshape(-1, 5)
        out.append((os.path.join(COCO, "images", image["file_name"]), rows[:, :4], rows[:, 4].astype(np.int64)))
    return out


def make_data(tmp_path, n_top: int = 12, n_middle: int = 4, n_bottom: int = 4, unreadable_top: bool = True,
              extras: bool = True) -> ReportData:
    """A ReportData like a run of `aldd` with selection: diverse over real images. With `unreadable_top`, rank 3
    is a missing file and rank 5 a corrupt JPEG (both must become placeholders)."""
    rng = np.random.default_rng(16)
    files = _boxes_by_file(n_top + n_middle + n_bottom + 6)
    pool = len(files) + 2
    scores = np.sort(rng.gamma(2.0, 0.25, pool - 2))[::-1]
    middle_idx = list(range(n_top + 1, n_top + 1 + n_middle))
    bottom_idx = list(range(len(scores) - n_bottom, len(scores)))

    def item(index: int, file: int) -> ReportImage:
        path, xyxy, classes = files[file]
        conf = rng.uniform(0.05, 0.99, len(xyxy))
        raw = float(scores[index] * 1.25) if index % 4 == 1 else None
        return ReportImage(path, index + 1, float(scores[index]), raw, xyxy, classes, conf)

    top = [item(i, i) for i in range(n_top)]
    middle = [item(i, n_top + k) for k, i in enumerate(middle_idx)]
    bottom = [item(i, n_top + n_middle + k) for k, i in enumerate(bottom_idx)]
    if unreadable_top and n_top >= 5:
        corrupt = tmp_path / "images" / "corrupt.jpg"
        corrupt.parent.mkdir(parents=True, exist_ok=True)
        corrupt.write_bytes(open(files[0][0], "rb").read()[:600])  # a JPEG cut after its header
        top[2] = ReportImage(str(tmp_path / "images" / "missing.jpg"), 3, float(scores[2]), None,
                             np.zeros((0, 4)), [], [])
        top[4] = ReportImage(str(corrupt), 5, float(scores[4]), None, [[10, 10, 50, 50]], [0], [0.5])
    counts_top = np.zeros(len(NAMES), dtype=np.int64)
    counts_pool = np.zeros(len(NAMES), dtype=np.int64)
    for n, (_, _, classes) in enumerate(files):
        np.add.at(counts_pool, classes, 1)
        if n < n_top:
            np.add.at(counts_top, classes, 1)
    kwargs = {}
    if extras:
        kept = [top[0].path, top[1].path]
        kwargs["duplicate_groups"] = [(kept[0], [files[-1][0], files[-2][0]]), (kept[1], [files[-3][0]])]
        emb = rng.normal(size=(len(top) + len(middle) + len(bottom), 16))
        kwargs["projection"] = pca_2d(emb)
        kwargs["projection_selected"] = np.arange(len(emb)) < len(top)
    run = {"model": "/in/models/yolov8n.pt", "model_sha256": "aa5a38cc" + "0" * 56, "algorithm": "aldd",
           "params": {"img_size": 640, "batch": 16, "conf": 0.001, "pool": "max"}, "seed": 7, "selection": "diverse",
           "pool_size": pool, "seconds": 12.5, "images_per_s": pool / 12.5,
           "versions": {"quarry": "0.1.0", "torch": "2.14.1", "ultralytics": "8.4.190", "python": "3.11.7"},
           "started_at": "2026-11-23T12:00:00+00:00"}
    unreadable = [("/in/images/bad.png", "not a decodable image: /in/images/bad.png"),
                  ("/in/images/empty.jpg", "image file is empty: /in/images/empty.jpg")]
    return ReportData(run=run, unreadable=unreadable, scores=scores, class_names=list(NAMES),
                      class_counts_top=counts_top, class_counts_pool=counts_pool, top=top, middle=middle,
                      bottom=bottom, **kwargs)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def _parse(path) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(open(path, encoding="utf-8").read())
    return parser.tags


def _decode_data_uri(uri: str) -> np.ndarray:
    head, payload = uri.split(",", 1)
    assert head == "data:image/jpeg;base64"
    image = cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


@pytest.fixture
def written(tmp_path):
    data = make_data(tmp_path)
    out = tmp_path / "report"
    write_report(str(out / "mining-report.html"), str(out / "mining-report.json"), data)
    return data, out


def test_page_is_self_contained(written):
    data, out = written
    text = (out / "mining-report.html").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text  # no resource (nor any other) web reference at all
    tags = _parse(out / "mining-report.html")
    images = [attrs for tag, attrs in tags if tag == "img"]
    shown = len(data.top) + len(data.middle) + len(data.bottom) + sum(1 + len(c) for _, c in data.duplicate_groups)
    assert len(images) == shown
    for attrs in images:
        assert attrs["src"].startswith("data:image/jpeg;base64,")
        decoded = _decode_data_uri(attrs["src"])
        assert decoded.shape[:2] == (int(attrs["height"]), int(attrs["width"]))
        assert max(decoded.shape[:2]) <= page.THUMB_SIDE
    for tag, attrs in tags:
        for key in ("src", "href", "srcset", "action", "poster", "data"):
            value = attrs.get(key)
            if value is not None and key != "data":
                assert value.startswith(("data:", "#")), (tag, key, value[:80])
        assert tag not in ("link", "iframe", "object", "embed", "base")
        assert not (tag == "script" and "src" in attrs)
    assert "@import" not in text and "url(http" not in text


def test_top_order_on_page_is_the_given_order(written):
    data, out = written
    tops = [a for tag, a in _parse(out / "mining-report.html") if tag == "img" and a.get("data-section") == "top"]
    assert [(int(a["data-rank"]), a["data-path"]) for a in tops] == [(i.rank, i.path) for i in data.top]
    assert [float(a["data-score"]) for a in tops] == [i.score for i in data.top]
    tags = _parse(out / "mining-report.html")
    for section, items in (("middle", data.middle), ("bottom", data.bottom)):
        shown = [a for tag, a in tags if tag == "img" and a.get("data-section") == section]
        assert [a["data-path"] for a in shown] == [i.path for i in items]


def test_json_holds_the_same_numbers(written):
    data, out = written
    saved = json.loads((out / "mining-report.json").read_text(encoding="utf-8"))
    assert saved["run"] == data.run
    assert saved["unreadable"] == [{"path": p, "reason": r} for p, r in data.unreadable]
    hist = saved["histogram"]
    counts, edges = np.histogram(data.scores, bins=np.asarray(hist["bin_edges"]))
    assert hist["counts"] == counts.tolist() and sum(hist["counts"]) == len(data.scores)
    assert np.allclose(edges, hist["bin_edges"]) and hist["bin_edges"][0] == data.scores.min()
    assert hist["top_n"] == len(data.top) and hist["cut_score"] == data.scores[len(data.top) - 1]
    assert sum(hist["top_counts"]) == len(data.top)
    assert saved["scores"]["count"] == len(data.scores) and saved["scores"]["max"] == data.scores.max()
    for key in ("top", "middle", "bottom"):
        items = getattr(data, key)
        assert [r["path"] for r in saved[key]] == [i.path for i in items]
        assert [r["rank"] for r in saved[key]] == [i.rank for i in items]
        assert [r["score"] for r in saved[key]] == [i.score for i in items]
        assert [r["raw_score"] for r in saved[key]] == [i.raw_score for i in items]
        assert [r["box_count"] for r in saved[key]] == [len(i.xyxy) for i in items]
        for record, item in zip(saved[key], items):
            assert sum(record["classes"].values()) == len(item.xyxy)
            for name, count in record["classes"].items():
                assert count == int(np.sum(item.classes == NAMES.index(name)))
    assert any(r["raw_score"] is not None for r in saved["top"])
    assert saved["class_counts"] == {"class_names": NAMES, "top": data.class_counts_top.tolist(),
                                     "pool": data.class_counts_pool.tolist()}
    assert saved["duplicate_groups"] == [{"kept": k, "copies": c} for k, c in data.duplicate_groups]
    assert np.allclose(saved["projection"]["points"], data.projection)
    assert saved["projection"]["selected"] == data.projection_selected.tolist()
    assert "base64" not in (out / "mining-report.json").read_text(encoding="utf-8")


def test_html_shows_the_run_and_its_numbers(written):
    data, out = written
    text = (out / "mining-report.html").read_text(encoding="utf-8")
    fmt = page.ScoreFormat.of(data)
    for needle in (data.run["model"], data.run["model_sha256"], "aldd", "img_size", "640", "diverse",
                   "12.5 s", "images/s", "2.14.1", "8.4.190", "/in/images/bad.png", "image file is empty",
                   "top 12 cut", fmt(data.scores[11]), "Near-duplicate", "Embedding projection"):
        assert needle in text, needle
    for item in data.top:
        assert f'#{item.rank}</span><span class="score">{fmt(item.score)}</span>' in text
        if item.raw_score is not None:
            assert f"raw {fmt(item.raw_score)}" in text


def test_the_cut_follows_the_selection_and_the_page_says_what_the_thumbnails_show(tmp_path):
    """start.py mine --topk 20 with 12 thumbnails: the plots' cut, the class comparison and the JSON follow the 20
    selected; the page names both numbers."""
    data = make_data(tmp_path, unreadable_top=False)
    data.selected = 20
    write_report(str(tmp_path / "r.html"), str(tmp_path / "r.json"), data)
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    fmt = page.ScoreFormat.of(data)
    assert "<h2>Top 20 selected, in result order</h2>" in text
    assert "Thumbnails of the first 12 (--report-top-n)." in text and '<a href="#top">Top 20</a>' in text
    assert f"top 20 cut: score ≥ {fmt(data.scores[19])}" in text and ">top 20</text>" in text  # histogram, rank plot
    assert f'<div class="v">{fmt(data.scores[19])}</div><div class="k">score of rank 20</div>' in text
    assert '<div class="v">20</div><div class="k">selected</div>' in text
    assert '<div class="v">12</div><div class="k">thumbnails</div>' in text
    assert "Top 12" not in text and "top 12" not in text
    assert len([a for tag, a in _parse(tmp_path / "r.html") if a.get("data-section") == "top"]) == 12
    saved = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert saved["selected"] == 20 and len(saved["top"]) == 12
    assert saved["histogram"]["top_n"] == 20 and saved["histogram"]["cut_score"] == data.scores[19]
    assert sum(saved["histogram"]["top_counts"]) == 20
    data.selected = 12  # as many selected as shown: no note
    write_report(str(tmp_path / "s.html"), None, data)
    same = (tmp_path / "s.html").read_text(encoding="utf-8")
    assert "<h2>Top 12 selected, in result order</h2>" in same and "Thumbnails of the first" not in same
    data.selected = None  # platform mode: the top N shown are the cut
    write_report(str(tmp_path / "p.html"), str(tmp_path / "p.json"), data)
    platform = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert "<h2>Top 12, in result order</h2>" in platform and "selected" not in platform.split("<main>")[0]
    assert json.loads((tmp_path / "p.json").read_text())["selected"] is None


SCIENTIFIC = r"-?\d\.\d{3}e[+-]\d{2}"
FIXED = r"-?\d+\.\d{4}"


def _scores_on_page(text: str) -> list[str]:
    """Every score the page writes as text: cards (score and raw), the header's cut, the histogram's cut label and
    bar tooltips, and the tick labels of the histogram's score axis."""
    import re

    number = r"([-+0-9.e–]+|nan|inf)"
    found = re.findall(r'<span class="score">([^<]*)</span>', text) + re.findall(rf"raw {number}</span>", text)
    found += re.findall(r'<div class="v">([^<]*)</div><div class="k">(?:score of rank|lowest raw)', text)
    found += re.findall(rf"score ≥ {number}<", text)
    for low, high in re.findall(rf"<title>{number} – {number}: \d+ images", text):
        found += [low, high]
    histogram = text[text.index('aria-label="Histogram'):].split("</svg>", 1)[0]
    found += re.findall(r'<text class="tick"[^>]*text-anchor="middle">([^<]*)</text>', histogram)
    return found


def test_scores_are_written_in_one_notation_throughout_the_page(tmp_path):
    """Scores from 0.8 down to 1e-5: every one in scientific notation (no 0.8000 beside 1.000e-05); scores in the
    usual range: every one with 4 decimals. The tensorboard summary uses the same notation."""
    import re

    data = make_data(tmp_path, n_top=6, n_middle=2, n_bottom=2, unreadable_top=False, extras=False)
    data.scores = np.geomspace(0.8, 1e-5, len(data.scores))
    for item in (*data.top, *data.middle, *data.bottom):
        item.score = float(data.scores[item.rank - 1])
        item.raw_score = None if item.raw_score is None else item.score * 1.25
    write_report(str(tmp_path / "tiny.html"), None, data)
    scores = _scores_on_page((tmp_path / "tiny.html").read_text(encoding="utf-8"))
    ticks = [s for s in scores if not re.fullmatch(SCIENTIFIC, s)]
    assert len(scores) > 20 and all(re.fullmatch(r"0|-?\d(\.\d+)?e[+-]\d{2}", s) for s in ticks), scores
    assert "8.000e-01" in scores and "1.000e-05" in scores and "0.8000" not in scores
    assert re.search(SCIENTIFIC, board._markdown_summary(data)) and not re.search(FIXED + r" \|",
                                                                                 board._markdown_summary(data))
    usual = make_data(tmp_path, n_top=6, n_middle=2, n_bottom=2, unreadable_top=False, extras=False)
    write_report(str(tmp_path / "usual.html"), None, usual)
    scores = _scores_on_page((tmp_path / "usual.html").read_text(encoding="utf-8"))
    assert len(scores) > 20 and all(re.fullmatch(FIXED + r"|-?\d+(\.\d+)?", s) for s in scores), scores
    fmt = page.ScoreFormat(scientific=True)
    assert (fmt(1e-5), fmt(0.8), fmt(None), fmt.tick(2.5e-05), fmt.tick(1e-4), fmt.tick(0)) == \
        ("1.000e-05", "8.000e-01", "–", "2.5e-05", "1e-04", "0")
    assert page.ScoreFormat(scientific=False)(0.00001) == "0.0000"


def test_long_file_names_stay_on_one_line_with_the_whole_path_on_hover(tmp_path):
    data = make_data(tmp_path, n_top=2, n_middle=0, n_bottom=0, unreadable_top=False, extras=False)
    long_name = tmp_path / ("a_very_long_file_name_from_a_camera_export_" * 4 + ".jpg")
    long_name.write_bytes(open(data.top[1].path, "rb").read())
    data.top[1] = ReportImage(str(long_name), 2, data.top[1].score, None, [[0, 0, 5, 5]], [0], [0.9])
    write_report(str(tmp_path / "r.html"), None, data)
    paths = [a for tag, a in _parse(tmp_path / "r.html") if tag == "div" and a.get("class") == "path"]
    assert [a["title"] for a in paths] == [data.top[0].path, str(long_name)]
    rule = next(line for line in page.CSS.splitlines() if line.startswith(".path {"))
    for declaration in ("white-space: nowrap", "overflow: hidden", "text-overflow: ellipsis"):
        assert declaration in rule, rule
    assert "word-break" not in rule


def test_both_files_are_written_atomically(tmp_path, monkeypatch):
    data = make_data(tmp_path, n_top=4, n_middle=1, n_bottom=1, unreadable_top=False, extras=False)
    out = tmp_path / "out"
    html_path, json_path = out / "mining-report.html", out / "mining-report.json"
    write_report(str(html_path), str(json_path), data)
    write_report(str(html_path), str(json_path), data)  # over an existing report
    assert sorted(os.listdir(out)) == ["mining-report.html", "mining-report.json"]
    before = html_path.read_bytes(), json_path.read_bytes()

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_report(str(html_path), str(json_path), data)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == ["mining-report.html", "mining-report.json"]  # no temp file left behind
    assert (html_path.read_bytes(), json_path.read_bytes()) == before  # the old report is whole
    write_report(str(tmp_path / "only.html"), None, data)
    assert (tmp_path / "only.html").exists() and not (tmp_path / "mining-report.json").exists()
    assert "mining-report.json" not in (tmp_path / "only.html").read_text(encoding="utf-8")


def test_unreadable_images_get_a_placeholder(written):
    data, out = written
    text = (out / "mining-report.html").read_text(encoding="utf-8")
    tops = [a for tag, a in _parse(out / "mining-report.html") if tag == "img" and a.get("data-section") == "top"]
    broken = [a for a in tops if a.get("data-unreadable") == "1"]
    assert [a["data-path"] for a in broken] == [data.top[2].path, data.top[4].path]
    for attrs in broken:
        image = _decode_data_uri(attrs["src"])
        assert abs(float(image.mean()) - 200) < 12 and float(image.std()) < 30  # the grey placeholder
    assert "image unreadable: cannot read image" in text and "No such file" in text
    assert "not a decodable image" in text
    readable = [a for a in tops if a.get("data-unreadable") is None]
    assert len(readable) == len(data.top) - 2 and all(_decode_data_uri(a["src"]).std() > 30 for a in readable)


def test_paths_and_labels_are_escaped(tmp_path):
    data = make_data(tmp_path, n_top=2, n_middle=0, n_bottom=0, unreadable_top=False, extras=False)
    evil = str(tmp_path / 'a"<b>&x.jpg')
    data.top[1] = ReportImage(evil, 2, data.top[1].score, None, [[0, 0, 5, 5]], [0], [0.9])
    data.class_names[0] = "<script>alert(1)</script>"
    data.run["params"]["note"] = "</td><script>"
    write_report(str(tmp_path / "r.html"), str(tmp_path / "r.json"), data)
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in text and "<b>&x" not in text
    tops = [a for tag, a in _parse(tmp_path / "r.html") if tag == "img" and a.get("data-section") == "top"]
    assert tops[1]["data-path"] == evil and tops[1]["data-unreadable"] == "1"


def test_empty_and_minimal_reports(tmp_path):
    empty = ReportData(run={}, unreadable=[("/in/x.jpg", "not a decodable image")], scores=np.zeros(0),
                       class_names=[], class_counts_top=[], class_counts_pool=[], top=[], middle=[], bottom=[])
    write_report(str(tmp_path / "e.html"), str(tmp_path / "e.json"), empty)
    write_tensorboard(str(tmp_path / "tb-empty"), empty)
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["histogram"]["counts"] == [] and saved["top"] == [] and saved["projection"] is None
    assert "No readable image was scored" in (tmp_path / "e.html").read_text()
    path = _boxes_by_file(1)[0][0]
    equal = ReportData(run={"algorithm": "random", "params": {}}, unreadable=[], scores=np.full(3, 0.5),
                       class_names=["a"], class_counts_top=[0], class_counts_pool=[0],
                       top=[ReportImage(path, 1, 0.5, None, np.zeros((0, 4)), [], [])], middle=[], bottom=[])
    write_report(str(tmp_path / "q.html"), None, equal)
    assert "The model predicted no boxes" in (tmp_path / "q.html").read_text()
    with pytest.raises(ValueError, match="3 class names"):
        ReportData(run={}, unreadable=[], scores=[], class_names=["a", "b", "c"], class_counts_top=[1],
                   class_counts_pool=[1, 2, 3], top=[], middle=[], bottom=[])
    with pytest.raises(ValueError, match="2 boxes, 1 classes"):
        ReportImage("x", 1, 0.0, None, np.zeros((2, 4)), [0], [0.5, 0.5])


def test_draw_detections_colours_boxes_by_confidence():
    image = np.full((200, 300, 3), 128, dtype=np.uint8)
    before = image.copy()
    boxes = np.array([[20, 60, 120, 180], [150, 40, 280, 190], [5, 5, 5, 40], [np.nan, 0, 10, 10]])
    drawn = draw_detections(image, boxes, ["cat", "dog", "flat", "nan"], np.array([0.1, 0.95, 0.5, 0.5]))
    assert np.array_equal(image, before) and drawn.shape == image.shape and drawn.dtype == np.uint8
    for (x1, y1, x2, y2), conf in zip(boxes[:2].astype(int), (0.1, 0.95)):
        colour = np.array(confidence_colour(conf))
        edge = drawn[(y1 + y2) // 2, x1 - 1:x1 + 2].astype(int)  # the box's left side, mid-height
        assert np.abs(edge - colour).sum(axis=1).min() <= 6, (conf, edge, colour)
        assert not np.array_equal(drawn[max(0, y1 - 14):y1 - 3, x1:x1 + 30], before[max(0, y1 - 14):y1 - 3, x1:x1 + 30])
    assert np.array_equal(drawn[100:140, 0:4], before[100:140, 0:4])  # the degenerate and the NaN box are skipped
    assert np.array_equal(draw_detections(image, np.zeros((0, 4)), [], []), image)
    low, mid, high = confidence_colour(0.0), confidence_colour(0.5), confidence_colour(1.0)
    assert low == (0x44, 0x01, 0x54) and high == (0xFD, 0xE7, 0x25) and low != mid != high
    assert confidence_colour(-3) == low and confidence_colour(7) == high
    luminance = [0.299 * r + 0.587 * g + 0.114 * b for r, g, b in (confidence_colour(c) for c in np.linspace(0, 1, 21))]
    assert all(a < b for a, b in zip(luminance, luminance[1:]))  # the ramp gets steadily lighter
    with pytest.raises(ValueError):
        draw_detections(image, boxes, ["too few"], [0.5] * 4)
    assert drawing.ramp_stops(3)[0] == (0.0, "#440154")


def test_thumbnail_keeps_aspect_and_never_enlarges():
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    assert thumbnail(image).shape == (192, 256, 3)
    assert thumbnail(image[:, :300], 100).shape == (100, 62, 3)
    small = np.zeros((50, 40, 3), dtype=np.uint8)
    assert thumbnail(small) is small


def test_pca_2d_is_plain_deterministic_pca():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(40, 2)) * [5.0, 2.0]
    data = base @ rng.normal(size=(2, 12)) + rng.normal(scale=0.01, size=(40, 12)) + 3.0
    points = pca_2d(data)
    assert points.shape == (40, 2) and np.allclose(points.mean(axis=0), 0)
    centred = data - data.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(centred.T))
    reference = centred @ vectors[:, ::-1][:, :2]
    assert np.allclose(np.abs(points), np.abs(reference), atol=1e-8)
    assert points[:, 0].var() > points[:, 1].var()
    assert np.array_equal(pca_2d(data), points)
    assert np.allclose(pca_2d(data[::-1]), points[::-1])  # the sign does not depend on the row order
    assert np.allclose(pca_2d(-data), -points)  # loadings keep their sign: mirrored data, mirrored points
    assert pca_2d(np.zeros((0, 5))).shape == (0, 2)
    assert np.array_equal(pca_2d(np.ones((4, 3))), np.zeros((4, 2)))
    assert pca_2d(rng.normal(size=(5, 1)))[:, 1].tolist() == [0.0] * 5


def _events(logdir) -> list:
    from tensorboardX.proto import event_pb2

    events = []
    for name in sorted(os.listdir(logdir)):
        raw = open(os.path.join(logdir, name), "rb").read()
        offset = 0
        while offset < len(raw):
            (length,) = struct.unpack("<Q", raw[offset:offset + 8])
            event = event_pb2.Event()
            event.ParseFromString(raw[offset + 12:offset + 12 + length])
            events.append(event)
            offset += 12 + length + 4
    return events


def test_tensorboard_gets_histogram_grid_and_summary(tmp_path):
    data = make_data(tmp_path, n_top=12, n_middle=2, n_bottom=2)
    write_tensorboard(str(tmp_path / "tb"), data)
    values = {v.tag: v for e in _events(tmp_path / "tb") for v in e.summary.value}
    histo = values["mining/score"].histo
    assert histo.num == len(data.scores) and sum(histo.bucket) == len(data.scores)
    assert histo.max == data.scores.max() and histo.min == data.scores.min()
    grid = values["mining/top"].image
    decoded = cv2.imdecode(np.frombuffer(grid.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == (grid.height, grid.width) == (2 * (192 + 22), 10 * 192)
    text = next(v for tag, v in values.items() if tag.startswith("mining/summary"))
    summary = text.tensor.string_val[0].decode()
    assert "aldd" in summary and data.top[0].path in summary and "Unreadable | 2" in summary


def test_report_time_for_50_top_and_20_contrast(tmp_path, capsys):
    """What the run pays for the report at its usual size: 50 top thumbnails plus 10 middle and 10 bottom."""
    import time

    import tensorboardX  # noqa: F401 — imported by the run already (with torch); not part of the report's time

    data = make_data(tmp_path, n_top=50, n_middle=10, n_bottom=10, unreadable_top=False)
    start = time.perf_counter()
    write_report(str(tmp_path / "mining-report.html"), str(tmp_path / "mining-report.json"), data)
    middle = time.perf_counter()
    write_tensorboard(str(tmp_path / "tb"), data)
    end = time.perf_counter()
    with capsys.disabled():
        print(f"\nreport, 50 top + 20 middle/bottom: write_report {middle - start:.2f} s, "
              f"write_tensorboard {end - middle:.2f} s, together {end - start:.2f} s")
    assert end - start < 60  # a generous bound for a busy 2-core host; about 1 s when quiet
