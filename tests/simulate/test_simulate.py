"""The active-learning simulator (executor/simulate/): data conversion and checks, the loop's mechanics with a
stand-in trainer (fast), and one tiny real plan with Quarry's training, evaluation and mining (slow)."""
import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from executor.errors import ConfigError, DatasetError, ModelError
from executor.pipeline.shards import Detected
from executor.simulate import (bootstrap as sim_bootstrap, command as sim_command, compare as sim_compare,
                               cost as sim_cost, plan as sim_plan, rounds as sim_rounds, summary as sim_summary)
from executor.simulate.plan import Plan
from executor.simulate.rounds import Trained
from executor.simulate.state import Simulation
from mining.base import Detections
from tests.ymir_builders import SHARED, WEIGHTS_DIR

HIGHWAY = SHARED / "data" / "highway"
WEIGHTS = WEIGHTS_DIR / "yolov8n.pt"
NAMES = ["bus", "car", "motorbike", "person", "truck"]
pytestmark = pytest.mark.skipif(not (HIGHWAY / "data.yaml").is_file() or not WEIGHTS.is_file(),
                                reason="needs shared/data/highway and shared/weights/yolov8n.pt")


def copy_split(split: str, target: Path, count: int, start: int = 0) -> None:
    names = sorted(os.listdir(HIGHWAY / split / "images"))[start:start + count]
    for kind in ("images", "labels"):
        (target / kind).mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(HIGHWAY / split / "images" / name, target / "images" / name)
        label = HIGHWAY / split / "labels" / (os.path.splitext(name)[0] + ".txt")
        if label.is_file():
            shutil.copy(label, target / "labels" / label.name)


def write_yaml(root: Path, train="train/images", val="valid/images") -> Path:
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES))
    (root / "data.yaml").write_text(f"train: {train}\nval: {val}\nnames:\n{names}")
    return root / "data.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """40 pool images from highway train/, 10 val images from valid/, YOLO labels, a data.yaml."""
    root = tmp_path_factory.mktemp("tiny")
    copy_split("train", root / "train", 40)
    copy_split("valid", root / "valid", 10)
    return write_yaml(root)


class FakeTrainer:
    """Stands in for training: a weights file per round and an mAP that depends on the labelled set only; with
    `val` (the val samples), also a val match table of predictions that find the boxes of every image but a
    number of them that depends on the labelled set."""

    def __init__(self, val=None):
        self.calls, self.val = [], val

    def __call__(self, folder, images, seed, progress):
        self.calls.append((folder, list(images), seed))
        weights = Path(folder) / "models" / "best" / "best.pt"
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.write_text(f"fake weights of seed {seed} trained on {len(images)} images: {images[:3]}")
        progress(1.0)
        value = 0.2 + 0.01 * len(images) + (sum(map(ord, "".join(images))) % 97) / 1000
        if self.val is None:
            return Trained(str(weights), value, value / 2, 0.9, 1.5, 0.25)
        missed = sum(map(ord, "".join(images))) % len(self.val)
        found = ground_truth_detections(self.val, shift=lambda i: 50.0 * (i < missed))
        table = sim_bootstrap.match_table(self.val, found, len(NAMES))
        matches = Path(folder) / "models" / "val-matches.npz"
        sim_bootstrap.save(str(matches), table)
        value, value95 = sim_bootstrap.mean_ap(sim_bootstrap.load(str(matches)))
        return Trained(str(weights), value, value95, 0.9, 1.5, 0.25, str(matches))


def ground_truth_detections(samples, shift=lambda i: 0.0, drop_first=False) -> list[Detections]:
    """Each sample's boxes as detections (moved right by shift(i) pixels: 50 misses a small box), scores falling."""
    found = []
    for i, sample in enumerate(samples):
        boxes, classes = sample.boxes[int(drop_first):] + [shift(i), 0, shift(i), 0], sample.classes[int(drop_first):]
        probs = np.zeros((len(boxes), len(NAMES)), np.float32)
        probs[np.arange(len(boxes)), classes] = np.linspace(0.9, 0.5, len(boxes))
        found.append(Detections(boxes.astype(np.float32), probs.max(1), classes.astype(np.int64), probs))
    return found



def all_but_first_box(weights, samples, config) -> list[Detections]:
    """Stands in for pre-labelling: each image's ground truth without its first box (one miss per labelled image,
    no false positive)."""
    return ground_truth_detections(samples, drop_first=True)


