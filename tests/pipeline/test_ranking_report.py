"""The mining report wired into mining (issue 16): built from what the run computed (boxes from the shards' side
files, scores from the merged stream), written beside result.tsv and into tensorboard, and never able to fail
the task. Fast tests on synthetic shards and through platform mode in process with the fake detector; the page
in Chromium (slow)."""
import html
import json
import os
import re

import numpy as np
import pytest

from executor.pipeline import ranking
from executor.pipeline.job import Job
from executor.pipeline import passes
from executor.pipeline.passes import Models
from executor.pipeline.scoring import side_spec
from executor.pipeline.shards import ShardStore, plan
from executor.pipeline.side_files import SideSpec
from executor.report import page as report_page
from mining.base import Detections
from tests.pipeline.plans import mining_plan
from tests.mining.photos import hashes_of, thumbnails_of
from tests.pipeline.fake_detector import pixel_load
from tests.platform import WEIGHTS, coco_images, make_env, monitor_fields, run_platform

IMAGES = [str(p) for p in coco_images(30)]


def synthetic(tmp_path, selection="score", top_n=5, shard_size=8, copies=True, selected=0):
    """30 coco images in shards of 8 with side files; image 1 a near-copy of image 0 (its photo hash), image n with
    n % 3 boxes of class n % 2; `selected`: start.py mine --topk. Returns the job and the written result lines."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(IMAGES), 8))
    photos = [0] + list(range(len(IMAGES) - 1)) if copies else list(range(len(IMAGES)))
    hashes, thumbs = hashes_of(photos), thumbnails_of(photos)
    scores = {k: float(s) for k, s in zip(IMAGES, np.linspace(1, 0.1, len(IMAGES)))}
    diverse = "test" if selection == "diverse" else ""
    spec = SideSpec(embeddings=diverse, hashes=diverse, boxes=True)
    store = ShardStore(str(tmp_path / "shards"), "mining", {"test": 1}, spec)
    store.embedding_dim, store.class_names = (8 if selection == "diverse" else 0), ["person", "bicycle"]
    for shard in plan(IMAGES, shard_size):
        side = {}
        for key in shard.keys:
            n = IMAGES.index(key)
            det = Detections(np.array([[10, 10, 100, 120]] * (n % 3), np.float32).reshape(-1, 4),
                             np.full(n % 3, 0.6, np.float32),
                             np.array([n % 2] * (n % 3), np.int64), np.zeros((n % 3, 2), np.float32))
            side[key] = (emb[n].astype(np.float16), det, (hashes[n], thumbs[n]))
        store.write_scores(shard, {k: scores[k] for k in shard.keys}, {}, side)
    job = Job(candidates=IMAGES, mining_result=str(tmp_path / "out" / "result.tsv"),
                    tensorboard_dir=str(tmp_path / "out" / "tensorboard"), selected=selected)
    config = {"mining_algorithm": "entropy", "selection": selection, "report_top_n": top_n,
              "shard_size": shard_size, "model_params_path": [str(WEIGHTS)]}
    context = ranking.MiningContext(mining_plan(job, config, str(WEIGHTS)), Models(), 0.0, "2026-12-01T00:00:00+00:00")
    ranking.write_mining(job, store, len(plan(IMAGES, shard_size)), context)
    lines = [line.split("\t") for line in (tmp_path / "out" / "result.tsv").read_text().splitlines()]
    return job, lines


def test_report_is_built_from_the_run(tmp_path):
    job, lines = synthetic(tmp_path)
    out = tmp_path / "out"
    data = json.loads((out / "mining-report.json").read_text())
    assert [t["path"] for t in data["top"]] == [k for k, _ in lines[:5]]
    assert [t["score"] for t in data["top"]] == [float(s) for _, s in lines[:5]]
    assert data["scores"]["count"] == len(IMAGES) and data["score_kind"] == "written"
    assert [m["rank"] for m in data["bottom"]][-1] == len(IMAGES)
    assert all(5 < m["rank"] < len(IMAGES) for m in data["middle"])
    boxes = sum(n % 3 for n in range(len(IMAGES)))
    assert sum(data["class_counts"]["pool"]) == boxes and data["class_counts"]["class_names"] == ["person", "bicycle"]
    assert sum(data["class_counts"]["top"]) == sum(n % 3 for n in range(5))
    assert data["run"]["model_sha256"] == "aa5a38ccbdeef100b120d10437783aa36a5b4c39db505783ac1e48cafa7d3ff8"
    assert data["run"]["pool_size"] == len(IMAGES) and data["run"]["versions"]["quarry"]
    assert data["duplicate_groups"] == [] and data["projection"] is None
    assert (out / "mining-report.html").stat().st_size > 50_000  # thumbnails embedded
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert not (out / "mining-scores.tsv").exists()  # score order: the written score is the raw score


def test_the_report_cuts_at_the_selection_and_shows_at_most_report_top_n(tmp_path):
    """start.py mine --topk 12 (Job.selected) with report_top_n 5: five thumbnails, while the cut, the class counts
    of the top and the projection's selected points follow the 12; --topk 3 shows three thumbnails."""
    job, lines = synthetic(tmp_path / "a", top_n=5, selected=12)
    data = json.loads((tmp_path / "a" / "out" / "mining-report.json").read_text())
    assert data["selected"] == 12 and [t["path"] for t in data["top"]] == [k for k, _ in lines[:5]]
    assert data["histogram"]["top_n"] == 12 and data["histogram"]["cut_score"] == float(lines[11][1])
    assert sum(data["class_counts"]["top"]) == sum(IMAGES.index(k) % 3 for k, _ in lines[:12])
    assert data["class_counts"]["top"][1] == sum(IMAGES.index(k) % 3 for k, _ in lines[:12] if IMAGES.index(k) % 2)
    page = (tmp_path / "a" / "out" / "mining-report.html").read_text()
    assert "Top 12 selected, in result order" in page and "Thumbnails of the first 5 (--report-top-n)" in page
    job, lines = synthetic(tmp_path / "b", top_n=5, selected=3)
    data = json.loads((tmp_path / "b" / "out" / "mining-report.json").read_text())
    assert data["selected"] == 3 and [t["path"] for t in data["top"]] == [k for k, _ in lines[:3]]
    assert sum(data["class_counts"]["top"]) == sum(IMAGES.index(k) % 3 for k, _ in lines[:3])
    synthetic(tmp_path / "c", selection="diverse", top_n=5, selected=12)
    data = json.loads((tmp_path / "c" / "out" / "mining-report.json").read_text())
    assert sum(data["projection"]["selected"]) == 12 and len(data["top"]) == 5 and data["histogram"]["top_n"] == 12


