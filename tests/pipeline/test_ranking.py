"""Selection wired into mining (issue 15): side files of the shards, the diverse plan applied to the streamed
merge, and, with the real model (slow), planted near-duplicates through platform mode (in process), resume and
both backends. Two worker processes select as one: tests/test_workers.py; the same bytes for the same seed:
tests/test_determinism.py."""
import json
import math
import os
import shutil

import cv2
import numpy as np
import pytest

from executor.pipeline import tasks
from executor.pipeline import diversity, ranking
from executor.pipeline.job import Job
from executor.pipeline.passes import Models
from executor.pipeline.shards import ShardStore, plan
from executor.pipeline.side_files import SideSpec
from executor.protocol.settings import build_settings
from executor.pipeline.plan import make_plan
from mining.base import Detections
from mining.selection import rank_diverse
from tests.pipeline.plans import mining_plan
from tests.mining.photos import distinct, hashes_of, thumbnails_of
from tests.platform import WEIGHTS, add_assets, coco_images, coco_names, make_env, monitor_fields, run_platform

# the hand-made set of tests/mining/test_selection.py: A and its near-copy A', B and B', an outlier C, and E
# close to A (cos 0.9, under the 0.95 threshold) with the second-best score
A, A2, B, B2, C, E = 0, 1, 2, 3, 4, 5
SIX_EMB = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.1], [0.0, 3.0, 0.0, 0.0], [0.0, 1.0, 0.0, -0.1],
                    [0.0, 0.0, 1.0, 0.0], [0.9, math.sqrt(1 - 0.81), 0.0, 0.0]])
SIX_SCORES = [0.9, 0.8, 0.7, 0.6, 0.75, 0.85]
KEYS = [f"/pool/{name}.jpg" for name in ("A", "A2", "B", "B2", "C", "E")]
SIX_PHOTOS = [0, 0, 1, 1, 2, 3]  # A2 and B2 are copies of A and B (hashes with 10 bits changed); E is another photo
SIX_HASHES = hashes_of(SIX_PHOTOS, [0, 10, 0, 10, 0, 0])
SIX_THUMBS = thumbnails_of(SIX_PHOTOS)


def detections(classes):
    n = len(classes)
    return Detections(np.tile(np.array([[1, 2, 30, 40]], np.float32), (n, 1)), np.full(n, 0.5, np.float32),
                      np.asarray(classes, np.int64), np.zeros((n, 3), np.float32))


def synthetic_store(folder, keys, scores, embeddings, shard_size, unreadable=(), classes=None, spec=None,
                    hashes=None, thumbnails=None):
    """Shard files as the workers write them, with side files (embeddings, photo hashes, boxes); hashes and
    thumbnails default to SIX_HASHES / SIX_THUMBS for the six keys, else to distinct photos."""
    spec = spec or SideSpec(embeddings="test", hashes="test", class_counts=classes is not None, boxes=True)
    six = len(keys) == len(KEYS) and hashes is None
    hashes = SIX_HASHES if six else (distinct(len(keys)) if hashes is None else hashes)
    thumbnails = SIX_THUMBS if six else (thumbnails_of(range(len(keys))) if thumbnails is None else thumbnails)
    store = ShardStore(str(folder), "mining", {"test": 1}, spec)
    store.embedding_dim, store.class_names = embeddings.shape[1], ["a", "b", "c"]
    score_of = dict(zip(keys, scores))
    for key in unreadable:
        score_of[key] = -1.0
    for shard in plan(keys, shard_size):
        side = {k: (embeddings[keys.index(k)].astype(np.float16),
                    detections(classes[keys.index(k)] if classes is not None else [0]),
                    (hashes[keys.index(k)], thumbnails[keys.index(k)]))
                for k in shard.keys if k not in unreadable}
        store.write_scores(shard, {k: score_of[k] for k in shard.keys},
                           {k: "unreadable: test" for k in shard.keys if k in unreadable}, side)
    return store, len(plan(keys, shard_size))


