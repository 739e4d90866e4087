"""The local command line: Ultralytics-style names, checks before the first image, outputs for labelling
tools, make-in, interrupts. Usage errors run in-process (no model is loaded before the checks)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from executor import __version__, cli
from executor.errors import DatasetError
from executor.tasks import Job, result_names
from tests.platform import REPO, WEIGHTS, coco_images, run_start

COCO8 = REPO.parent / "shared" / "data" / "coco8"


def parse(*argv):
    return cli.build_parser().parse_args([str(a) for a in argv])


def run_cli(capsys, *argv):
    status = cli.run(parse(*argv))
    return status, capsys.readouterr().err


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    for sub, image in zip(("a", "b", "b"), coco_images(3)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / sub / image.name)
    shutil.copy(coco_images(1)[0], folder / "b" / "same.jpg")
    shutil.copy(coco_images(1)[0], folder / "a" / "same.jpg")  # the same basename in two folders
    return folder


def test_ultralytics_names_and_global_flags_anywhere():
    args = parse("mine", "--model", WEIGHTS, "--source", "x", "--out", "r.tsv", "--imgsz", 320, "--conf", 0.3,
                 "--iou", 0.5, "--device", "cuda:0", "--batch", 4, "-v", "--threads", 1, "--nproc", 2)
    config = cli.config_of(args)
    assert {k: config[k] for k in ("img_size", "conf_thres", "iou_thres", "gpu_id", "batch_size_per_gpu",
                                   "cpu_threads", "cpu_processes")} == {
        "img_size": 320, "conf_thres": 0.3, "iou_thres": 0.5, "gpu_id": "0", "batch_size_per_gpu": 4,
        "cpu_threads": 1, "cpu_processes": 2}
    assert args.verbose and parse("-v", "infer", "--weights", WEIGHTS, "--images", "x", "--out", "o").verbose
    assert cli.config_of(parse("infer", "--model", WEIGHTS, "--source", "x", "--out", "o", "--device", "cpu"))[
        "gpu_id"] == ""
    assert cli.config_of(parse("infer", "--model", WEIGHTS, "--source", "x", "--out", "o", "--device", "0,1"))[
        "gpu_id"] == "0,1"


def test_version_anywhere():
    for argv in (["--version"], ["mine", "--version"]):
        done = run_start(*argv)
        assert done.returncode == 0 and done.stdout.strip() == f"quarry {__version__}"


@pytest.mark.parametrize("extra, needle", [
    ([], "--model is required"),
    (["--model", "yolov8n.pt"], "weights are never downloaded"),
    (["--model", WEIGHTS, "--topk", "-3"], "--topk -3: choose a number from 1 to 5"),
    (["--model", WEIGHTS, "--topk", "6"], "--topk 6: choose a number from 1 to 5"),
    (["--model", WEIGHTS, "--select-dir", "sel"], "--select-dir needs --topk"),
    (["--model", WEIGHTS, "--link"], "--link needs --select-dir"),
    (["--model", WEIGHTS, "--exist-ok"], "--exist-ok needs --select-dir"),
    (["--model", WEIGHTS, "--conf", "3"], "--conf: 3.0 is not allowed"),
    (["--model", WEIGHTS, "--set", "entropy_aggregation=median"], "'entropy_aggregation'"),
    (["--model", WEIGHTS, "--set", "novalue"], "--set 'novalue': expected KEY=VALUE"),
])
def test_usage_errors_name_the_flag_and_exit_2(capsys, images, tmp_path, extra, needle):
    status, err = run_cli(capsys, "mine", "--source", images, "--out", tmp_path / "r.tsv", *extra)
    assert status == 2 and needle in err, err
    assert "code" not in err and not (tmp_path / "r.tsv").exists()


def test_paths_are_checked_before_any_image(capsys, images, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["mine", "--model", WEIGHTS, "--out", tmp_path / "r.tsv"]
    assert "no such file or folder" in run_cli(capsys, *base, "--source", tmp_path / "nothing")[1]
    assert "the folder holds no images" in run_cli(capsys, *base, "--source", empty)[1]
    status, err = run_cli(capsys, "mine", "--model", WEIGHTS, "--source", images, "--out", tmp_path)
    assert status == 2 and "is a folder; give a file name" in err
    status, err = run_cli(capsys, "mine", "--model", WEIGHTS, "--source", images, "--out", tmp_path / "no" / "r.tsv")
    assert status == 2 and "does not exist" in err
    (empty / "old.jpg").write_bytes(b"x")
    status, err = run_cli(capsys, *base, "--source", images, "--topk", 2, "--select-dir", empty)
    assert status == 2 and "is not empty" in err and "--exist-ok" in err


def test_random_needs_no_model_and_warns_when_given_one(capsys, caplog, images, tmp_path):
    status = cli.run(parse("mine", "--algorithm", "random", "--model", WEIGHTS, "--source", images,
                           "--out", tmp_path / "r.tsv"))
    assert status == 0 and "is not used" in caplog.text
    assert len((tmp_path / "r.tsv").read_text().splitlines()) == 5


@pytest.mark.parametrize("algorithm", ["random", pytest.param("cald", marks=pytest.mark.slow)])
def test_a_pool_moved_to_another_folder_ranks_the_same(images, tmp_path, algorithm):
    """Random and CALD draw per image by its path relative to --source: copies of one pool at two folders give the
    same ranking and the same scores, their lines differing only by the folder (and the Python API's mine names a
    folder's images as the CLI does)."""
    from executor import api

    rankings = []
    for folder in (tmp_path / "here" / "pool", tmp_path / "moved" / "deeper" / "pool"):
        shutil.copytree(images, folder)
        out = folder.parent / "ranked.tsv"
        assert cli.run(parse("mine", "--algorithm", algorithm, "--model", WEIGHTS, "--source", folder, "--out", out,
                             "--imgsz", 320, "--seed", 3, "--no-report")) == 0
        lines = [line.split("\t") for line in out.read_text().splitlines()]
        rankings.append([(os.path.relpath(path, folder), float(score)) for path, score in lines])
        if algorithm == "random":
            ranked = api.mine(str(folder), algorithm="random", seed=3, report=False)
            assert [(os.path.relpath(path, folder), score) for path, score in ranked] == rankings[-1]
    assert rankings[0] == rankings[1] and len(rankings[0]) == 5
    assert len({score for _, score in rankings[0]}) > 1  # the scores tell the images apart


def test_names_are_relative_to_the_source_and_platform_basenames_must_be_unique(images):
    paths, names = cli.list_images(str(images))
    assert sorted(names) == sorted(os.path.relpath(p, images) for p in paths) and len(set(names)) == 5
    assert {"a/same.jpg", "b/same.jpg"} <= set(names)
    with pytest.raises(DatasetError, match="share the name 'same.jpg'"):
        result_names(Job(candidates=paths))
    assert result_names(Job(candidates=paths, names=names))[paths[0]] == names[0]


@pytest.mark.slow
def test_mine_with_selection_and_detections_of_the_same_pass(images, tmp_path):
    out, sel, coco = tmp_path / "ranked.tsv", tmp_path / "selected", tmp_path / "pre-labels.json"
    done = run_start("mine", "--model", WEIGHTS, "--source", images, "--out", out, "--imgsz", 320, "--topk", 2,
                     "--select-dir", sel, "--link", "--infer-out", coco, "--format", "coco")
    assert done.returncode == 0, done.stderr
    ranked = [line.split("\t")[0] for line in out.read_text().splitlines()]
    assert len(ranked) == 5 and (tmp_path / "ranked.top2.txt").read_text().split() == ranked[:2]
    assert sorted(os.listdir(sel)) == [f"00001_{os.path.basename(ranked[0])}", f"00002_{os.path.basename(ranked[1])}"]
    assert all(os.path.islink(sel / name) for name in os.listdir(sel))
    data = json.loads(coco.read_text())
    assert sorted(im["file_name"] for im in data["images"]) == sorted(cli.list_images(str(images))[1])
    assert all(im["width"] > 0 for im in data["images"]) and data["annotations"]
    assert {a["category_id"] for a in data["annotations"]} <= {c["id"] for c in data["categories"]}
    assert "mining + infer of 5 images" in done.stdout + done.stderr
    assert not (tmp_path / "ranked.tsv.shards").exists()


@pytest.mark.slow
def test_infer_formats_keep_every_image(images, tmp_path):
    ymir, yolo = tmp_path / "det.json", tmp_path / "labels"
    assert run_start("infer", "--model", WEIGHTS, "--source", images, "--out", ymir, "--imgsz", 320).returncode == 0
    detection = json.loads(ymir.read_text())["detection"]
    assert {"a/same.jpg", "b/same.jpg"} <= set(detection) and len(detection) == 5  # no image lost to a basename
    assert run_start("infer", "--model", WEIGHTS, "--source", images, "--out", yolo, "--imgsz", 320,
                     "--format", "yolo").returncode == 0
    classes = (yolo / "classes.txt").read_text().split("\n")
    for name, boxes in detection.items():
        lines = (yolo / (os.path.splitext(name)[0] + ".txt")).read_text().splitlines()
        assert len(lines) == len(boxes["boxes"])
        for line, box in zip(lines, boxes["boxes"]):
            cls, *xywh = line.split()
            assert classes[int(cls)] == box["class_name"] and all(0 <= float(v) <= 1 for v in xywh)


@pytest.mark.slow
def test_make_in_rehearses_platform_mode(tmp_path):
    inside = tmp_path / "in"
    done = run_start("make-in", "--task", "mining", "--images", COCO8 / "images", "--weights", WEIGHTS,
                     "--out", inside, "--set", "img_size=160", "--set", "mining_algorithm=aldd")
    assert done.returncode == 0, done.stderr
    env = yaml.safe_load((inside / "env.yaml").read_text())
    config = yaml.safe_load((inside / "config.yaml").read_text())
    assert env["run_mining"] and not env["run_infer"] and config["mining_algorithm"] == "aldd"
    assert config["model_params_path"] == ["yolov8n.pt"] and (inside / "models" / "yolov8n.pt").is_file()
    done = run_start("--env", inside / "env.yaml")
    assert done.returncode == 0, done.stdout
    rows = (tmp_path / "out" / "result.tsv").read_text().splitlines()
    assert len(rows) == 8 and all(row.startswith(str(inside / "assets")) for row in rows)
    assert (tmp_path / "out" / "monitor.txt").read_text().split("\t")[2:4] == ["1.0000", "2"]


@pytest.mark.slow
def test_ctrl_c_keeps_finished_shards_and_the_rerun_resumes(tmp_path):
    pool, out = tmp_path / "pool", tmp_path / "ranked.tsv"
    pool.mkdir()
    for image in coco_images(60):
        os.symlink(image, pool / image.name)
    command = [sys.executable, str(REPO / "start.py"), "mine", "--model", str(WEIGHTS), "--source", str(pool),
               "--out", str(out), "--algorithm", "cald", "--imgsz", "160", "--set", "shard_size=4"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shards = tmp_path / "ranked.tsv.shards"
    deadline = time.monotonic() + 300
    while not list(shards.glob("mining-*.txt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr + stdout
    kept = len(list(shards.glob("mining-*.txt")))
    assert 1 <= kept < 15 and not out.exists()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{kept} of 15 shards are complete from an earlier run" in done.stdout + done.stderr