def test_report_of_a_diverse_run_shows_groups_projection_and_raw_scores(tmp_path):
    job, lines = synthetic(tmp_path, selection="diverse")
    data = json.loads((tmp_path / "out" / "mining-report.json").read_text())
    assert data["score_kind"] == "raw"
    assert data["duplicate_groups"] == [{"kept": IMAGES[0], "copies": [IMAGES[1]], "kept_rank": 1,
                                         "copy_ranks": [len(IMAGES)]}]
    assert lines[-1][0] == IMAGES[1]  # the copy went to the bottom
    raw = dict(line.split("\t") for line in (tmp_path / "out" / "mining-scores.tsv").read_text().splitlines())
    assert [t["raw_score"] for t in data["top"]] == [float(raw[t["path"]]) for t in data["top"]]
    assert len(data["projection"]["points"]) == len(IMAGES) and sum(data["projection"]["selected"]) == 5
    assert data["run"]["selection"] == "diverse" and data["run"]["duplicates_pushed_down"] == 1
    page = (tmp_path / "out" / "mining-report.html").read_text()
    assert 'id="duplicates"' in page and 'id="projection"' in page and "raw scores are in" in page


def test_report_off_writes_nothing_else(tmp_path):
    store = ShardStore(str(tmp_path / "shards"), "mining", {"test": 1})
    for shard in plan(IMAGES, 8):
        store.write_scores(shard, {k: 1.0 / (1 + IMAGES.index(k)) for k in shard.keys}, {})
    job = Job(candidates=IMAGES, mining_result=str(tmp_path / "out" / "result.tsv"))
    context = ranking.MiningContext(mining_plan(job, {"report": False, "shard_size": 8}), Models(), 0.0, "")
    ranking.write_mining(job, store, 4, context)
    assert sorted(os.listdir(tmp_path / "out")) == ["result.tsv"]


