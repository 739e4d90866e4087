"""The same inputs and seed give byte-identical result.tsv and infer-result.json (CPU; GPU notes in
docs/errors.md). Two separate processes, with different hash seeds, each run mining and infer with every
algorithm over one shared /in; each algorithm's files must match byte for byte across the processes, and
infer's must also be the same whichever mining algorithm ran before it in the same call. Random and CALD draw per
image by its result key (fast tests below; a pool moved to another folder: tests/cli/test_commands.py)."""
import os

import pytest
import yaml

from executor.pipeline.job import Job
from executor.pipeline.scoring import job_shards
from executor.pipeline.shards import ShardStore, plan
from executor.pipeline.plan import make_plan
from executor.pipeline.tasks import run
from mining.random_score import random_scores
from tests.platform import WEIGHTS, coco_images, make_env
from tests.test_failures import Case, assert_succeeded, run_group

ALGORITHMS = ("random", "entropy", "aldd", "cald")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    shared_env = make_env(root / "shared", run_mining=True, run_infer=True, weights=WEIGHTS, candidates=coco_images(3),
                          config={"img_size": 96, "seed": 11, "conf_thres": 0.1, "class_distribution_scores": "1,0.5"})
    base = yaml.safe_load(shared_env.read_text())
    for algorithm in ALGORITHMS:
        config = yaml.safe_load((shared_env.parent / "config.yaml").read_text())
        (shared_env.parent / f"config-{algorithm}.yaml").write_text(yaml.safe_dump({**config, "mining_algorithm": algorithm}))

    def case(algorithm):
        def build(case_root):
            out = case_root / "out"
            out.mkdir(parents=True)
            env = {**base, "input": {**base["input"], "config_file": str(shared_env.parent / f"config-{algorithm}.yaml")},
                   "output": {**base["output"], **{k: str(out / os.path.relpath(v, root / "shared" / "out"))
                                                   for k, v in base["output"].items()}}}
            path = case_root / "env.yaml"
            path.write_text(yaml.safe_dump(env))
            return path
        return Case(0, "", build)

    runs = {}
    for run, hash_seed in (("a", "1"), ("b", "2")):
        runs[run] = run_group(root / run, {a: case(a) for a in ALGORITHMS}, extra_env={"PYTHONHASHSEED": hash_seed})
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_mining_and_infer_give_the_same_bytes(two_runs, algorithm):
    outputs = []
    for run in ("a", "b"):
        result = two_runs[run][algorithm]
        assert_succeeded(result)
        out = result["root"] / "out"
        outputs.append(((out / "result.tsv").read_bytes(), (out / "infer-result.json").read_bytes()))
    assert outputs[0][0] == outputs[1][0]
    assert outputs[0][1] == outputs[1][1]
    assert len(outputs[0][0].splitlines()) == 3 and b'"boxes":[{' in outputs[0][1]


@pytest.mark.slow
def test_infer_does_not_depend_on_the_mining_before_it(two_runs):
    results = {(two_runs["a"][a]["root"] / "out" / "infer-result.json").read_bytes() for a in ALGORITHMS}
    assert len(results) == 1


def mined_scores(job: Job) -> dict[str, float]:
    run(make_plan(["mining"], job, {"mining_algorithm": "random", "seed": 5, "report": False}))
    lines = open(job.mining_result, encoding="utf-8").read().splitlines()
    return {key: float(score) for key, score in (line.split("\t") for line in lines)}


def test_random_draws_by_the_result_key(tmp_path):
    """Platform mode (a Job without names) draws each image by its candidate path as the index lists it, as it
    always did; the CLI by Job.names (paths relative to --source). result.tsv is keyed by the paths either way."""
    paths = [str(p) for p in coco_images(3)]
    names = [f"pool/{os.path.basename(p)}" for p in paths]
    common = {"mining_result": str(tmp_path / "result.tsv"), "shards_dir": str(tmp_path / "shards")}
    platform = mined_scores(Job(candidates=paths, **common))
    assert platform == dict(zip(paths, random_scores(paths, 5).tolist()))
    named = mined_scores(Job(candidates=paths, names=names, **common))
    assert named == dict(zip(paths, random_scores(names, 5).tolist())) and named != platform


def test_a_shard_scored_under_other_result_keys_is_not_reused(tmp_path):
    paths = [str(p) for p in coco_images(3)]
    names = [f"pool/{os.path.basename(p)}" for p in paths]
    [shard] = plan(paths, 8, names)
    ShardStore(str(tmp_path), "mining", {"run": 1}).write_scores(shard, dict.fromkeys(paths, 0.5), {})
    assert ShardStore(str(tmp_path), "mining", {"run": 1}).complete(shard)
    for other in ([f"moved/{os.path.basename(p)}" for p in paths], ()):
        assert not ShardStore(str(tmp_path), "mining", {"run": 1}).complete(plan(paths, 8, other)[0])
    with pytest.raises(ValueError, match="2 result keys for 3 candidates"):
        job_shards(Job(candidates=paths, names=names[:2]), 8)