class FakeMiner:
    """Stands in for mining: ranks the candidates by a hash of the algorithm, the config it was given and the path;
    records what each call read (the weights' bytes) and was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, algorithm, weights, candidates, folder, data, config, seed, progress, labelled=(),
                 models=None):
        import hashlib

        self.calls.append({"algorithm": algorithm, "weights": Path(weights).read_text(), "folder": folder,
                           "config": dict(config), "seed": seed, "models": models})
        key = json.dumps([algorithm, sorted(config.items())], default=str)
        return sorted(candidates, key=lambda p: hashlib.sha1((key + data.rel(p)).encode()).hexdigest())


def plan(data, out, **kw) -> Plan:
    base = dict(data=str(data), weights=str(WEIGHTS), out=str(out), algorithms=("random",), initial=8, budget=8,
                rounds=2, seeds=(0,), config={"epochs": 1, "img_size": 160})
    return Plan(**{**base, **kw})


def fake_run(data, out, after_round=None, miner=None, **kw) -> tuple[Simulation, dict]:
    sim = Simulation(plan(data, out, **kw), trainer=FakeTrainer(), after_round=after_round, progress=False,
                     clock=lambda: 0.0, reference=False, miner=miner, prelabeller=all_but_first_box)
    return sim, sim.run()


def state(out) -> dict:
    return json.loads((Path(out) / "simulation.json").read_text())


def picks(out, algorithm, seed) -> list[list[str]]:
    run = next(r for r in state(out)["runs"] if r["algorithm"] == algorithm and r["seed"] == seed)
    return [r["added"] for r in run["rounds"]]


def check_growth(out, budget=8, initial=8, rounds=2) -> None:
    for run in state(out)["runs"]:
        rounds_ = run["rounds"]
        assert [r["labelled"] for r in rounds_] == [initial + k * budget for k in range(rounds + 1)]
        assert [len(r["added"]) for r in rounds_] == [initial] + [budget] * rounds
        every = [p for r in rounds_ for p in r["added"]]
        assert len(every) == len(set(every)), f"{run['algorithm']} picked an image twice"


# ---------------------------------------------------------------- data

def test_yolo_labels_become_ark_with_the_same_boxes(tiny, tmp_path):
    data = sim_plan.prepare_data(str(tiny), str(tmp_path), {})
    assert len(data.pool) == 40 and len(data.val_samples) == 10 and data.class_names == NAMES
    from executor.protocol.dataset import read_dataset

    train, _ = read_dataset(str(tmp_path / "dataset" / "train-index.tsv"), data.val_index, NAMES, "ark:raw")
    sample = next(s for s in train.samples if len(s.boxes))
    label = tiny.parent / "train" / "labels" / (Path(sample.image).stem + ".txt")
    yolo = np.loadtxt(label, ndmin=2)
    w, h = sample.width, sample.height
    expected = np.stack([(yolo[:, 1] - yolo[:, 3] / 2) * w, (yolo[:, 2] - yolo[:, 4] / 2) * h,
                         (yolo[:, 1] + yolo[:, 3] / 2) * w, (yolo[:, 2] + yolo[:, 4] / 2) * h], 1)
    np.testing.assert_allclose(sample.boxes, np.clip(expected, 0, [w, h, w, h]), atol=1e-3)
    assert sample.classes.tolist() == yolo[:, 0].astype(int).tolist()


def test_index_folder_input_gives_the_same_pool(tiny, tmp_path):
    converted = sim_plan.prepare_data(str(tiny), str(tmp_path / "a"), {})
    folder = tmp_path / "a" / "dataset"  # train-index.tsv, val-index.tsv, names.txt
    again = sim_plan.prepare_data(str(folder), str(tmp_path / "b"), {})
    assert again.pool == converted.pool and again.class_names == NAMES
    assert len(again.val_samples) == len(converted.val_samples)
    (folder / "names.txt").unlink()
    with pytest.raises(ConfigError, match="class_names"):
        sim_plan.prepare_data(str(folder), str(tmp_path / "c"), {})
    assert sim_plan.prepare_data(str(folder), str(tmp_path / "c"), {"class_names": NAMES}).class_names == NAMES


def test_a_val_image_copied_into_the_pool_is_left_out(tiny, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(tiny.parent, root)
    twin = sorted((root / "valid" / "images").iterdir())[0]
    shutil.copy(twin, root / "train" / "images" / ("copy_" + twin.name))
    with caplog.at_level(logging.WARNING):
        data = sim_plan.prepare_data(str(root / "data.yaml"), str(tmp_path / "out"), {})
    assert len(data.pool) == 40 and list(data.left_out) == [f"train/images/copy_{twin.name}"]
    assert "byte-identical" in caplog.text


@pytest.mark.parametrize("case, error, needle", [
    ("val is the pool", DatasetError, "val split overlaps the pool"),
    ("no label files", DatasetError, "no YOLO label files"),
    ("empty labels", DatasetError, "has no labelled boxes"),
    ("bad class", DatasetError, "outside the data.yaml names"),
    ("no val key", DatasetError, "key 'val' is missing"),
    ("not data", ConfigError, "expected a data.yaml or a folder"),
])
def test_bad_data_is_a_clear_error(tiny, tmp_path, case, error, needle):
    root = tmp_path / "data"
    shutil.copytree(tiny.parent, root)
    spec = root / "data.yaml"
    if case == "val is the pool":
        write_yaml(root, val="train/images")
    elif case == "no label files":
        shutil.rmtree(root / "train" / "labels")
    elif case == "empty labels":
        for label in (root / "train" / "labels").iterdir():
            label.write_text("")
    elif case == "bad class":
        next((root / "train" / "labels").iterdir()).write_text("7 0.5 0.5 0.1 0.1\n")
    elif case == "no val key":
        spec.write_text("train: train/images\nnames: [a, b, c, d, e]\n")
    elif case == "not data":
        spec = root / "train" / "images" / sorted(os.listdir(root / "train" / "images"))[0]
    with pytest.raises(error, match=needle):
        Simulation(plan(spec, tmp_path / "out"), trainer=FakeTrainer(), progress=False)


@pytest.mark.parametrize("kw, error, needle", [
    ({"algorithms": ("random", "margin")}, ConfigError, "--algorithms: unknown algorithm 'margin'"),
    ({"algorithms": ("entropy:fancy",)}, ConfigError, "--algorithms 'entropy:fancy': config key 'selection'"),
    ({"algorithms": ("detections:diverse",)}, ConfigError, "the detections baseline has no selection modes"),
    ({"budget": None}, ConfigError, r"exactly one of --budget \(images per round\) and --budget-cost"),
    ({"budget_cost": 10.0}, ConfigError, "exactly one of --budget"),
    ({"budget": None, "budget_cost": 0}, ConfigError, "--budget-cost: 0 is not allowed"),
    ({"budget": None, "budget_cost": 10.0, "image_cost": 0}, ConfigError, "--image-cost: 0 is not allowed"),
    ({"budget": None, "budget_cost": 400.0}, ConfigError, "--budget-cost 400 cost at least 808, more than the pool"),
    ({"budget": 20}, ConfigError, "--budget 20 = 48 images, more than the pool of 40"),
    ({"algorithms": ("entropy[entropy_agregation=max]",)}, ConfigError,
     r"--algorithms 'entropy\[entropy_agregation=max\]': entropy_agregation=max: unknown key "
     r"'entropy_agregation' \(the keys are those of .*mining-template.yaml\); did you mean entropy_aggregation"),
    ({"algorithms": ("random", "entropy[entropy_aggregation=median]")}, ConfigError,
     r"--algorithms 'entropy\[entropy_aggregation=median\]': config key 'entropy_aggregation'"),
    ({"algorithms": ("entropy[seed=3]",)}, ConfigError,
     r"--algorithms 'entropy\[seed=3\]': 'seed' is not a key this arm"),
    ({"algorithms": ("entropy[epochs=3]",)}, ConfigError, "'epochs' is not a key this arm may set .*the mining tem"),
    ({"algorithms": ("detections[entropy_aggregation=max]",)}, ConfigError, "the infer template's"),
    ({"algorithms": ("entropy[entropy_aggregation=max",)}, ConfigError,
     r"expected NAME, NAME:SELECTION or NAME\[KEY=VALUE"),
    ({"initial": 0}, ConfigError, "--initial"),
    ({"config": {"seed": 3}}, ConfigError, "--set seed: set by the simulation; use --seeds"),
    ({"config": {"epochs": 0}}, ConfigError, "'epochs'"),
    ({"config": {"args_options": "mosiac=0.5"}}, ConfigError, "did you mean mosaic"),
    ({"weights": "/nonexistent/w.pt"}, ModelError, "--weights"),
])
def test_bad_plans_are_clear_errors(tiny, tmp_path, kw, error, needle):
    with pytest.raises(error, match=needle):  # (a regular expression)
        Simulation(plan(tiny, tmp_path / "out", **kw), trainer=FakeTrainer(), progress=False)


def test_out_must_be_new_empty_or_a_simulation(tiny, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files .notes.txt. and no simulation.json"):
        Simulation(plan(tiny, tmp_path / "mine"), trainer=FakeTrainer(), progress=False)
    assert (tmp_path / "mine" / "notes.txt").is_file()


def test_flags(tmp_path):
    parser = argparse.ArgumentParser()
    sim_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", "--data", "d.yaml", "--weights", "w.pt", "--initial", "5", "--budget", "3",
                              "--seeds", "2", "--epochs", "4", "--img-size", "320", "--batch", "8", "--set",
                              "lr0=0.005", "--set", "class_names=a,b", "--algorithms", "random,cald,random",
                              "--out", str(tmp_path)])
    p = sim_command.plan_from_args(args)
    assert p.seeds == (0, 1) and p.algorithms == ("random", "cald") and p.rounds == 3
    assert p.config == {"lr0": 0.005, "class_names": ["a", "b"], "epochs": 4, "img_size": 320,
                        "batch_size_per_gpu": 8}
    assert sim_plan.parse_seeds("0,7") == (0, 7)
    with pytest.raises(ConfigError, match=r"unknown key 'img_szie' \(the keys are those of the "
                       r"training, mining and infer templates in .*did you mean img_size \(or the flag --img-size\)"):
        sim_plan.parse_sets(["img_szie=3"])
    costly = parser.parse_args(["simulate", "--data", "d.yaml", "--weights", "w.pt", "--initial", "5", "--budget-cost",
                                "60", "--image-cost", "2", "--algorithms", "random,entropy[entropy_aggregation=max,"
                                "conf_thres=0.1]:diverse", "--out", str(tmp_path)])
    p = sim_command.plan_from_args(costly)
    assert (p.budget, p.budget_cost, p.image_cost) == (None, 60.0, 2.0)
    assert p.algorithms == ("random", "entropy[entropy_aggregation=max,conf_thres=0.1]:diverse")
    with pytest.raises(SystemExit):  # one budget per run
        parser.parse_args(["simulate", "--data", "d", "--weights", "w.pt", "--initial", "5", "--budget", "3",
                           "--budget-cost", "60", "--out", str(tmp_path)])
    args.set, args.algorithms = None, "nope"
    assert sim_command.run_cli(args) == 2  # a bad flag: a usage error


def test_model_and_imgsz_are_weights_and_img_size(tmp_path):
    parser = argparse.ArgumentParser()
    sim_command.add_parser(parser.add_subparsers(dest="command"))
    common = ["simulate", "--data", "d.yaml", "--initial", "5", "--budget", "3", "--out", str(tmp_path)]
    ultralytics = sim_command.plan_from_args(parser.parse_args([*common, "--model", "w.pt", "--imgsz", "320"]))
    ours = sim_command.plan_from_args(parser.parse_args([*common, "--weights", "w.pt", "--img-size", "320"]))
    assert ultralytics == ours and ours.weights == "w.pt" and ours.config == {"img_size": 320}


@pytest.mark.slow  # loads the COCO weights for their class names
def test_the_readme_example_is_a_valid_plan_with_highway_classes_named_as_in_coco(tmp_path):
    """The README's simulate command, parsed by start.py's parser (its ../shared is the shared folder beside the
    clone): a plan that passes the checks, whose class_names rename highway's motorbike to COCO's motorcycle
    (docs/simulation.md) and nothing else, so that every class is one of the COCO weights' classes."""
    import re
    import shlex

    from ultralytics import YOLO

    import start
    from executor.cli import commands as cli
    from executor.protocol.yaml_file import read_yaml_mapping

    readme = (Path(sim_command.__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    command = re.search(r"```bash\n(\.venv/bin/python start\.py simulate .*?)```", readme, re.S).group(1)
    words = shlex.split(command.replace("\\\n", " "))
    argv = [word.replace("../shared/", f"{SHARED}/") for word in words[2:]]
    argv[argv.index("--out") + 1] = str(tmp_path / "sim")
    plan = sim_command.plan_from_args(cli.build_parser(start.extra_commands()).parse_args(argv))
    plan.check()
    assert plan.weights == str(WEIGHTS) and plan.data == str(HIGHWAY / "data.yaml") and plan.seeds == (0, 1, 2)
    names = sim_plan.yaml_names(read_yaml_mapping(plan.data, "--data"), "--data")
    renamed = plan.config["class_names"]
    assert [(a, b) for a, b in zip(names, renamed) if a != b] == [("motorbike", "motorcycle")]
    assert len(renamed) == len(names) and set(renamed) <= set(YOLO(str(WEIGHTS)).names.values())


# ---------------------------------------------------------------- mechanics (stand-in trainer)

def test_rounds_grow_by_the_budget_without_repeats_and_seeds_decide_the_picks(tiny, tmp_path):
    _, summary = fake_run(tiny, tmp_path / "a", seeds=(0, 1))
    check_growth(tmp_path / "a")
    assert picks(tmp_path / "a", "random", 0) != picks(tmp_path / "a", "random", 1)
    assert picks(tmp_path / "a", "random", 0)[0] != picks(tmp_path / "a", "random", 1)[0]  # N0 too
    fake_run(tiny, tmp_path / "b", seeds=(1,))
    assert picks(tmp_path / "b", "random", 1) == picks(tmp_path / "a", "random", 1)
    assert summary["algorithms"]["random"]["last50"]["n"] == 2
    rows = (tmp_path / "a" / "simulation.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 and rows[0].startswith("algorithm,seed,round,labelled,boxes,cost,round_images")
    assert (tmp_path / "a" / "simulation.png").stat().st_size > 10000
    assert "| random | 2 |" in (tmp_path / "a" / "simulation.md").read_text()


def test_data_moved_to_another_folder_gives_the_same_picks(tiny, tmp_path):
    """N0 and the random mining of every round draw by each image's path relative to the data root."""
    moved = tmp_path / "elsewhere" / "deeper" / "tiny"
    shutil.copytree(tiny.parent, moved)
    fake_run(tiny, tmp_path / "here")
    fake_run(moved / tiny.name, tmp_path / "there")
    assert picks(tmp_path / "here", "random", 0) == picks(tmp_path / "there", "random", 0)


def test_detections_ties_are_broken_by_the_relative_path(tmp_path):
    names = [f"train/images/{i}.jpg" for i in range(6)]
    rankings = []
    for root in ("/data/here", "/mnt/moved/there"):
        keys = [f"{root}/{name}" for name in names]
        found = [Detected(key, [{}] * (i % 2), 640, 480) for i, key in enumerate(keys)]
        ranked = sim_rounds.count_ranking(found, keys, names, 4)
        rankings.append([(os.path.relpath(key, root), score) for key, score in ranked])
        assert sorted(int(score) for _, score in ranked) == [0, 0, 0, 1, 1, 1]
    assert rankings[0] == rankings[1]


def test_a_killed_run_resumes_to_the_same_files(tiny, tmp_path):
    fake_run(tiny, tmp_path / "whole", seeds=(0, 1))

    def kill(record):
        if record["seed"] == 0 and record["round"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fake_run(tiny, tmp_path / "killed", after_round=kill, seeds=(0, 1))
    kept = state(tmp_path / "killed")
    assert [(r["seed"], len(r["rounds"])) for r in kept["runs"]] == [(0, 2)]  # seed 0: rounds 0 and 1
    sim, _ = fake_run(tiny, tmp_path / "killed", seeds=(0, 1))
    assert len(sim.trainer.calls) == 1 + 3  # seed 0 round 2, seed 1 rounds 0-2: nothing finished is redone
    for name in ("simulation.json", "simulation.csv", "simulation.md"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text(), name


def test_a_rerun_may_add_rounds_but_not_change_the_plan(tiny, tmp_path):
    fake_run(tiny, tmp_path / "out", rounds=1)
    sim, _ = fake_run(tiny, tmp_path / "out", rounds=2)
    assert len(sim.trainer.calls) == 1
    check_growth(tmp_path / "out")
    with pytest.raises(ConfigError, match="another plan .*budget"):
        fake_run(tiny, tmp_path / "out", budget=4)
    saved = state(tmp_path / "out")
    del saved["identity"]["round_model"]  # format 2: Ultralytics' best epoch was each round's model
    (tmp_path / "out" / "simulation.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"another plan \(round_model differ"):
        fake_run(tiny, tmp_path / "out", rounds=2)


def test_a_cost_budget_reveals_until_the_cost_is_reached_the_crossing_image_included(tiny, tmp_path):
    budget, per_image = 25.0, 2.0
    sim, summary = fake_run(tiny, tmp_path / "cost", budget=None, budget_cost=budget, image_cost=per_image,
                            seeds=(0, 1))
    boxes = {sim.data.rel(p): len(s.boxes) for p, s in sim.data.pool_samples.items()}
    for run in state(tmp_path / "cost")["runs"]:
        rounds = run["rounds"]
        assert [r["round_images"] for r in rounds][0] == 8 and len(rounds) == 3
        for before, r in zip([None, *rounds], rounds):
            costs = [boxes[p] + per_image for p in r["added"]]
            assert r["round_boxes"] == sum(boxes[p] for p in r["added"]) and r["round_cost"] == sum(costs)
            assert r["cost"] == r["boxes"] + per_image * r["labelled"]
            if before is None:  # round 0: N0 images at random, nothing pre-labelled them
                assert r["correction"] is None
                continue
            assert r["cost"] - before["cost"] >= budget  # every round spends at least C ...
            assert sum(costs[:-1]) < budget              # ... and only its last image crosses it
            assert r["labelled"] == before["labelled"] + len(r["added"])
            # the stand-in pre-labels miss the first box of every image that has one, and add nothing
            assert r["correction"] == {"fp": 0, "misses": sum(c > per_image for c in costs),
                                       "cost": sum(c > per_image for c in costs)}
    rows = list(__import__("csv").DictReader((tmp_path / "cost" / "simulation.csv").open()))
    assert rows[0]["correction_cost"] == "" and rows[1]["correction_misses"] != ""
    md = (tmp_path / "cost" / "simulation.md").read_text()
    assert "cost 25 per round" in md and "model selection on the reported split: none (the last epoch's" in md
    assert summary["algorithms"]["random"]["savings"]["n"] == 2


def test_take_by_cost_includes_the_crossing_image_and_refuses_a_short_pool():
    costs = {"a": 3.0, "b": 5.0, "c": 1.0, "d": 4.0}
    assert sim_cost.take_by_cost("abcd", costs, 8) == ["a", "b"]        # reached exactly: stop
    assert sim_cost.take_by_cost("abcd", costs, 7) == ["a", "b"]        # b crosses 7: included
    assert sim_cost.take_by_cost("abcd", costs, 8.5) == ["a", "b", "c"]
    assert sim_cost.take_by_cost("dcba", costs, 0.5) == ["d"]
    with pytest.raises(RuntimeError, match="the pool ran out: its 4 unlabelled images cost 13"):
        sim_cost.take_by_cost("abcd", costs, 14)


def test_every_arm_of_a_seed_starts_from_the_same_round_0_model(tiny, tmp_path):
    arms = ("random", "entropy", "entropy[entropy_aggregation=max]", "detections[conf_thres=0.5]")
    miner = FakeMiner()
    sim, _ = fake_run(tiny, tmp_path / "out", miner=miner, algorithms=arms, seeds=(0, 1))
    out = tmp_path / "out"
    for seed in (0, 1):
        first = [c for c in miner.calls if c["seed"] == seed and c["folder"].endswith("round_1")]
        assert sorted(c["folder"].split(os.sep)[-2] for c in first) == sorted(
            ["random", "entropy", "entropy-entropy_aggregation=max", "detections-conf_thres=0.5"])
        round0 = (out / "runs" / f"seed_{seed}" / "initial" / "round_0" / "models" / "best" / "best.pt").read_text()
        assert {c["weights"] for c in first} == {round0}  # every arm mined with the one round-0 model
        assert f"seed {seed} trained on 8 images" in round0
        zero = [next(r for r in state(out)["runs"] if r["algorithm"] == a and r["seed"] == seed)["rounds"][0]
                for a in arms]
        assert all(z == zero[0] for z in zero)  # one round-0 record: same N0, same weights file, same mAP
        later = {c["weights"] for c in miner.calls if c["seed"] == seed and c["folder"].endswith("round_2")}
        assert len(later) == len(arms) and round0 not in later  # round 2 mines with each arm's own round-1 model
    assert sum(call[0].endswith("round_0") for call in sim.trainer.calls) == 2  # one round-0 training per seed


def test_round_1_arms_mine_through_one_shared_forward_cache(tiny, tmp_path):
    miner = FakeMiner()
    sim, _ = fake_run(tiny, tmp_path / "out", miner=miner, algorithms=("random", "entropy", "detections"))
    first = [c["models"] for c in miner.calls if c["folder"].endswith("round_1")]
    assert len(first) == 3 and all(m is not None and m.load == sim.shared.load for m in first)
    assert all(c["models"] is None for c in miner.calls if c["folder"].endswith("round_2"))
    assert sim.shared.weights is None  # nothing kept once the arms mine with models of their own


def test_round_1_arms_scored_from_the_same_detections_run_one_forward(tiny, tmp_path):
    """The real mining and infer tasks with a fake detector: entropy (two aggregations) and the detections baseline
    mining one model's pool forward it once between them, and rank exactly as each run alone does."""
    from executor.pipeline.passes import Models
    from tests.pipeline.fake_detector import pixel_load

    loaded = []

    def load(*args, **kwargs):
        loaded.append(pixel_load(*args, **kwargs))
        return loaded[-1]

    data = sim_plan.prepare_data(str(tiny), str(tmp_path / "out"), {})
    weights = tmp_path / "w.pt"
    weights.write_text("fake")
    shared = sim_rounds.SharedForwards(load=load)
    arms = {"entropy": ("entropy", {}), "entropy-max": ("entropy", {"entropy_aggregation": "max"}),
            "detections": ("detections", {"conf_thres": 0.5})}
    config = {"img_size": 160, "batch_size_per_gpu": 8, "report": False}

    def rank(folder, models):
        return {name: sim_rounds.mine(algorithm, str(weights), data.pool, str(tmp_path / folder / name), data,
                                      {**config, **params}, 0, lambda f: None, models=models(name))
                for name, (algorithm, params) in arms.items()}

    together = rank("shared", lambda name: shared.models(str(weights)))
    assert sum(d.forwards for d in loaded) == len(data.pool) and len(loaded) == 3
    loaded.clear()
    alone = rank("alone", lambda name: Models(load=load))
    assert sum(d.forwards for d in loaded) == 3 * len(data.pool)
    assert together == alone and together["entropy"] != together["entropy-max"]
    shared.models(str(tmp_path / "other.pt"))
    assert shared.forwards == {}


def test_round_training_is_one_evaluation_without_ultralytics_validation_or_onnx(tiny, tmp_path, monkeypatch):
    """QuarryTrainer asks run_training for its val predictions and reuses them (no second evaluation) when the
    training evaluates on the whole val split; on fewer images (--train-val) it evaluates the whole split itself."""
    from executor.engine.evaluation import Metrics
    from executor.pipeline import training

    data = sim_plan.prepare_data(str(tiny), str(tmp_path / "out"), {})
    calls, evaluated = [], []

    def run_training(job, settings, progress, **kwargs):
        calls.append((job.val_index, kwargs))
        weights = Path(job.models_out) / "best" / "best.pt"
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.write_text("weights")
        if kwargs["val_predictions"] is not None:
            kwargs["val_predictions"].extend(ground_truth_detections(data.val_samples))
        return Metrics(0.7, 0.8, 0.5, 1, 2, 3)

    def evaluate(self, weights, progress, keep=None):
        evaluated.append(len(self.samples))
        keep.extend(ground_truth_detections(self.samples, drop_first=True))
        return Metrics(0.6, 0.7, 0.4, 1, 2, 3)

    monkeypatch.setattr(training, "run_training", run_training)
    monkeypatch.setattr(training.Evaluator, "__call__", evaluate)
    images = data.pool[:8]
    whole = sim_rounds.QuarryTrainer(data, {"epochs": 1}, str(WEIGHTS))(str(tmp_path / "a"), images, 0, print)
    val_index, kwargs = calls[-1]
    assert val_index == data.val_index and (kwargs["ultralytics_val"], kwargs["onnx"]) == (False, False)
    assert len(kwargs["val_predictions"]) == len(data.val_samples)
    assert evaluated == [] and (whole.mAP50, whole.mAP50_95) == (0.7, 0.5)
    assert sim_bootstrap.mean_ap(sim_bootstrap.load(whole.matches)) == (1.0, 1.0)  # the predictions handed back
    assert not (tmp_path / "a" / "work").exists()
    subset = str(tmp_path / "val-3.tsv")
    Path(subset).write_text("".join(Path(data.val_index).read_text().splitlines(True)[:3]))
    part = sim_rounds.QuarryTrainer(data, {"epochs": 1}, str(WEIGHTS), subset)(str(tmp_path / "b"), images, 0, print)
    assert calls[-1][0] == subset and calls[-1][1]["val_predictions"] is None
    assert evaluated == [len(data.val_samples)] and part.mAP50 == 0.6
    assert sim_bootstrap.mean_ap(sim_bootstrap.load(part.matches))[0] < 1.0  # the second evaluation's


def test_per_arm_parameters_reach_the_miner_and_only_their_arm(tiny, tmp_path):
    spec = "random,entropy[entropy_aggregation=max,conf_thres=0.1]:diverse,entropy:diverse"
    arms = sim_plan.split_arms(spec)
    assert arms == ("random", "entropy[entropy_aggregation=max,conf_thres=0.1]:diverse", "entropy:diverse")
    arm = sim_plan.parse_arm(arms[1])
    assert (arm.name, dict(arm.params)) == ("entropy", {"entropy_aggregation": "max", "conf_thres": 0.1,
                                                        "selection": "diverse"})
    miner = FakeMiner()
    fake_run(tiny, tmp_path / "out", miner=miner, algorithms=arms, rounds=1, config={"epochs": 1, "conf_thres": 0.3})
    given = {c["folder"].split(os.sep)[-2]: c for c in miner.calls}
    assert set(given) == {"random", "entropy-entropy_aggregation=max-conf_thres=0.1-diverse", "entropy-diverse"}
    special, plain = given["entropy-entropy_aggregation=max-conf_thres=0.1-diverse"], given["entropy-diverse"]
    assert special["algorithm"] == plain["algorithm"] == "entropy"
    assert special["config"]["entropy_aggregation"] == "max" and special["config"]["conf_thres"] == 0.1
    assert "entropy_aggregation" not in plain["config"] and plain["config"]["conf_thres"] == 0.3
    assert plain["config"]["selection"] == special["config"]["selection"] == "diverse"
    assert "selection" not in given["random"]["config"]
    assert "| entropy[entropy_aggregation=max,conf_thres=0.1]:diverse | 1 |" in (tmp_path / "out" /
                                                                                "simulation.md").read_text()


def test_equal_cost_gap_and_label_savings_on_hand_made_curves():
    # a: 10 → 0.3, 20 → 0.5, 30 → 0.5; b: 10 → 0.3, 25 → 0.4, 40 → 0.7 (0.5 at 30). a − b on [10, 30]:
    # 0 at 10, 0.5 − 0.3667 at 20, 0.1 at 25, 0 at 30: area 0.6667 + 0.5833 + 0.25 = 1.5 over a width of 20
    assert sim_compare.gap([10, 20, 30], [0.3, 0.5, 0.5], [10, 25, 40], [0.3, 0.4, 0.7]) == pytest.approx(0.075)
    assert sim_compare.gap([10, 20], [0.5, 0.6], [10, 20], [0.4, 0.5]) == pytest.approx(0.1)
    assert sim_compare.gap([10, 20], [0.5, 0.6], [20, 30], [0.4, 0.5]) == pytest.approx(0.2)  # one common point
    assert sim_compare.gap([10, 20], [0.5, 0.6], [25, 30], [0.4, 0.5]) is None
    assert sim_compare.cost_to_reach([10, 20, 30], [0.3, 0.5, 0.6], 0.55) == pytest.approx(25)
    assert sim_compare.cost_to_reach([10, 20, 30], [0.6, 0.5, 0.6], 0.55) == 10   # already at round 0
    assert sim_compare.cost_to_reach([10, 20, 30], [0.3, 0.5, 0.54], 0.55) is None  # not reached: no extrapolation
    assert sim_compare.cost_share([10, 20, 30], [0.3, 0.5, 0.6], [10, 30, 50], [0.3, 0.4, 0.55]) == pytest.approx(0.5)


def test_summary_at_equal_cost_with_not_reached():
    def rounds(costs, maps):
        return [{"round": k, "labelled": 10 * (k + 1), "cost": c, "boxes": c - 10 * (k + 1), "mAP50": m,
                 "mAP50_95": m / 2, "mine_s": 1.0, "train_s": 2.0, "round_images": 10, "round_boxes": 20,
                 "correction": None if k == 0 else {"fp": 1, "misses": 4, "cost": 5}}
                for k, (c, m) in enumerate(zip(costs, maps))]

    runs = [{"algorithm": "random", "seed": 0, "rounds": rounds([30, 60, 90], [0.3, 0.4, 0.5])},
            {"algorithm": "random", "seed": 1, "rounds": rounds([30, 60, 90], [0.3, 0.45, 0.5])},
            # crowded picks: more mAP per image but each round costs more; seed 1 never reaches 0.5
            {"algorithm": "crowd", "seed": 0, "rounds": rounds([30, 90, 150], [0.3, 0.5, 0.6])},
            {"algorithm": "crowd", "seed": 1, "rounds": rounds([30, 90, 150], [0.3, 0.35, 0.45])}]
    summary = sim_summary.summarize(runs, rounds=2)
    crowd = summary["algorithms"]["crowd"]
    # seed 0: crowd − random on [30, 90]: 0 at 30, (0.4 − 0.4) at 60, (0.5 − 0.5) at 90 → 0
    # seed 1: 0 at 30, 0.325 − 0.45 at 60, 0.35 − 0.5 at 90:
    # (−0.125 / 2 · 30 + (−0.125 − 0.15) / 2 · 30) / 60 = −0.1
    assert crowd["vs_random_cost50"]["mean"] == pytest.approx(-0.05) and crowd["vs_random_cost50"]["wins"] == 0
    assert crowd["vs_random_last50"]["mean"] == pytest.approx(0.025)  # ahead at equal images, not at equal cost
    assert crowd["savings"]["per_seed"] == {0: pytest.approx(1.0), 1: None}
    assert summary["algorithms"]["random"]["savings"]["per_seed"] == {0: 1.0, 1: 1.0}
    text = sim_summary.table(summary)
    assert "| crowd | 150 [150, 150] | 2.0 [2.0, 2.0] | -0.050 [-0.100, +0.000] (0/2 seeds > 0) |" in text
    assert "| 1.00 (reached 1/2 seeds) | 0.25 |" in text  # 5 fixes per round of 20 boxes
    one = sim_summary.summarize([r for r in runs if r["seed"] == 1], rounds=2)
    assert "| not reached |" in sim_summary.table(one)


def synthetic_val(count=60, seed=1):
    """Random boxes of 3 classes and noisy detections of them (some of the wrong class, some of nothing)."""
    from executor.shared import Sample

    rng = np.random.default_rng(seed)
    samples, found = [], []
    for i in range(count):
        k, m = rng.integers(0, 6), rng.integers(0, 8)
        corner = rng.uniform(0, 300, (k, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(10, 80, (k, 2))], 1).astype(np.float32)
        classes = rng.integers(0, 3, k)
        samples.append(Sample(f"/val/{i}.jpg", 400, 400, "jpg", boxes, classes))
        source = rng.integers(0, max(k, 1), m)
        moved = (boxes[source] if k else np.zeros((m, 4), np.float32)) + rng.normal(0, 8, (m, 4))
        moved = np.concatenate([np.minimum(moved[:, :2], moved[:, 2:]), np.maximum(moved[:, :2], moved[:, 2:]) + 1], 1)
        cls = np.where(rng.random(m) < 0.8, classes[source] if k else 0, rng.integers(0, 3, m)).astype(np.int64)
        conf = rng.uniform(0.01, 1, m).astype(np.float32)
        probs = np.zeros((m, 3), np.float32)
        probs[np.arange(m), cls] = conf
        found.append(Detections(moved.astype(np.float32), conf, cls, probs))
    return samples, found


def test_bootstrap_tables_give_pycocotools_map_for_any_draw(tmp_path):
    from executor.engine.evaluation import coco_metrics

    samples, found = synthetic_val()
    sim_bootstrap.save(str(tmp_path / "m.npz"), sim_bootstrap.match_table(samples, found, 3))
    table = sim_bootstrap.load(str(tmp_path / "m.npz"))
    ap50, _, ap = coco_metrics(samples, found, 3)
    assert sim_bootstrap.mean_ap(table) == (pytest.approx(ap50, abs=1e-9), pytest.approx(ap, abs=1e-9))
    counts = np.bincount(np.random.default_rng(3).integers(0, 60, 60), minlength=60)  # one draw: repeats, gaps
    drawn = np.repeat(np.arange(60), counts)
    ap50, _, ap = coco_metrics([samples[i] for i in drawn], [found[i] for i in drawn], 3)
    assert sim_bootstrap.mean_ap(table, counts) == (pytest.approx(ap50, abs=1e-9), pytest.approx(ap, abs=1e-9))


def test_bootstrap_intervals_are_paired(tmp_path):
    samples, noisy = synthetic_val()
    perfect = ground_truth_detections(samples)
    tables = {}
    for name, found in (("noisy", noisy), ("perfect", perfect)):
        sim_bootstrap.save(str(tmp_path / f"{name}.npz"), sim_bootstrap.match_table(samples, found, 3))
        tables[name] = sim_bootstrap.load(str(tmp_path / f"{name}.npz"))
    costs = [10, 20, 30]
    curves = {"random": {0: (costs, [tables["noisy"]] * 3)},
              "same": {0: (costs, [tables["noisy"]] * 3)},            # the same models: Δ 0 in every draw
              "better": {0: (costs, [tables["noisy"], tables["perfect"], tables["perfect"]])}}
    found = sim_bootstrap.intervals(curves, "random", draws=50)
    assert found["same"] == {"cost50": [0.0, 0.0], "cost50_95": [0.0, 0.0]}
    low, high = found["better"]["cost50"]
    assert 0 < low < high < 1


def test_the_report_carries_the_bootstrap_intervals(tiny, tmp_path):
    kw = dict(algorithms=("random", "entropy"), seeds=(0, 1), bootstrap=40)
    sim = Simulation(plan(tiny, tmp_path / "out", **kw), trainer=FakeTrainer(), miner=FakeMiner(), progress=False,
                     clock=lambda: 0.0, reference=False, prelabeller=all_but_first_box)
    sim.trainer.val = sim.data.val_samples
    summary = sim.run()
    interval = summary["algorithms"]["entropy"]["vs_random_cost50"]["interval"]
    assert interval[0] <= summary["algorithms"]["entropy"]["vs_random_cost50"]["mean"] <= interval[1]
    saved = state(tmp_path / "out")
    assert saved["summary"]["algorithms"]["entropy"]["vs_random_cost50"]["interval"] == interval
    assert all(r["val_matches"].endswith("val-matches.npz") for run in saved["runs"] for r in run["rounds"])
    assert "CI [" in (tmp_path / "out" / "simulation.md").read_text()
    rows = list(__import__("csv").DictReader((tmp_path / "out" / "simulation-summary.csv").open()))
    assert [r["algorithm"] for r in rows] == ["random", "entropy"]
    assert float(rows[1]["d_mAP50_equal_cost_ci_low"]) == pytest.approx(interval[0])


def test_summary_numbers():
    assert sim_summary.area([0, 10, 20], [0.2, 0.4, 0.4]) == pytest.approx(0.35)
    runs = []
    for algorithm, offset in (("random", 0.0), ("entropy", 0.05)):
        for seed, noise in ((0, 0.0), (1, -0.08)):
            rounds = [{"labelled": n, "mAP50": 0.3 + k * 0.1 + (offset + noise) * (k > 0), "mAP50_95": 0.1,
                       "mine_s": 2.0, "train_s": 5.0, "cost": 3 * n, "round_images": 10, "round_boxes": 20,
                       "correction": None} for k, n in enumerate((10, 20, 30))]
            runs.append({"algorithm": algorithm, "seed": seed, "rounds": rounds})
    summary = sim_summary.summarize(runs, rounds=2)
    entropy = summary["algorithms"]["entropy"]
    assert entropy["vs_random_last50"]["mean"] == pytest.approx(0.05)
    assert entropy["vs_random_last50"]["wins"] == 2 and entropy["last50"]["n"] == 2
    assert entropy["vs_random_auc50"]["mean"] == pytest.approx(0.05 * 0.75)
    text = sim_summary.table(summary)
    assert "| entropy | 2 | 0.510 [0.470, 0.550] |" in text and "+0.050 [+0.050, +0.050] (2/2 seeds > 0)" in text


# ---------------------------------------------------------------- the real loop (Quarry's training and mining)

@pytest.mark.slow
def test_tiny_real_plan_random_entropy_detections(tiny, tmp_path):
    """40-image pool, 2 rounds of 8, 1 epoch at 160, 1 seed: 9 trainings, killed after the first round 1."""
    kw = dict(algorithms=("random", "entropy", "entropy:diverse", "detections"),  # COCO's name for motorbike:
              config={"epochs": 1, "img_size": 160, "class_names": ["bus", "car", "motorcycle", "person", "truck"]})
    out = tmp_path / "real"

    def kill(record):
        if record["round"] == 1:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        Simulation(plan(tiny, out, **kw), after_round=kill, progress=False).run()
    before = state(out)
    finished = {(r["algorithm"], rr["round"]): rr for r in before["runs"] for rr in r["rounds"]}
    assert sorted(finished) == [("detections", 0), ("entropy", 0), ("entropy:diverse", 0), ("random", 0),
                                ("random", 1)]
    weights = out / finished[("random", 1)]["weights"]
    stamp = weights.stat().st_mtime_ns

    summary = Simulation(plan(tiny, out, **kw), progress=False).run()
    after = state(out)
    check_growth(out)
    for run in after["runs"]:  # finished rounds are kept as they were, not trained again
        for record in run["rounds"]:
            if (run["algorithm"], record["round"]) in finished:
                assert record == finished[(run["algorithm"], record["round"])]
    assert weights.stat().st_mtime_ns == stamp
    n0 = {tuple(picks(out, a, 0)[0]) for a in kw["algorithms"]}
    assert len(n0) == 1  # one N0 (and one round-0 model) for every algorithm of the seed
    for run in after["runs"]:
        for record in run["rounds"]:
            assert 0.0 < record["mAP50_95"] <= record["mAP50"] <= 1.0 and record["train_s"] > 0
    assert set(summary["algorithms"]) == set(kw["algorithms"])

    # the same seed gives the same picks: random without a model (a stand-in trainer), entropy re-mined from
    # the recorded round-0 model
    fake_run(tiny, tmp_path / "fake", config=kw["config"])
    assert picks(tmp_path / "fake", "random", 0) == picks(out, "random", 0)
    sim = Simulation(plan(tiny, out, **kw), progress=False)
    round0 = next(r for r in after["runs"] if r["algorithm"] == "entropy")["rounds"][0]
    candidates = [p for p in sim.data.pool if sim.data.rel(p) not in set(round0["added"])]
    again = sim_rounds.mine("entropy", str(out / round0["weights"]), candidates, str(tmp_path / "remine"), sim.data,
                          sim.config, 0, lambda f: None)
    assert [sim.data.rel(p) for p in again[:8]] == picks(out, "entropy", 0)[1]
    md = (out / "simulation.md").read_text()
    assert "| detections | 1 |" in md and (out / "simulation.png").is_file()
    start = after["start_weights"]  # the COCO model before any training, its classes matched by name
    assert start["classes"] == ["bus", "car", "motorcycle", "person", "truck"] and 0 < start["mAP50"] <= 1
    assert "start weights without any training" in md


def test_the_regime_says_whether_round_0_beats_the_start_weights():
    def summary(*first):
        return {"algorithms": {"random": {"seeds": {s: {"mAP50": [m, m + 0.1]} for s, m in enumerate(first)}}}}

    start = {"mAP50": 0.649}
    assert sim_summary.regime(summary(0.68, 0.66), start) == "fine-tuning"
    assert sim_summary.regime(summary(0.68, 0.60), start) == "forgetting"  # the mean over seeds decides
    assert sim_summary.regime(summary(0.68), None) == "cold start"
    assert sim_summary.regime_line(summary(0.68), None).startswith("Regime: cold start.")
    line = sim_summary.regime_line(summary(0.45), start)
    assert line.startswith("**Regime: forgetting.**") and "0.450" in line and "0.649" in line


def test_errors_arms_fit_on_the_test_split_never_on_val(tiny, tmp_path, monkeypatch, caplog):
    """The round-0 model's error model is fitted once, on data.yaml's test split (never the val split whose mAP is
    reported), before the first errors arm mines; a prior arm fits nothing; without a test split the arms mine
    with the prior and the log says so."""
    from executor.pipeline import error_fit

    root = tiny.parent
    copy_split("test", root / "test", 6)
    with_test = root / "with-test.yaml"
    with_test.write_text(tiny.read_text() + "test: test/images\n")
    fits = []

    def fit_weights(weights, samples, source, config, progress):
        fits.append((weights, sorted(os.path.basename(s.image) for s in samples), source))
        Path(weights).with_name("best.errors.json").write_text("{}")  # (the miner is a stand-in: never read)

    monkeypatch.setattr(error_fit, "fit_weights", fit_weights)
    arms = ("random", "errors[errors_prior=true]", "errors", "errors[errors_per_cost=true]")
    fake_run(with_test, tmp_path / "out", miner=FakeMiner(), algorithms=arms, rounds=1)
    test_images = sorted(os.listdir(root / "test" / "images"))
    assert [(Path(w).parts[-5:-3], images, source) for w, images, source in fits] == [
        (("initial", "round_0"), test_images, f"{with_test} key 'test'")]
    val_images = set(os.listdir(root / "valid" / "images"))
    assert not val_images & set(test_images)

    fits.clear()
    caplog.set_level("WARNING", "executor.simulate")
    fake_run(tiny, tmp_path / "no-test", miner=FakeMiner(), algorithms=("random", "errors"), rounds=1)
    assert fits == [] and any("no fit split" in r.getMessage() for r in caplog.records)