def test_side_spec_follows_the_settings():
    from executor.pipeline.plan import make_plan

    def spec(**config):
        return side_spec("mining", make_plan(["mining"], Job(), {"model_params_path": [str(WEIGHTS)], **config}))

    assert spec() == SideSpec(boxes=True)
    assert spec(report=False) is None
    assert spec(report=False, mining_algorithm="random") is None
    assert spec(mining_algorithm="random") is None  # no model runs: no boxes to show
    diverse = spec(selection="diverse", class_balance=True, mining_algorithm="random")
    assert diverse.embeddings and diverse.hashes and diverse.class_counts and diverse.boxes and diverse.model


# ---------------------------------------------------------------- platform mode, in process

def report_run(root, monkeypatch):
    """Platform mode in this process (tests.platform.run_platform) over 16 coco images, with the fake detector
    (tests/pipeline/fake_detector.py): the report is built from what the run computed, whatever the model."""
    env = make_env(root, run_mining=True, candidates=coco_images(16),
                   config={"img_size": 320, "report_top_n": 8, "shard_size": 6})
    monkeypatch.setattr(passes, "load_detector", pixel_load)
    status, log = run_platform(env)
    assert status == 0, log[-3000:]
    return env, log


@pytest.fixture(scope="module")
def platform_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        env, log = report_run(root, patch)
    return root, env, log


def test_platform_mode_writes_the_report_beside_result_tsv(platform_run):
    root, env, log = platform_run
    out = root / "out"
    assert monitor_fields(env)[3] == "2"
    lines = [line.split("\t") for line in (out / "result.tsv").read_text().splitlines()]
    data = json.loads((out / "mining-report.json").read_text())
    assert [t["path"] for t in data["top"]] == [k for k, _ in lines[:8]]
    assert data["run"]["algorithm"] == "entropy" and data["run"]["params"]["img_size"] == 320
    assert data["run"]["model"].endswith("yolov8n.pt") and len(data["run"]["model_sha256"]) == 64
    assert sum(data["class_counts"]["pool"]) > 0 and any(t["box_count"] for t in data["top"])
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "wrote the mining report" in log
    assert not (out / "shards").exists()  # side files removed with the shards


def test_a_failing_report_never_fails_the_platform_task(platform_run, tmp_path, monkeypatch):
    root, _, _ = platform_run
    monkeypatch.setattr(report_page, "write_report",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("injected report failure")))
    env, log = report_run(tmp_path / "run", monkeypatch)
    assert monitor_fields(env)[3] == "2"
    out = tmp_path / "run" / "out"
    assert "the mining report was not written (RuntimeError: injected report failure)" in log
    assert not (out / "mining-report.html").exists()
    assert (out / "result.tsv").read_text().replace(str(tmp_path / "run"), "R") == \
        (root / "out" / "result.tsv").read_text().replace(str(root), "R")


@pytest.mark.slow
def test_the_real_report_in_chromium(platform_run):
    from tests.report import test_page_in_chromium as browser

    if browser.CHROMIUM is None:
        pytest.skip("headless Chromium is not installed")
    root, _, _ = platform_run
    out = root / "out"
    text = (out / "mining-report.html").read_text(encoding="utf-8")
    probed = out.parent / "probed.html"
    probed.write_text(text.replace("<head>", "<head>" + browser.HEAD_PROBE, 1)
                      .replace("</body>", browser.TAIL_PROBE + "</body>", 1), encoding="utf-8")
    done = browser._chromium(out.parent, "--virtual-time-budget=15000", "--window-size=1400,4000", "--dump-dom",
                             probed.as_uri())
    body = re.search(r"<body([^>]*)>", done.stdout)
    attrs = {k: html.unescape(v) for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1))}
    assert json.loads(attrs["errors"]) == [] and json.loads(attrs["resources"]) == []
    assert attrs["images-ok"] == attrs["images-total"]
    lines = [line.split("\t")[0] for line in (out / "result.tsv").read_text().splitlines()]
    assert [path for _, path in json.loads(attrs["top-order"])] == lines[:8]