def write(tmp_path, store, count, keys, **config):
    job = Job(candidates=keys, mining_result=str(tmp_path / "result.tsv"))
    config = {"mining_algorithm": "random", "report": False, **config}
    ranking.write_mining(job, store, count, ranking.MiningContext(mining_plan(job, config), Models(), 0.0, ""))
    lines = [line.split("\t") for line in (tmp_path / "result.tsv").read_text().splitlines()]
    raw = [line.split("\t") for line in (tmp_path / "mining-scores.tsv").read_text().splitlines()] \
        if (tmp_path / "mining-scores.tsv").exists() else None
    return [k for k, _ in lines], [float(s) for _, s in lines], raw


# ---------------------------------------------------------------- side files (fast)

def test_a_shard_is_complete_only_with_its_side_file(tmp_path):
    store, _ = synthetic_store(tmp_path, KEYS, SIX_SCORES, SIX_EMB, 4)
    shards = plan(KEYS, 4)
    assert all(store.complete(s) for s in shards)
    os.unlink(store.side_path(1))
    assert store.complete(shards[0]) and not store.complete(shards[1])
    other = ShardStore(str(tmp_path), "mining", {"test": 1}, SideSpec(embeddings="another pooling", boxes=True))
    assert not other.complete(shards[0])  # another side spec: its side files are not these
    plain = ShardStore(str(tmp_path), "mining", {"test": 1})
    assert plain.complete(shards[1])  # a run without side files reuses the score file alone
    # a side file holding more than a run needs serves it (the report's boxes, for a run with the report off);
    # one holding less does not (class counts)
    no_report = ShardStore(str(tmp_path), "mining", {"test": 1}, SideSpec(embeddings="test", hashes="test"))
    assert no_report.complete(shards[0])
    balanced = ShardStore(str(tmp_path), "mining", {"test": 1}, SideSpec(embeddings="test", hashes="test",
                                                                         class_counts=True, boxes=True))
    assert not balanced.complete(shards[0])
    (tmp_path / os.path.basename(store.side_path(1))).write_bytes(b"PK\x03\x04 half a zip")
    assert not store.complete(shards[1])


def test_side_rows_follow_the_shard_lines_and_merged_rows_tell_where_they_came_from(tmp_path):
    store, count = synthetic_store(tmp_path, KEYS, SIX_SCORES, SIX_EMB, 4)
    rows = list(store.merged_rows(count))
    assert [(r.key, r.score) for r in rows] == sorted(zip(KEYS, SIX_SCORES), key=lambda pair: -pair[1])
    for row in rows:
        arrays = store.side_arrays(row.shard, "order", "embeddings")
        index = plan(KEYS, 4)[row.shard].keys[arrays.order[row.line]]
        assert index == row.key
        expected = SIX_EMB[KEYS.index(row.key)].astype(np.float16)
        assert np.array_equal(arrays.embeddings[row.line], expected)
    assert arrays.hashes is None  # only the fields asked for are read
    with pytest.raises(ValueError, match="side files hold no"):
        store.side_arrays(0, "embedding")


# ---------------------------------------------------------------- the diverse plan on the streamed merge (fast)

def test_diverse_on_the_whole_pool_is_rank_diverse_exactly(tmp_path):
    store, count = synthetic_store(tmp_path, KEYS, SIX_SCORES, SIX_EMB, 4)
    keys, written, raw = write(tmp_path, store, count, KEYS, selection="diverse", shard_size=4, diversity_weight=0.5)
    # MMR with the shortlist's score ranks (1, 2/3, 1/3, 0 for A, E, C, B) and w = 0.5: A; then C (1/6 + 1/2)
    # beats E (1/3 + 0.05) and B (1/2); then B (1/2) beats E (1/3 + 0.05 * 1/1); then E. Copies last.
    assert [KEYS.index(k) for k in keys] == [A, C, B, E, A2, B2]
    expected = rank_diverse(SIX_SCORES, SIX_EMB.astype(np.float16).astype(np.float64), hashes=SIX_HASHES,
                            thumbnails=SIX_THUMBS, diversity_weight=0.5, dedup_similarity=0.85,
                            score_scale="rank").order.tolist()
    assert [KEYS.index(k) for k in keys] == expected
    assert written == [6 / 6, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]  # the priority, strictly decreasing
    assert [k for k, _ in raw] == keys  # raw scores in the written order
    assert [float(s) for _, s in raw] == [SIX_SCORES[KEYS.index(k)] for k in keys]


