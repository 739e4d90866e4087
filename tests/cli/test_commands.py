"""The local command line: Ultralytics-style names, checks before the first image, outputs for labelling
tools, make-in, interrupts. Usage errors run in-process (no model is loaded before the checks)."""
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from executor import __version__
from executor.cli import commands as cli
from executor.errors import DatasetError
from executor.pipeline.job import Job, result_names
from executor.pipeline.scoring import work_shards
from executor.pipeline.plan import make_plan
from executor.pipeline.tasks import run as run_tasks
from executor.protocol.templates import TEMPLATES_DIR
from tests.platform import REPO, WEIGHTS, coco_images, coco_names, run_cli, run_platform

COCO8 = REPO.parent / "shared" / "data" / "coco8"


def parse(*argv):
    return cli.build_parser().parse_args([str(a) for a in argv])


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


# flag → (the template, its key) that the flag's help names the default of
HELP_DEFAULTS = {"mine": {"--imgsz": "img_size", "--batch": "batch_size_per_gpu", "--workers": "num_workers_per_gpu",
                          "--conf": "conf_thres", "--iou": "iou_thres", "--backend": "backend",
                          "--threads": "cpu_threads", "--nproc": "cpu_processes", "--algorithm": "mining_algorithm",
                          "--seed": "seed", "--selection": "selection", "--dedup-similarity": "dedup_similarity",
                          "--diverse-pool": "diverse_pool", "--diversity-weight": "diversity_weight",
                          "--report-top-n": "report_top_n"},
                 "simulate": {"--epochs": "epochs", "--img-size": "img_size", "--batch": "batch_size_per_gpu"}}
TEMPLATE_OF = {"mine": "mining", "simulate": "training"}


def help_defaults(capsys, command) -> dict:
    """flag → the default its help names, from `start.py COMMAND --help`."""
    import start

    with pytest.raises(SystemExit):
        start.main([command, "--help"])
    options = re.split(r"\n  (?=-)", capsys.readouterr().out.split("options:")[1])  # one entry per option
    entry = {flag: " ".join(text.split()) for text in options for flag in re.findall(r"--[\w-]+", text.split("  ")[0])}
    return {flag: re.search(r"\(default ([^)]*)\)", entry[flag]).group(1) for flag in HELP_DEFAULTS[command]}


@pytest.mark.parametrize("command", sorted(HELP_DEFAULTS))
def test_the_help_names_the_templates_defaults(capsys, command):
    template = yaml.safe_load(open(os.path.join(TEMPLATES_DIR, f"{TEMPLATE_OF[command]}-template.yaml")))
    assert help_defaults(capsys, command) == {flag: str(template[key]) for flag, key in HELP_DEFAULTS[command].items()}


def test_a_changed_template_changes_the_help(capsys, monkeypatch, tmp_path):
    from executor.protocol.templates import TEMPLATES_VAR

    folder = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, folder, ignore=shutil.ignore_patterns("segmentation"))
    for task, key, value in (("mining", "img_size", 512), ("mining", "diversity_weight", 0.3),
                             ("training", "epochs", 7)):
        path = folder / f"{task}-template.yaml"
        path.write_text(re.sub(rf"^{key}: \S+", f"{key}: {value}", path.read_text(), flags=re.M))
    monkeypatch.setenv(TEMPLATES_VAR, str(folder))
    mine = help_defaults(capsys, "mine")
    assert (mine["--imgsz"], mine["--diversity-weight"]) == ("512", "0.3")
    assert help_defaults(capsys, "simulate")["--epochs"] == "7"


def test_version_anywhere(capsys):
    import start

    for argv in (["--version"], ["mine", "--version"]):
        with pytest.raises(SystemExit) as done:
            start.main(argv)
        assert done.value.code == 0 and capsys.readouterr().out.strip() == f"quarry {__version__}"


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


