"""The shard plan: shard_size 0 (the default) takes its size from the pool and the number of workers only."""
import dataclasses

import pytest

from executor.errors import ConfigError, Interrupted
from executor.pipeline.job import Job
from executor.pipeline.plan import make_plan
from executor.pipeline.shards import auto_shard_size, plan, shards_of_rank
from executor.protocol.settings import build_settings
from executor.protocol.templates import FAMILY_TEMPLATES
from executor.runtime import outer_ranks
from tests.platform import WEIGHTS

POOL = Job(candidates=[f"img{i:04d}.jpg" for i in range(1704)])


@pytest.fixture(autouse=True)
def no_outer_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("pool, workers, size", [
    (1704, 1, 213),      # an ordinary folder: 8 shards, not one
    (1704, 2, 107),      # 16 shards, 8 per worker
    (206, 1, 64),        # at least 64 images a shard
    (0, 1, 64),
    (10**7, 4, 2048),    # at most 2048
    (16384, 1, 2048),
    (16385, 1, 2048),
])
def test_auto_shard_size_from_the_pool_and_the_workers(pool, workers, size):
    assert auto_shard_size(pool, workers) == size


@pytest.mark.parametrize("family", sorted(FAMILY_TEMPLATES))
@pytest.mark.parametrize("task", ["mining", "infer"])
def test_shard_size_0_is_auto_and_the_default(family, task):
    assert build_settings(task, {}, FAMILY_TEMPLATES[family]).shard_size == 0


def shard_size(task: str, job: Job, config: dict) -> int:
    """The shard size the plan decides (random mining and an ONNX-free model path: no model is read)."""
    config = {"mining_algorithm": "random", "model_params_path": [str(WEIGHTS)], **config}
    return make_plan([task], job, config).settings[task].shard_size


def test_auto_follows_the_workers_and_a_positive_size_still_wins():
    assert shard_size("mining", POOL, {}) == 213
    assert shard_size("infer", POOL, {"cpu_processes": 2}) == 107
    assert shard_size("mining", POOL, {"shard_size": 100, "cpu_processes": 2}) == 100
    with pytest.raises(ConfigError, match="'shard_size'"):
        build_settings("mining", {"shard_size": -1})


def test_every_rank_of_a_torchrun_plans_the_same_shards(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    mine = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert outer_ranks() == (rank, 3, rank)
        size = shard_size("mining", dataclasses.replace(POOL, outer=outer_ranks()), {})
        assert size == 71  # ceil(1704 / 24)
        mine += [shard.index for shard in shards_of_rank(plan(POOL.candidates, size), rank, 3)]
    assert sorted(mine) == list(range(len(plan(POOL.candidates, 71)))) and len(mine) == 24


def test_an_interrupt_says_what_is_kept():
    assert str(Interrupted("out.shards", 3, 8, 639)) == \
        "interrupted: 3 of 8 shards (639 images) are finished and kept in out.shards"
    assert str(Interrupted("out.shards", 0, 8, 0)) == "interrupted before any shard was finished: nothing is kept"
    assert isinstance(Interrupted("out.shards", 0, 8, 0), KeyboardInterrupt)


def test_infer_shards_keep_each_image_size_and_name_unreadable_ones(tmp_path):
    """An infer shard line carries the image's decoded size (the COCO/YOLO exports need it, never a re-probe);
    its header names the layout, so a shard of the older layout (no sizes) is not reused."""
    from executor.pipeline.shards import Detected, ShardStore, named_records

    store = ShardStore(str(tmp_path), "infer", {"test": 1})
    shard = plan(["a.jpg", "b.jpg"], 2)[0]
    store.write_records(shard, {"a.jpg": [{"box": {"x": 1, "y": 2, "w": 3, "h": 4}}]}, {"b.jpg": "unreadable: x"},
                        {"a.jpg": (640, 480)})
    assert store.complete(shard) and store.header(shard).startswith("# quarry-shard 2 infer ")
    assert list(named_records(store, 1, {"a.jpg": "A", "b.jpg": "B"})) == [
        Detected("A", [{"box": {"x": 1, "y": 2, "w": 3, "h": 4}}], 640, 480),
        Detected("B", None, 0, 0, "unreadable: x")]
    old = tmp_path / "old"
    old.mkdir()
    (old / "infer-000000.txt").write_text(store.header(shard).replace("shard 2", "shard 1")
                                          + '["a.jpg",[]]\n["b.jpg",null,"x"]\n')
    assert not ShardStore(str(old), "infer", {"test": 1}).complete(shard)


def test_side_spec_is_stored_as_the_json_of_what_it_holds():
    from executor.pipeline.side_files import SideSpec

    spec = SideSpec(embeddings="e1", boxes=True)
    assert spec.as_json() == '{"boxes": true, "class_counts": false, "embeddings": "e1", "hashes": ""}'
    assert spec.served_by({"embeddings": "e1", "hashes": "h", "class_counts": True, "boxes": True})
    assert not spec.served_by({"embeddings": "e0", "boxes": True}) and not spec.served_by({"embeddings": "e1"})


@pytest.mark.parametrize("bucket, block", [(1 << 20, 1 << 16), (40, 7)])  # one argsort; many buckets and blocks
def test_the_merge_is_the_stable_sort_of_the_whole_pool(tmp_path, monkeypatch, bucket, block):
    """Many small shards, scores drawn from few values (ties within and across shards and across bucket edges),
    unreadable images with their reason: the merged rows and result.tsv are exactly those of the straightforward
    stable sort of the whole list (writers.mining_lines)."""
    import random

    from executor.pipeline import shards as shards_module
    from executor.pipeline.ranking import ranking_entries
    from executor.pipeline.shards import ShardStore
    from executor.protocol.writers import UNREADABLE_SCORE, mining_lines, write_ranked

    monkeypatch.setattr(shards_module, "MERGE_BUCKET", bucket)
    monkeypatch.setattr(shards_module, "MERGE_BLOCK", block)
    rng = random.Random(7)
    keys = [f"/in/assets/{i % 7:02d}/é{i:04d}.jpg" for i in range(600)]
    scores = {key: rng.choice([0.0, 0.1, 1 / 3, 2.5, 1e-300, 7.25, float(rng.randint(0, 3))]) for key in keys}
    unreadable = {key: f"broken\tfile {n}" for n, key in enumerate(rng.sample(keys, 25))}
    scores.update(dict.fromkeys(unreadable, UNREADABLE_SCORE))
    store = ShardStore(str(tmp_path / "shards"), "mining", {"test": 1})
    shards = plan(keys, 13)
    for shard in shards:
        store.write_scores(shard, {key: scores[key] for key in shard.keys},
                           {key: why for key, why in unreadable.items() if key in shard.keys})

    expected = sorted(range(len(keys)), key=lambda i: -scores[keys[i]])
    rows = list(store.merged_rows(len(shards)))
    assert [row.key for row in rows] == [keys[i] for i in expected]
    assert [row.score for row in rows] == [scores[keys[i]] for i in expected]
    assert [row.reason for row in rows] == [unreadable.get(keys[i], "").replace("\t", " ") for i in expected]
    lines = {}
    for shard in shards:
        with open(store.path(shard), encoding="utf-8") as handle:
            lines.update({(shard.index, n): line for n, line in enumerate(handle.readlines()[1:])})
    assert all(lines[row.shard, row.line].startswith(row.key + "\t") for row in rows)

    out = tmp_path / "result.tsv"
    write_ranked(str(out), ((found.key, found.score) for found in ranking_entries(store, len(shards), None, 600)))
    assert out.read_text(encoding="utf-8") == "".join(mining_lines(scores.items()))