def test_template_defaults_keep_the_score_order_of_distinct_images(tmp_path):
    """diversity_weight 0.15: E, close to A but second by score, stays second (0.85 * 2/3 + 0.15 * 0.1 beats
    C's 0.85 * 1/3 + 0.15); only the copies move."""
    store, count = synthetic_store(tmp_path, KEYS, SIX_SCORES, SIX_EMB, 4)
    keys, _, _ = write(tmp_path, store, count, KEYS, selection="diverse", shard_size=4)
    assert [KEYS.index(k) for k in keys] == [A, E, C, B, A2, B2]


def test_below_the_shortlist_copies_of_kept_images_go_down(tmp_path):
    """diverse_pool 2: the shortlist is A, E; A' (a copy of the kept A) goes below every other image, B' stays:
    its original B is below the shortlist too (only the shortlist's kept images are compared with)."""
    store, count = synthetic_store(tmp_path, KEYS, SIX_SCORES, SIX_EMB, 2)
    keys, written, _ = write(tmp_path, store, count, KEYS, selection="diverse", diverse_pool=2, shard_size=2,
                             diversity_weight=0.5)
    assert [KEYS.index(k) for k in keys] == [A, E, C, B, B2, A2]
    assert written == sorted(written, reverse=True)


def test_unreadable_images_stay_last_with_minus_one(tmp_path):
    keys = KEYS + ["/pool/broken.jpg"]
    emb = np.concatenate([SIX_EMB, np.ones((1, 4))])
    store, count = synthetic_store(tmp_path, keys, SIX_SCORES + [0.0], emb, 3, unreadable={"/pool/broken.jpg"})
    written_keys, written, raw = write(tmp_path, store, count, keys, selection="diverse", shard_size=3,
                                       diversity_weight=0.5)
    assert written_keys[-1] == "/pool/broken.jpg" and written[-1] == -1.0 and raw[-1][1] == "-1.0"
    assert [KEYS.index(k) for k in written_keys[:-1]] == [A, C, B, E, A2, B2]
    assert written[:-1] == [(6 - r) / 6 for r in range(6)]


def test_labelled_near_copies_go_down(tmp_path, monkeypatch):
    """An image nearly copying a labelled one is placed below the rest, and nothing is placed near the
    labelled images first: with C labelled, C's copy goes down and the order starts away from C."""
    store, count = synthetic_store(tmp_path, KEYS, SIX_SCORES, SIX_EMB, 4)
    labelled_c = diversity.Labeled(np.array([[0.0, 0.0, 1.0, 0.01]], np.float32), hashes_of([2], [6]),
                                   thumbnails_of([2]), ("/labelled/C.jpg",))
    monkeypatch.setattr(diversity, "labeled_images", lambda job, settings, weights, models: labelled_c)
    job = Job(candidates=KEYS, mining_result=str(tmp_path / "result.tsv"), labeled=("/labelled/C.jpg",))
    config = {"mining_algorithm": "random", "report": False, "selection": "diverse", "shard_size": 4,
              "diversity_weight": 0.5}
    ranking.write_mining(job, store, count, ranking.MiningContext(mining_plan(job, config), Models(), 0.0, ""))
    order = [KEYS.index(line.split("\t")[0]) for line in (tmp_path / "result.tsv").read_text().splitlines()]
    assert order[-1] == B2 and order[-2] == C and order[-3] == A2  # C copies the labelled C; then score order
    assert order[:3] == [A, B, E]