@pytest.mark.parametrize("command, typed, needle", [
    ("mine", "imgsz=320", "did you mean img_size (or the flag --imgsz)?"),
    ("mine", "batch_size=4", "did you mean batch_size_per_gpu (or the flag --batch)?"),
    ("mine", "algorithm=cald", "did you mean mining_algorithm (or the flag --algorithm)?"),
    ("infer", "conf=0.3", "did you mean conf_thres (or the flag --conf)?"),
    ("infer", "entropy_agregation=max", ""),  # close to a mining key only: infer reads no such key
    ("mine", "entropy_agregation=max", "did you mean entropy_aggregation?"),
    ("mine", "zzz=1", ""),
])
def test_a_set_typo_is_a_usage_error_with_the_close_matches(capsys, caplog, images, tmp_path, command, typed, needle):
    key = typed.split("=")[0]
    status, err = run_cli(capsys, command, "--model", WEIGHTS, "--source", images, "--out", tmp_path / "r.tsv",
                          "--set", typed)
    template = os.path.join(TEMPLATES_DIR, f"{'mining' if command == 'mine' else 'infer'}-template.yaml")
    assert status == 2 and err.count("error") == 1, err
    expected = f"error: --set {typed}: unknown key '{key}' (the keys are those of {template})"
    assert err.rstrip().endswith(expected + (f"; {needle}" if needle else "")), err
    assert not caplog.records and not (tmp_path / "r.tsv").exists()


def test_a_set_key_of_another_task_is_one_warning_and_left_out(caplog, images, tmp_path):
    args = parse("mine", "--algorithm", "random", "--source", images, "--out", tmp_path / "r.tsv", "--no-report",
                 "--set", "epochs=3", "--set", "shard_size=2")
    assert cli.run(args) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["--set epochs: a key of the training template, not used by mining; ignored"]
    config = cli.config_of(args)
    assert "epochs" not in config and config["shard_size"] == 2
    caplog.clear()
    config = cli.config_of(parse("infer", "--model", WEIGHTS, "--source", images, "--out", tmp_path / "d.json",
                                 "--set", "seed=3", "--set", "model=yolov8s.pt"))
    assert "seed" not in config and "model" not in config
    assert [r.getMessage() for r in caplog.records] == [
        "--set seed: a key of the training and mining templates, not used by infer; ignored",
        "--set model: a key of the training template, not used by infer; ignored; did you mean model_params_path "
        "(or the flag --model)?"]
    caplog.clear()
    with_infer = cli.config_of(parse("mine", "--model", WEIGHTS, "--source", images, "--out", tmp_path / "r.tsv",
                                     "--infer-out", tmp_path / "d.json", "--set", "report_top_n=3"))
    assert with_infer["report_top_n"] == 3 and not caplog.records  # mining reads it, infer ignores it silently


def test_make_in_rejects_a_set_typo_before_writing(capsys, images, tmp_path):
    status, err = run_cli(capsys, "make-in", "--task", "mining", "--images", images, "--out", tmp_path / "in",
                          "--set", "imgsz=320")
    assert status == 2 and "--set imgsz=320: unknown key 'imgsz'" in err and err.rstrip().endswith(
        "did you mean img_size?")  # make-in has no --imgsz flag
    assert not (tmp_path / "in").exists()


def test_a_glob_source_and_a_missing_model_file(capsys, fake_detector, images, tmp_path):
    """A glob names its images relative to its fixed part (the older flag names --weights, --images, --img-size
    work too); a model file that is not there is a usage error before anything is written."""
    out = tmp_path / "det.json"
    status, err = run_cli(capsys, "infer", "--weights", WEIGHTS, "--images", images / "b" / "*.jpg", "--img-size",
                          160, "--out", out)
    assert status == 0, err
    assert list(json.loads(out.read_text())["detection"]) == sorted(os.listdir(images / "b"))
    status, err = run_cli(capsys, "mine", "--weights", tmp_path / "none.pt", "--images", images,
                          "--out", tmp_path / "r.tsv")
    assert status == 2 and f"{tmp_path / 'none.pt'}: no such file" in err and "300004" not in err
    assert not (tmp_path / "r.tsv").exists()


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