def test_class_balance_reads_the_class_counts(tmp_path):
    """Four equal-score, mutually distant images; class 2 is rare: with class_balance it comes second."""
    keys = [f"/pool/{n}.jpg" for n in range(4)]
    emb = np.eye(4)
    classes = [[0, 0], [0, 1], [0], [2]]
    scores = [1.0, 0.99, 0.98, 0.97]
    store, count = synthetic_store(tmp_path, keys, scores, emb, 4, classes=classes)
    assert store.side_arrays(0, "class_counts").class_counts.tolist()[0] == [2, 0, 0]
    balanced, _, _ = write(tmp_path, store, count, keys, selection="diverse", class_balance=True,
                           diversity_weight=1.0, shard_size=4)
    assert balanced[:2] == ["/pool/0.jpg", "/pool/3.jpg"]


def test_no_embeddings_keeps_the_score_order_with_a_warning(tmp_path, caplog):
    store = ShardStore(str(tmp_path), "mining", {"test": 1}, SideSpec(embeddings="test", hashes="test", boxes=True))
    store.class_names = ["a"]  # embedding_dim 0: what an ONNX model without embeddings leaves
    for shard in plan(KEYS, 4):
        store.write_scores(shard, dict(zip(shard.keys, SIX_SCORES[shard.start:])), {},
                           {k: (None, detections([0]), None) for k in shard.keys})
    keys, written, raw = write(tmp_path, store, 2, KEYS, selection="diverse", shard_size=4)
    assert written == sorted(SIX_SCORES, reverse=True) and raw is None
    assert "no embeddings" in caplog.text


@pytest.mark.parametrize("copies, warned", [(3, True), (1, False)])
def test_a_pool_with_many_near_duplicates_is_warned_of(tmp_path, caplog, copies, warned):
    """More than 10% of the pool flagged: a warning that says how many and what to check; 1 in 10 is no warning."""
    keys = [f"/pool/{n}.jpg" for n in range(10)]
    photos = list(range(10 - copies)) + list(range(copies))  # the last `copies` images copy the first ones
    store, count = synthetic_store(tmp_path, keys, [1.0 - n / 10 for n in range(10)], np.eye(10), 10,
                                   hashes=hashes_of(photos), thumbnails=thumbnails_of(photos))
    write(tmp_path, store, count, keys, selection="diverse", shard_size=10, report=True,
          model_params_path=[str(WEIGHTS)])  # the report names the weights (random mining runs none)
    assert ("3 of 10 images (30%) are near-duplicates at dedup_similarity 0.85" in caplog.text) == warned
    assert ("near-duplicates at dedup_similarity" in caplog.text) == warned
    found = json.loads((tmp_path / "mining-report.json").read_text())["near_duplicates"]
    assert found["flagged"] == copies and found["readable"] == 10 and found["threshold"] == 0.85
    assert sum(found["counts"]) == 9 and len(found["bin_edges"]) == len(found["counts"]) + 1  # all but the first
    assert sum(c for c, low in zip(found["counts"], found["bin_edges"]) if low >= 0.85) == copies
    assert bool(found["warning"]) == warned
    page = (tmp_path / "mining-report.html").read_text()
    assert "photo-hash similarity" in page and ('class="warning"' in page) == warned


def test_template_keys_and_rules():
    settings = build_settings("mining", {})
    assert (settings.selection, settings.report, settings.class_balance) == ("score", True, False)
    assert 0 < settings.dedup_similarity <= 1 and settings.diverse_pool == 0 and settings.report_top_n > 0
    with pytest.raises(Exception, match="selection"):
        build_settings("mining", {"selection": "mmr"})
    with pytest.raises(Exception, match="dedup_similarity"):
        build_settings("mining", {"dedup_similarity": 0})


# ---------------------------------------------------------------- through start.py with the real model (slow)

GROUPS = 3  # images with three near-copies each


def planted(folder, count=9):
    """`count` coco-val images, the first GROUPS of them with three near-copies each (re-encoded at JPEG 40 and
    resized to 80%, the central 90% cropped, brightness + 25). Returns the paths and the group of each."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, groups = [], []
    for n, source in enumerate(coco_images(count)):
        target = folder / source.name
        shutil.copy(source, target)
        paths.append(target)
        groups.append(n if n < GROUPS else -1)
        if n >= GROUPS:
            continue
        image = cv2.imread(str(source))
        h, w = image.shape[:2]
        copies = {"small": (cv2.resize(image, (int(w * 0.8), int(h * 0.8)), interpolation=cv2.INTER_AREA), 40),
                  "crop": (image[int(h * 0.05):int(h * 0.95), int(w * 0.05):int(w * 0.95)], 95),
                  "bright": (np.clip(image.astype(np.int16) + 25, 0, 255).astype(np.uint8), 90)}
        for name, (copy, quality) in copies.items():
            path = folder / f"{source.stem}-{name}.jpg"
            cv2.imwrite(str(path), copy, [cv2.IMWRITE_JPEG_QUALITY, quality])
            paths.append(path)
            groups.append(n)
    return paths, groups


def group_of_assets(paths, groups):
    """result.tsv names the sha1-named assets make_env copies the images to: map them back to groups."""
    import hashlib

    out = {}
    for path, group in zip(paths, groups):
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        out[digest] = group
    return out


def read_lines(path):
    return [line.split("\t") for line in path.read_text().splitlines()]


def mine_env(root, candidates, **config):
    """Platform mode in this process (tests.platform.run_platform) with the real model; returns env.yaml and the
    run's log."""
    env = make_env(root, run_mining=True, candidates=candidates,
                   config={"img_size": 320, "mining_algorithm": "entropy", **config})
    status, log = run_platform(env)
    assert status == 0, log[-3000:]
    assert monitor_fields(env)[3] == "2"
    return env, log