@pytest.mark.parametrize("command, flag", [("infer", "--out"), ("mine", "--infer-out")])
def test_format_yolo_into_a_file_name_is_a_usage_error(capsys, images, tmp_path, command, flag):
    out = ["--out", tmp_path / "x.json"] if command == "infer" else ["--out", tmp_path / "r.tsv", "--infer-out",
                                                                     tmp_path / "x.json"]
    status, err = run_cli(capsys, command, "--model", WEIGHTS, "--source", images, "--format", "yolo", *out)
    assert status == 2 and f"{flag} {tmp_path / 'x.json'}: --format yolo writes a folder" in err, err
    assert "e.g. " + str(tmp_path / "x") + "/" in err and not (tmp_path / "x.json").exists()


def test_a_failed_run_leaves_no_empty_shards_folder(capsys, images, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    for command, out in (("infer", tmp_path / "det.json"), ("mine", tmp_path / "r.tsv")):
        assert cli.run(parse(command, "--model", broken, "--source", images, "--out", out)) == 1
        assert not os.path.exists(f"{out}.shards") and not out.exists()


def test_a_rerun_without_report_removes_the_stale_one(images, tmp_path):
    out = tmp_path / "ranked.tsv"
    mine = ["mine", "--algorithm", "random", "--source", images, "--out", out]
    assert cli.run(parse(*mine)) == 0
    report, numbers = tmp_path / "ranked.report.html", tmp_path / "ranked.report.json"
    assert report.is_file() and numbers.is_file()
    assert cli.run(parse(*mine, "--seed", 1, "--no-report")) == 0
    assert out.is_file() and not report.exists() and not numbers.exists()


def test_the_last_line_counts_only_what_this_run_scored(caplog, images, tmp_path):
    from executor.pipeline.tasks import throughput

    assert throughput(["mining"], 5, 5, 2.0) == "mining of 5 images in 2.0 s (2.5 images/s)"
    assert throughput(["mining", "infer"], 5, 1, 2.0) == (
        "mining + infer of 5 images in 2.0 s (0.5 images/s: 1 scored in this run, 4 reused from an earlier run's "
        "shards)")
    paths = cli.list_images(str(images))[0]
    job = Job(candidates=paths, mining_result=str(tmp_path / "r.tsv"), shards_dir=str(tmp_path / "shards"))
    config = {"mining_algorithm": "random", "shard_size": 2, "report": False}
    plan = make_plan(["mining"], job, config)
    work_shards(plan, [0, 1], 0, 1, "", lambda done: None)  # an earlier run's first 2 shards
    caplog.set_level(logging.INFO)
    run_tasks(plan)
    assert "1 scored in this run, 4 reused from an earlier run's shards)" in caplog.text


def test_random_needs_no_model_and_warns_when_given_one(capsys, caplog, images, tmp_path):
    status = cli.run(parse("mine", "--algorithm", "random", "--model", WEIGHTS, "--source", images,
                           "--out", tmp_path / "r.tsv"))
    assert status == 0 and "is not used" in caplog.text
    assert len((tmp_path / "r.tsv").read_text().splitlines()) == 5


@pytest.mark.parametrize("extra", [("--selection", "diverse"), ("--infer-out", "d.json")])
def test_random_still_needs_a_model_to_embed_or_detect(extra, capsys, images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status = cli.run(parse("mine", "--algorithm", "random", "--source", images, "--out", tmp_path / "r.tsv", *extra))
    assert status == 2 and "--model is required" in capsys.readouterr().err
    assert not (tmp_path / "r.tsv").exists()


def test_the_report_cuts_at_topk(images, tmp_path):
    status = cli.run(parse("mine", "--algorithm", "random", "--source", images, "--out", tmp_path / "r.tsv",
                           "--topk", 4, "--report-top-n", 2))
    assert status == 0
    ranked = [line.split("\t") for line in (tmp_path / "r.tsv").read_text().splitlines()]
    report = json.loads((tmp_path / "r.report.json").read_text())
    assert report["selected"] == 4 and len(report["top"]) == 2
    assert report["histogram"]["top_n"] == 4 and report["histogram"]["cut_score"] == float(ranked[3][1])
    assert "Top 4 selected" in (tmp_path / "r.report.html").read_text()
    assert cli.run(parse("mine", "--algorithm", "random", "--source", images, "--out", tmp_path / "all.tsv")) == 0
    report = json.loads((tmp_path / "all.report.json").read_text())
    assert report["selected"] is None and len(report["top"]) == 5 and report["histogram"]["top_n"] == 5


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
def test_mine_with_selection_and_detections_of_the_same_pass(capsys, caplog, images, tmp_path):
    caplog.set_level(logging.INFO)
    out, sel, coco = tmp_path / "ranked.tsv", tmp_path / "selected", tmp_path / "pre-labels.json"
    status, err = run_cli(capsys, "mine", "--model", WEIGHTS, "--source", images, "--out", out, "--imgsz", 320,
                          "--topk", 2, "--select-dir", sel, "--link", "--infer-out", coco, "--format", "coco")
    assert status == 0, err
    ranked = [line.split("\t")[0] for line in out.read_text().splitlines()]
    assert len(ranked) == 5 and (tmp_path / "ranked.top2.txt").read_text().split() == ranked[:2]
    assert sorted(os.listdir(sel)) == [f"00001_{os.path.basename(ranked[0])}", f"00002_{os.path.basename(ranked[1])}"]
    assert all(os.path.islink(sel / name) for name in os.listdir(sel))
    data = json.loads(coco.read_text())
    assert sorted(im["file_name"] for im in data["images"]) == sorted(cli.list_images(str(images))[1])
    assert all(im["width"] > 0 for im in data["images"]) and data["annotations"]
    # the model's classes in model order, whatever this batch found: batches merge without renumbering
    assert data["categories"] == [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(coco_names(), 1)]
    assert "mining + infer of 5 images" in caplog.text
    kept = os.listdir(tmp_path / "ranked.tsv.shards")  # the shards stay for a re-selection; nothing else does
    assert kept and all(re.fullmatch(r"(mining|infer)-\d{6}\.(txt|npz)", name) for name in kept)


@pytest.mark.slow
def test_infer_formats_keep_every_image(capsys, images, tmp_path):
    (images / "b" / "broken.jpg").write_bytes(b"not an image")
    ymir, yolo = tmp_path / "det.json", tmp_path / "labels"
    assert run_cli(capsys, "infer", "--model", WEIGHTS, "--source", images, "--out", ymir, "--imgsz", 320)[0] == 0
    detection = json.loads(ymir.read_text())["detection"]
    assert {"a/same.jpg", "b/same.jpg"} <= set(detection) and len(detection) == 6  # no image lost to a basename
    assert detection["b/broken.jpg"] == {"boxes": []}  # the platform's form: no boxes
    assert run_cli(capsys, "infer", "--model", WEIGHTS, "--source", images, "--out", yolo, "--imgsz", 320,
                   "--format", "yolo")[0] == 0
    assert (yolo / "classes.txt").read_text().splitlines() == coco_names()  # the model's, in model order
    assert not (yolo / "b" / "broken.txt").exists()  # unreadable: no label file ("labelled, nothing here")
    del detection["b/broken.jpg"]
    for name, boxes in detection.items():
        lines = (yolo / (os.path.splitext(name)[0] + ".txt")).read_text().splitlines()
        assert len(lines) == len(boxes["boxes"])
        for line, box in zip(lines, boxes["boxes"]):
            cls, *xywh = line.split()
            assert coco_names()[int(cls)] == box["class_name"] and all(0 <= float(v) <= 1 for v in xywh)


@pytest.mark.slow
def test_the_top_k_list_of_mine_is_a_source_wherever_out_is(capsys, monkeypatch, images, tmp_path):
    monkeypatch.chdir(images.parent)  # the source typed relative to the current folder, --out in another one
    (tmp_path / "runs").mkdir()
    assert cli.run(parse("mine", "--algorithm", "random", "--source", "images", "--out", "runs/ranked.tsv",
                         "--topk", 3, "--no-report")) == 0
    top = [line.split("\t")[0] for line in (tmp_path / "runs/ranked.tsv").read_text().splitlines()[:3]]
    chosen = tmp_path / "runs" / "ranked.top3.txt"
    assert chosen.read_text().splitlines() == [str(tmp_path / p) for p in top]
    status = cli.run(parse("infer", "--model", WEIGHTS, "--source", chosen, "--out", "pre.json", "--imgsz", 160))
    assert status == 0, capsys.readouterr().err
    assert sorted(json.loads((tmp_path / "pre.json").read_text())["detection"]) == sorted(
        str(tmp_path / p) for p in top)
    assert cli.run(parse("infer", "--model", WEIGHTS, "--source", chosen, "--out", "labels", "--imgsz", 160,
                         "--format", "yolo")) == 0
    labels = sorted(str(p.relative_to(tmp_path / "labels")) for p in (tmp_path / "labels").rglob("*.txt"))
    assert labels == sorted([str(tmp_path / os.path.splitext(p)[0])[1:] + ".txt" for p in top] + ["classes.txt"])
    assert not list(images.rglob("*.txt"))  # nothing written beside the images


def test_make_in_rehearses_platform_mode(capsys, fake_detector, tmp_path):
    """make-in's /in, run by platform mode (in process, the fake detector: the wiring, not the model)."""
    inside = tmp_path / "in"
    status, err = run_cli(capsys, "make-in", "--task", "mining", "--images", COCO8 / "images", "--weights", WEIGHTS,
                          "--out", inside, "--set", "img_size=160", "--set", "mining_algorithm=aldd")
    assert status == 0, err
    env = yaml.safe_load((inside / "env.yaml").read_text())
    config = yaml.safe_load((inside / "config.yaml").read_text())
    assert env["run_mining"] and not env["run_infer"] and config["mining_algorithm"] == "aldd"
    assert config["model_params_path"] == ["yolov8n.pt"] and (inside / "models" / "yolov8n.pt").is_file()
    status, log = run_platform(inside / "env.yaml")
    assert status == 0, log
    rows = (tmp_path / "out" / "result.tsv").read_text().splitlines()
    assert len(rows) == 8 and all(row.startswith(str(inside / "assets")) for row in rows)
    assert (tmp_path / "out" / "monitor.txt").read_text().split("\t")[2:4] == ["1.0000", "2"]


@pytest.mark.slow
def test_ctrl_c_keeps_finished_shards_and_the_rerun_resumes(caplog, tmp_path):
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
    caplog.set_level(logging.INFO)  # the rerun in this process
    assert cli.run(parse(*command[2:])) == 0
    assert f"{kept} of 15 shards are complete from an earlier run" in caplog.text
    assert len(out.read_text().splitlines()) == 60


@pytest.mark.slow
def test_ctrl_c_on_an_ordinary_folder_keeps_whole_shards_or_says_nothing_finished(tmp_path):
    pool, out = tmp_path / "pool", tmp_path / "ranked.tsv"
    pool.mkdir()
    for image in coco_images():  # 206 images, default shard_size (auto): 4 shards of at most 64
        os.symlink(image, pool / image.name)
    command = [sys.executable, str(REPO / "start.py"), "mine", "--model", str(WEIGHTS), "--source", str(pool),
               "--out", str(out), "--imgsz", "160"]
    shards = tmp_path / "ranked.tsv.shards"

    def start():
        return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def interrupt(process) -> str:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 130, stdout[-2000:] + stderr[-2000:]
        return stderr.strip().splitlines()[-1]

    process = start()  # interrupted right after the model loaded, before any shard finished
    next(line for line in process.stdout if "executor.engine.loading: loaded" in line)
    said = interrupt(process)
    assert said == "interrupted before any shard was finished: nothing is kept" and not shards.exists()
    process = start()  # interrupted once the first shard file is there
    deadline = time.monotonic() + 300
    while not list(shards.glob("mining-*.txt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    said = interrupt(process)
    kept = len(list(shards.glob("mining-*.txt")))
    assert 1 <= kept < 4 and not out.exists()
    assert said == (f"interrupted: {kept} of 4 shards ({64 * kept} images) are finished and kept in {shards}; "
                    "run the same command again to resume")