def mine_in_process(root, candidates, weights, **config):
    """Mining driven in this process (executor.pipeline.tasks.run with a Job): `candidates` copied to sha1-named
    assets as make_env does, result.tsv in `root`/out."""
    (root / "out").mkdir(parents=True)
    job = Job(candidates=add_assets(root / "assets", candidates), mining_result=str(root / "out" / "result.tsv"))
    tasks.run(make_plan(["mining"], job, {"model_params_path": [str(weights)], "class_names": coco_names(),
                                          "img_size": 320, **config}))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return planted(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def diverse_run(pool, tmp_path_factory):
    root = tmp_path_factory.mktemp("diverse")
    env, log = mine_env(root, pool[0], selection="diverse", shard_size=5)
    return root, log


def groups_in_order(root, pool):
    by_digest = group_of_assets(*pool)
    return [by_digest[os.path.basename(key).split(".")[0]] for key, _ in read_lines(root / "out" / "result.tsv")]


@pytest.mark.slow
def test_planted_copies_leave_the_top(pool, diverse_run):
    root, log = diverse_run
    order = groups_in_order(root, pool)
    n_unique = len(coco_images(9))
    head = [g for g in order[:n_unique] if g >= 0]
    assert len(head) == len(set(head)) == GROUPS  # one image of each group among the non-duplicates
    assert sorted(g for g in order[n_unique:]) == sorted([g for g in range(GROUPS)] * 3)  # every copy below
    written = [float(s) for _, s in read_lines(root / "out" / "result.tsv")]
    assert written == sorted(written, reverse=True) and len(set(written)) == len(written)
    assert f"{3 * GROUPS} near-duplicates pushed down" in log


@pytest.mark.slow
def test_raw_scores_are_the_score_runs_scores(pool, diverse_run, tmp_path):
    root, _ = diverse_run
    raw = read_lines(root / "out" / "mining-scores.tsv")
    assert [k for k, _ in raw] == [k for k, _ in read_lines(root / "out" / "result.tsv")]
    mine_env(tmp_path, pool[0], shard_size=5)
    by_score = {os.path.basename(k): s for k, s in read_lines(tmp_path / "out" / "result.tsv")}
    assert {os.path.basename(k): s for k, s in raw} == by_score  # byte for byte the same score strings


@pytest.mark.slow
def test_resume_reuses_complete_shards_with_their_side_files(pool, tmp_path, monkeypatch, caplog):
    """Shards (and side files) left by a run stopped before the merge are reused; the result is the same. Driven
    in process (tasks.run with a Job, the stop injected with monkeypatch); kill -9 and resume: tests/test_workers.py."""
    def stop(*args, **kwargs):
        raise SystemExit(3)  # every shard is complete, nothing merged

    root = tmp_path / "run"
    (root / "out").mkdir(parents=True)
    job = Job(candidates=add_assets(root / "assets", pool[0]), mining_result=str(root / "out" / "result.tsv"),
              work_dir=str(root / "out"))
    config = {"model_params_path": [str(WEIGHTS)], "class_names": coco_names(), "img_size": 320,
              "selection": "diverse", "shard_size": 5}
    with monkeypatch.context() as patch:
        patch.setattr(tasks, "write_mining", stop)  # tasks.scan calls it by this name
        with pytest.raises(SystemExit):
            tasks.run(make_plan(["mining"], job, config))
    assert len(list((root / "out" / "shards").glob("mining-*.npz"))) == 4
    assert not (root / "out" / "result.tsv").exists()
    caplog.set_level("INFO", "executor")
    tasks.run(make_plan(["mining"], job, config))
    assert "4 of 4 shards are complete from an earlier run" in caplog.text
    fresh = tmp_path / "fresh"
    mine_in_process(fresh, pool[0], WEIGHTS, selection="diverse", shard_size=5)
    assert (root / "out" / "result.tsv").read_text().replace(str(root), "R") == \
        (fresh / "out" / "result.tsv").read_text().replace(str(fresh), "R")
    assert not (root / "out" / "shards").exists()


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    from executor.engine.loading import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    export_onnx(str(WEIGHTS), str(folder / "yolov8n.onnx"), 320, 0)
    return folder / "yolov8n.onnx"


@pytest.mark.slow
def test_onnx_backend_gives_embeddings_too(pool, onnx_models, tmp_path, caplog):
    caplog.set_level("INFO", "executor")
    mine_in_process(tmp_path, pool[0], onnx_models, selection="diverse")
    assert "embeddings: ONNX outputs" in caplog.text
    order = groups_in_order(tmp_path, pool)
    n_unique = len(coco_images(9))
    assert sorted(g for g in order[:n_unique] if g >= 0) == list(range(GROUPS))


@pytest.mark.slow
def test_onnx_without_embeddings_falls_back_to_the_score_order(pool, onnx_models, tmp_path, monkeypatch, caplog):
    import executor.engine.onnx_detector as onnx_detector

    def no_head(*args, **kwargs):
        raise onnx_detector.ModelError("injected: no head found")

    caplog.set_level("INFO", "executor")
    results = []
    for name, config in (("diverse", {"selection": "diverse"}), ("score", {})):
        root = tmp_path / name
        with monkeypatch.context() as patch:
            if name == "diverse":
                patch.setattr(onnx_detector, "onnx_with_head_inputs", no_head)
            mine_in_process(root, pool[0], onnx_models, **config)
        if name == "diverse":
            assert "no embeddings (ModelError: injected: no head found)" in caplog.text
            assert "keeps the score order" in caplog.text
        results.append((root / "out" / "result.tsv").read_text().replace(str(root), "R"))
    assert results[0] == results[1]


@pytest.mark.slow
def test_random_with_diverse_runs_the_model_for_embeddings_only(pool, tmp_path):
    env, log = mine_env(tmp_path, pool[0], selection="diverse", mining_algorithm="random")
    assert "forwards for embeddings only" in log
    order = groups_in_order(tmp_path, pool)
    n_unique = len(coco_images(9))
    assert sorted(g for g in order[:n_unique] if g >= 0) == list(range(GROUPS))


@pytest.mark.slow
def test_a_rerun_with_other_selection_settings_reselects_without_a_forward(tmp_path, monkeypatch, caplog):
    """Shards kept after the merge (the CLI's default): the same pool with other selection settings is merged and
    selected again from the side files; no model is loaded, no shard file is written again."""
    images = [str(p) for p in coco_images(6)]
    job = Job(candidates=images, mining_result=str(tmp_path / "result.tsv"),
                    shards_dir=str(tmp_path / "shards"), keep_shards=True)
    config = {"model_params_path": [str(WEIGHTS)], "img_size": 160, "selection": "diverse"}
    tasks.run(make_plan(["mining"], job, config))
    first = (tmp_path / "result.tsv").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()}
    assert any(p.suffix == ".npz" for p in stamps)

    def no_model(*args, **kwargs):
        raise AssertionError("re-selection loaded a model")

    monkeypatch.setattr(Models, "detector", no_model)
    caplog.set_level("INFO", "executor")
    tasks.run(make_plan(["mining"], job, {**config, "dedup_similarity": 0.01}))  # every image but the first a "copy"
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()} == stamps
    assert "5 of 6 images (83%) are near-duplicates at dedup_similarity 0.01" in caplog.text
    assert "1 of 1 shards are complete from an earlier run" in caplog.text
    again = (tmp_path / "result.tsv").read_text()
    assert sorted(line.split("\t")[0] for line in again.splitlines()) == sorted(
        line.split("\t")[0] for line in first.splitlines())
    raw = dict(line.split("\t") for line in (tmp_path / "mining-scores.tsv").read_text().splitlines())
    assert set(raw) == set(images)  # every raw score read back from the kept shards


def test_the_ranking_comes_back_as_values(tmp_path, monkeypatch):
    """A job with no result file gets every entry back (the API, the simulator) and writes nothing, not even a
    report or raw scores beside a result it does not have; with a file, the first Job.selected come back."""
    monkeypatch.chdir(tmp_path)
    store, count = synthetic_store(tmp_path / "shards", KEYS, SIX_SCORES, SIX_EMB, 4, unreadable=[KEYS[C]])
    config = {"mining_algorithm": "random", "selection": "diverse", "shard_size": 4, "report": True}
    job = Job(candidates=KEYS)
    found = ranking.write_mining(job, store, count, ranking.MiningContext(mining_plan(job, config), Models(), 0.0, ""))
    assert found.path == "" and sorted(os.listdir(tmp_path)) == ["shards"]
    assert [e.key for e in found] == [KEYS[i] for i in (A, E, B, A2, B2, C)]  # near-copies, then unreadable
    assert [e.score for e in found] == [5 / 5, 4 / 5, 3 / 5, 2 / 5, 1 / 5, -1.0]
    assert [e.raw for e in found] == [SIX_SCORES[i] for i in (A, E, B, A2, B2)] + [-1.0]
    assert found.entries[-1].reason == "unreadable: test"
    job = Job(candidates=KEYS, mining_result=str(tmp_path / "out" / "result.tsv"), selected=2)
    head = ranking.write_mining(job, store, count, ranking.MiningContext(mining_plan(job, config), Models(), 0.0, ""))
    written = (tmp_path / "out" / "result.tsv").read_text().splitlines()
    assert head.path == job.mining_result and [f"{e.key}\t{e.score}" for e in head] == written[:2]
