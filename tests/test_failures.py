"""Bad input and broken images through start.py: for each case the exit status, monitor.txt (state 4, the
error code, a one-line message naming the file, line or key at fault, then the traceback) and which result
files exist afterwards. docs/errors.md is the same table in prose; tests/test_platform.py keeps a missing
env.yaml given with --env (no monitor to write to). A few runs that succeed without a model (random mining
needs no weights, an unknown config key is one warning) ride along in the input group.

Cases run in groups. The input group runs in this process (tests.platform.run_platform: start.run_platform, the
platform's whole error path); the groups that load models, GPUs or train run in one subprocess per group (this
module run with -m, see `drive`), which calls start.main for every case of the group in turn, so the ~5 s of
imports are paid once per group instead of once per case, with the group's environment. Each case has its own
/in and /out under a temp dir; start.DEFAULT_MONITOR stands for /out/monitor.txt.

    python -m tests.test_failures CASES.json RESULTS.json     (from the repository root)
"""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.platform import REPO, WEIGHTS, coco_images, make_env
from tests.ymir_builders import Item, voc_items, voc_names, write_dataset, write_training_env

RESULT_FILES = ("result.tsv", "infer-result.json", "models/result.yaml")
COCO_JPEG = REPO.parent / "shared" / "data" / "coco-val" / "images" / "000000000139.jpg"


# ---------------------------------------------------------------- the driver (runs in the subprocess)

def drive(cases_file: str, results_file: str) -> None:
    """start.main([]) for each case, as the platform runs it (no --env), with the case's env.yaml and default
    monitor in place of /in/env.yaml and /out/monitor.txt; stdout and stderr captured per case."""
    import start

    results = {}
    for case in json.loads(Path(cases_file).read_text()):
        start.DEFAULT_ENV, start.DEFAULT_MONITOR = case["env"], case["default_monitor"]
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            try:
                rc = start.main([])
            except SystemExit as exc:
                rc = exc.code
            except BaseException:  # start.main must never raise: the test fails on this
                rc = "raised"
                buffer.write(traceback.format_exc())
        results[case["name"]] = {"rc": rc, "log": buffer.getvalue()}
    Path(results_file).write_text(json.dumps(results))


def run_group(root: Path, cases: dict, extra_env: dict | None = None, timeout: int = 900,
              in_process: bool = False) -> dict:
    """Build every case under `root`/<name>, run them all in one subprocess (or in this process);
    {name: {rc, log, root}}."""
    listed = []
    for name, case in cases.items():
        case_root = root / name
        case_root.mkdir(parents=True)
        env_path = case.build(case_root)
        default_dir = case_root / "out" if case.default_out else case_root / "no-default-out"
        listed.append({"name": name, "env": str(env_path), "default_monitor": str(default_dir / "monitor.txt")})
    if in_process:
        from tests.platform import run_platform

        assert not extra_env, "a group with its own environment runs in a subprocess"
        results = {}
        for case in listed:
            rc, log = run_platform(Path(case["env"]), default_monitor=Path(case["default_monitor"]))
            results[case["name"]] = {"rc": rc, "log": log, "root": root / case["name"]}
        return results
    (root / "cases.json").write_text(json.dumps(listed))
    done = subprocess.run([sys.executable, "-m", "tests.test_failures", str(root / "cases.json"), str(root / "results.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(extra_env or {})})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((root / "results.json").read_text())
    for name in results:
        results[name]["root"] = root / name
    return results


# ---------------------------------------------------------------- checks

def monitor_lines(root: Path) -> list[str]:
    path = root / "out" / "monitor.txt"
    assert path.is_file(), f"no monitor.txt in {root / 'out'}"
    return path.read_text().splitlines()


def results_left(root: Path) -> list[str]:
    out = root / "out"
    left = [name for name in RESULT_FILES if (out / name).exists()]
    if (out / "models").is_dir():
        left += [f"models/{name}" for name in os.listdir(out / "models") if f"models/{name}" not in left]
    return sorted(left)


def assert_failed(result: dict, code: int, needle: str, left=()) -> str:
    """Exit status 1, monitor state 4 with `code`, `needle` in the one-line message, traceback after it,
    no result file left but those in `left` (there before the run). Returns the message."""
    root = result["root"]
    needle = needle.replace("{IN}", str(root / "in")).replace("{OUT}", str(root / "out"))
    assert result["rc"] == 1, result["log"][-3000:]
    lines = monitor_lines(root)
    fields = lines[0].split("\t")
    assert fields[3:] == ["4", str(code)], (fields, result["log"][-2000:])
    assert needle in lines[1], (needle, lines[1])
    assert "\n" not in lines[1] and lines[2].startswith("Traceback"), lines[:3]
    assert f"failed with code {code}: {lines[1]}" in result["log"]  # the same line in the executor log
    assert results_left(root) == sorted(left)
    return lines[1]


def assert_succeeded(result: dict) -> None:
    assert result["rc"] == 0, result["log"][-3000:]
    assert monitor_lines(result["root"])[0].split("\t")[2:] == ["1.0000", "2", "0"]


# ---------------------------------------------------------------- inputs

def mining_env(root: Path, config=None, run_infer=False, weights=None, candidates=None, **kw) -> Path:
    return make_env(root, run_mining=True, run_infer=run_infer, weights=weights,
                    candidates=coco_images(1) if candidates is None else candidates,
                    config={"img_size": 64, "mining_algorithm": "random", **(config or {})}, **kw)


def infer_env(root: Path, config=None, **kw) -> Path:
    kw.setdefault("weights", WEIGHTS)
    kw.setdefault("candidates", coco_images(1))
    return make_env(root, run_infer=True, config={"img_size": 64, **(config or {})}, **kw)


def edit_yaml(path: Path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))


def edit_env(env: Path, **changes) -> Path:
    edit_yaml(env, **changes)
    return env


def edit_config(env: Path, **changes) -> Path:
    edit_yaml(env.parent / "config.yaml", **changes)
    return env


def with_text(env: Path, name: str, text: str | bytes) -> Path:
    target = env.parent / name
    target.write_bytes(text.encode() if isinstance(text, str) else text)
    return env


def without(env: Path, name: str) -> Path:
    (env.parent / name).unlink()
    return env


def with_index_lines(env: Path, lines: list[str]) -> Path:
    (env.parent / "candidate-index.tsv").write_text("".join(line + "\n" for line in lines))
    return env


def candidate_keys(env: Path) -> list[str]:
    return [k.strip() for k in (env.parent / "candidate-index.tsv").read_text().splitlines() if k.strip()]


@dataclass
class Case:
    code: int               # expected error code (0: the run must succeed)
    needle: str             # expected in the one-line message ({IN}, {OUT}: the case's /in and /out)
    build: Callable         # root -> env.yaml path
    default_out: bool = False  # start.DEFAULT_MONITOR points into the case's /out (env.yaml unusable)
    left: tuple = ()        # result files that exist before the run and must still be there after it


def env_case(text: str) -> Callable:
    def build(root):
        env = mining_env(root)
        env.write_text(text)
        return env
    return build


def with_earlier_result(root: Path) -> Path:
    env = edit_config(mining_env(root), batch_size_per_gpu=-1)
    (root / "out" / "result.tsv").write_text("/in/assets/earlier.jpg\t0.5\n")
    return env


def relative_index(root: Path) -> Path:
    env = mining_env(root)
    keys = candidate_keys(env)
    return with_index_lines(env, [*keys, os.path.relpath(keys[0], env.parent)])


def index_with_blank_duplicate_and_missing(root: Path) -> Path:
    env = mining_env(root, candidates=coco_images(2))
    keys = candidate_keys(env)
    missing = str(root / "in" / "assets" / "00" / "gone.jpg")
    return with_index_lines(env, ["", keys[0], "   ", missing, keys[1], keys[0], "\t", ""])


def all_missing(root: Path) -> Path:
    env = mining_env(root)
    return with_index_lines(env, [str(root / "in" / "assets" / "00" / f"gone{i}.jpg") for i in range(2)])


INPUT_CASES = {
    # env.yaml
    "env_not_yaml": Case(300001, "env.yaml {IN}/env.yaml is not valid YAML", env_case("run_mining: [true\n"),
                         default_out=True),
    "env_not_a_mapping": Case(300001, "must be a YAML mapping, not list", env_case("- run_mining\n"),
                              default_out=True),
    "env_no_task_flag": Case(300001, "none of run_training, run_mining, run_infer is true",
                             lambda r: edit_env(mining_env(r), run_mining=False)),
    "env_two_exclusive_flags": Case(300001, "run_training cannot be combined with run_mining",
                                    lambda r: edit_env(mining_env(r), run_training=True)),
    "env_flag_not_boolean": Case(300001, "key 'run_mining': 'perhaps' is not a boolean",
                                 lambda r: edit_env(mining_env(r), run_mining="perhaps")),
    # config.yaml
    "config_missing": Case(300001, "config.yaml not found: {IN}/config.yaml",
                           lambda r: without(mining_env(r), "config.yaml")),
    "config_not_yaml": Case(300001, "config.yaml {IN}/config.yaml is not valid YAML",
                            lambda r: with_text(mining_env(r), "config.yaml", "img_size: [64\n")),
    "config_not_a_mapping": Case(300001, "config.yaml {IN}/config.yaml must be a YAML mapping, not list",
                                 lambda r: with_text(mining_env(r), "config.yaml", "- 1\n- 2\n")),
    "batch_negative": Case(300001, "config key 'batch_size_per_gpu': -1 is not allowed",
                           lambda r: edit_config(mining_env(r), batch_size_per_gpu=-1)),
    "img_size_list": Case(300001, "config key 'img_size': [640, 640]",
                          lambda r: edit_config(mining_env(r), img_size=[640, 640])),
    "img_size_text": Case(300001, "config key 'img_size': 'huge' is not allowed",
                          lambda r: edit_config(mining_env(r), img_size="huge")),
    "algorithm_unknown": Case(300001, "config key 'mining_algorithm': 'coreset' is not allowed; expected one of "
                                      "random, entropy, errors, aldd, cald",
                              lambda r: mining_env(r, {"mining_algorithm": "coreset"})),
    "conf_thres_above_one": Case(300001, "config key 'conf_thres': 1.5 is not allowed; expected a number in [0.0, 1.0]",
                                 lambda r: infer_env(r, {"conf_thres": 1.5})),
    "conf_thres_negative": Case(300001, "config key 'conf_thres': -0.1",
                                lambda r: infer_env(r, {"conf_thres": -0.1})),
    "class_distribution_scores_text": Case(300001, "config key 'class_distribution_scores': '1,x,0.5'",
                                           lambda r: mining_env(r, {"mining_algorithm": "aldd",
                                                                    "class_distribution_scores": "1,x,0.5"})),
    "class_distribution_scores_negative": Case(300001, "'class_distribution_scores': '1,-2'",
                                               lambda r: mining_env(r, {"mining_algorithm": "aldd",
                                                                        "class_distribution_scores": "1,-2"})),
    "gpu_id_text": Case(300001, "config key 'gpu_id': 'first'", lambda r: mining_env(r, {"gpu_id": "first"})),
    "class_names_mapping": Case(300001, "config key 'class_names'",
                                lambda r: mining_env(r, {"class_names": {"a": 1}})),
    "model_path_escapes_models_dir": Case(300001, "'model_params_path': '../../../etc/yolov8n.pt' is outside "
                                                  "input.models_dir {IN}/models",
                                          lambda r: infer_env(r, {"model_params_path": ["../../../etc/yolov8n.pt"]},
                                                              weights=None)),
    "model_path_outside_input": Case(300001, "'model_params_path': '/etc/yolov8n.pt' is outside the input directory",
                                     lambda r: infer_env(r, {"model_params_path": ["/etc/yolov8n.pt"]}, weights=None)),
    "earlier_result_is_kept": Case(300001, "'batch_size_per_gpu'", with_earlier_result, left=("result.tsv",)),
    # candidate index
    "index_missing": Case(300002, "candidate index file not found: {IN}/none.tsv",
                          lambda r: edit_env(mining_env(r), input={
                              **yaml.safe_load((r / "in" / "env.yaml").read_text())["input"],
                              "candidate_index_file": str(r / "in" / "none.tsv")})),
    "index_empty": Case(300002, "candidate index file is empty: {IN}/candidate-index.tsv",
                        lambda r: with_text(mining_env(r), "candidate-index.tsv", "")),
    "index_blank_lines_only": Case(300002, "candidate index file is empty: {IN}/candidate-index.tsv",
                                   lambda r: with_index_lines(mining_env(r), ["", "  ", "\t"])),
    "index_relative_path": Case(300002, "{IN}/candidate-index.tsv line 2: 'assets/", relative_index),
    "index_not_utf8": Case(300002, "candidate index file {IN}/candidate-index.tsv is not UTF-8",
                           lambda r: with_text(mining_env(r), "candidate-index.tsv", b"\xff\xfe/in/a\xe9.jpg\n")),
    "index_only_missing_files": Case(300003, "none of the 2 images could be read", all_missing),
    # succeeds: blank lines skipped, a duplicate listed once, a missing file listed last
    "index_blank_duplicate_missing": Case(0, "", index_with_blank_duplicate_and_missing),
    # models (the first two from tests/test_platform.py)
    "model_missing": Case(300004, "models/gone/best.pt",
                          lambda r: make_env(r, run_mining=True, run_infer=True, weights=None,
                                             candidates=coco_images(1),
                                             config={"model_params_path": ["gone/best.pt"]})),
    "infer_fails_after_mining_succeeded": Case(300004, ".onnx",
                                               lambda r: make_env(r, run_mining=True, run_infer=True,
                                                                  candidates=coco_images(2),
                                                                  config={"mining_algorithm": "random",
                                                                          "backend": "onnx"})),
    # succeed without a model
    "random_without_weights": Case(0, "", lambda r: make_env(r, run_mining=True, weights=None,
                                                             config={"mining_algorithm": "random"},
                                                             candidates=coco_images(3))),
    "unknown_config_key": Case(0, "", lambda r: make_env(r, run_mining=True, weights=None,
                                                         config={"mining_algorithm": "random", "imgsz": 320,
                                                                 "epochs": 3},
                                                         candidates=coco_images(3))),
}


@pytest.fixture(scope="module")
def input_runs(tmp_path_factory):
    return run_group(tmp_path_factory.mktemp("inputs"), INPUT_CASES, in_process=True)


@pytest.mark.parametrize("name", [n for n, c in INPUT_CASES.items() if c.code])
def test_bad_input(input_runs, name):
    case = INPUT_CASES[name]
    assert_failed(input_runs[name], case.code, case.needle, case.left)


def test_unusable_env_yaml_still_reports_to_the_default_monitor(input_runs):
    for name in ("env_not_yaml", "env_not_a_mapping"):
        assert monitor_lines(input_runs[name]["root"])[0].startswith("quarry\t")  # no task id known
    assert monitor_lines(input_runs["env_no_task_flag"]["root"])[0].startswith("t-test\t")


def test_a_result_of_an_earlier_run_is_kept(input_runs):
    root = input_runs["earlier_result_is_kept"]["root"]
    assert (root / "out" / "result.tsv").read_text() == "/in/assets/earlier.jpg\t0.5\n"


def test_blank_lines_duplicates_and_missing_files_in_the_index(input_runs):
    result = input_runs["index_blank_duplicate_missing"]
    assert_succeeded(result)
    root = result["root"]
    rows = [line.split("\t") for line in (root / "out" / "result.tsv").read_text().splitlines()]
    keys = sorted({k for k in candidate_keys(root / "in" / "env.yaml")})
    missing = str(root / "in" / "assets" / "00" / "gone.jpg")
    assert sorted(r[0] for r in rows) == keys and len(rows) == 3  # each once, no blank line
    assert rows[-1] == [missing, "-1.0"] and all(float(r[1]) >= 0 for r in rows[:-1])
    log = result["log"]
    assert "WARNING" in log and f"cannot read image {missing}" in log
    assert "line 6: duplicate entry" in log


def test_random_needs_no_weights(input_runs):
    result = input_runs["random_without_weights"]
    assert_succeeded(result)
    assert len((result["root"] / "out" / "result.tsv").read_text().splitlines()) == 3


def test_an_unknown_config_key_is_one_warning_with_its_close_matches(input_runs):
    result = input_runs["unknown_config_key"]
    assert_succeeded(result)
    warnings = [line for line in result["log"].splitlines() if "WARNING" in line]
    assert len(warnings) == 1, warnings  # not once per task and step; epochs is a (training) template key
    assert warnings[0].endswith("config key 'imgsz' is not used by mining and is ignored; did you mean 'img_size'?")


# ---------------------------------------------------------------- models, GPUs, training data

def odd_and_broken_images(folder: Path) -> dict[str, Path]:
    """Small images platforms send: odd but readable ones, and broken ones (all from one COCO photo)."""
    import cv2
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    bgr = cv2.resize(cv2.imread(str(COCO_JPEG)), (128, 96))
    rgb = Image.fromarray(bgr[..., ::-1].copy())
    images = {}

    def put(name, writer):
        images[name] = folder / name
        writer(images[name])

    put("plain.jpg", lambda p: rgb.save(p, quality=90))
    put("cmyk.jpg", lambda p: rgb.convert("CMYK").save(p, quality=90))
    put("sixteen_bit.png", lambda p: cv2.imwrite(str(p), bgr.astype(np.uint16) * 257))
    put("gray.png", lambda p: cv2.imwrite(str(p), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)))
    put("rgba.png", lambda p: cv2.imwrite(str(p), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)))
    put("png_named.unknown", lambda p: cv2.imwrite(str(p.with_suffix(".png")), bgr) and p.with_suffix(".png").rename(p))
    exif = (b"\xff\xe1\x00\x22Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01"
            b"\x00\x06\x00\x00\x00\x00\x00\x00")  # orientation 6: shown rotated by 90°
    jpeg = cv2.imencode(".jpg", bgr)[1].tobytes()
    put("exif_rotated.jpg", lambda p: p.write_bytes(jpeg[:2] + exif + jpeg[2:]))
    put("truncated.jpg", lambda p: p.write_bytes(COCO_JPEG.read_bytes()[:20000]))
    put("zero_bytes.jpg", lambda p: p.write_bytes(b""))
    put("text.jpg", lambda p: p.write_bytes(b"this is not an image\n"))
    return images


ODD = ("plain.jpg", "cmyk.jpg", "sixteen_bit.png", "gray.png", "rgba.png", "png_named.unknown", "exif_rotated.jpg")
BROKEN = ("truncated.jpg", "zero_bytes.jpg", "text.jpg")


@pytest.fixture(scope="session")
def other_task_checkpoints(tmp_path_factory):
    """A classification and a segmentation checkpoint, built offline from Ultralytics' bundled model YAMLs."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for task, cfg in (("classify", "yolov8n-cls.yaml"), ("segment", "yolov8n-seg.yaml")):
        paths[task] = folder / cfg.replace(".yaml", ".pt")
        YOLO(cfg).save(str(paths[task]))
    return paths


def weights_file(content: bytes | Path, name="best.pt") -> Callable:
    def build(root):
        folder = root / "src"
        folder.mkdir(exist_ok=True)
        target = folder / name
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
        return target
    return build


def training_env(root: Path, config=None, fmt="ark", count=(2, 1), weights=WEIGHTS) -> Path:
    items = voc_items(sum(count))
    write_dataset(root / "in", items[:count[0]], items[count[0]:], voc_names(), fmt)
    pretrained = []
    if weights:
        (root / "in" / "models").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, root / "in" / "models" / Path(weights).name)
        pretrained = [str(root / "in" / "models" / Path(weights).name)]
    return write_training_env(root, voc_names(), {"epochs": 1, "img_size": 64, "batch_size_per_gpu": 2,
                                                  "num_workers_per_gpu": 0, "pretrained_model_params": pretrained,
                                                  "save_best_only": True, **(config or {})})


def first_annotation(root: Path, split="train") -> Path:
    return Path((root / "in" / f"{split}-index.tsv").read_text().splitlines()[0].split("\t")[1])


def broken_annotation(fmt: str, text: str) -> Callable:
    def build(root):
        env = training_env(root, fmt=fmt)
        first_annotation(root).write_text(text)
        return env
    return build


def coco_edit(change: Callable) -> Callable:
    def build(root):
        env = training_env(root, fmt="coco")
        path = root / "in" / "annotations" / "coco-annotations.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
        return env
    return build


def index_edit(split: str, change: Callable) -> Callable:
    def build(root):
        env = training_env(root)
        index = root / "in" / f"{split}-index.tsv"
        index.write_text(change(index.read_text(), root))
        return env
    return build


def unreadable_train_images(root: Path) -> Path:
    env = training_env(root)
    for line in (root / "in" / "train-index.tsv").read_text().splitlines():
        Path(line.split("\t")[0]).write_bytes(b"")
    return env


def with_weights(env_builder: Callable, key: str, weights: Callable) -> Callable:
    """The env of `env_builder` with `key` naming only {IN}/models/stage/best.pt, made by `weights`."""
    def build(root):
        env = env_builder(root)
        source = weights(root)
        path = root / "in" / "models" / "stage" / source.name
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        return edit_config(env, **{key: [str(path)]})
    return build


def drop_first_image(data: dict) -> None:
    gone = data["images"].pop(0)["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != gone]


def coco_not_json(root: Path) -> Path:
    env = training_env(root, fmt="coco")
    (root / "in" / "annotations" / "coco-annotations.json").write_text("{")
    return env


def mining_with_model(root: Path) -> Path:
    return mining_env(root, {"mining_algorithm": "entropy"}, weights=WEIGHTS)


def all_unreadable_infer(root: Path) -> Path:
    images = odd_and_broken_images(root / "src")
    return infer_env(root, candidates=[images[name] for name in BROKEN])


def broken_images_in_training(root: Path) -> Path:
    """Training data with every odd and broken image, a missing one, a duplicated line, an inverted and a
    zero-area box, and a box loss gain of infinity: the loss is not finite in epoch 1."""
    images = odd_and_broken_images(root / "src")
    box = [(0, 10, 10, 60, 60)]
    good = voc_items(6)
    train = [*good[:4], *(Item(images[name], box) for name in (*ODD, *BROKEN))]
    write_dataset(root / "in", train, good[4:], voc_names(), "ark")
    index = root / "in" / "train-index.tsv"
    lines = index.read_text().splitlines()
    first_asset, first_annotation_path = lines[0].split("\t")
    Path(first_annotation_path).write_text("0, 10, 10, 60, 60\n0, 50, 50, 10, 10\n0, 20, 20, 19, 40\n")
    missing = str(root / "in" / "assets" / "00" / "gone.jpg")
    index.write_text("\n".join([*lines, lines[1], f"{missing}\t{first_annotation_path}"]) + "\n")
    (root / "in" / "models").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(WEIGHTS, root / "in" / "models" / "yolov8n.pt")
    return write_training_env(root, voc_names(), {
        "epochs": 1, "img_size": 64, "batch_size_per_gpu": 4, "num_workers_per_gpu": 0, "optimizer": "SGD",
        "args_options": "box=.inf", "pretrained_model_params": [str(root / "in" / "models" / "yolov8n.pt")]})


def odd_and_broken_candidates(root: Path) -> Path:
    """Mining and infer over every odd and broken image and a missing one."""
    images = odd_and_broken_images(root / "src")
    return make_env(root, run_mining=True, run_infer=True, weights=WEIGHTS,
                    candidates=[images[name] for name in (*ODD, *BROKEN)],
                    extra_index_lines=[str(root / "in" / "assets" / "00" / "missing.jpg")],
                    config={"img_size": 128, "mining_algorithm": "entropy", "conf_thres": 0.05})


def model_cases(checkpoints: dict) -> dict:
    garbage = weights_file(b"\x80\x02 not a checkpoint")
    empty = weights_file(b"")
    classify = weights_file(checkpoints["classify"])
    segment = weights_file(checkpoints["segment"])
    voc = voc_names()
    return {
        # weights for mining / infer
        "weights_garbage": Case(300004, "cannot load weights {IN}/models/stage/best.pt",
                                with_weights(mining_with_model, "model_params_path", garbage)),
        "weights_empty_file": Case(300004, "cannot load weights {IN}/models/stage/best.pt",
                                   with_weights(infer_env, "model_params_path", empty)),
        "weights_classification_for_mining": Case(
            300004, "weights {IN}/models/stage/best.pt are a classification ('classify') model; a detection or "
                    "segmentation model is needed",
            with_weights(mining_with_model, "model_params_path", classify)),
        "weights_segmentation_for_infer": Case(
            300004, "model {IN}/models/stage/best.pt is a segmentation ('segment') model, but this image serves "
                    "detection ('detect') models",
            with_weights(infer_env, "model_params_path", segment)),
        # GPUs
        "gpu_absent_mining": Case(300102, "config key 'gpu_id' asks for GPU 7 but",
                                  lambda r: mining_env(r, {"gpu_id": "7", "mining_algorithm": "aldd"}, weights=WEIGHTS)),
        "gpu_absent_infer": Case(300102, "config key 'gpu_id' asks for GPU 3,7 but",
                                 lambda r: infer_env(r, {"gpu_id": "3,7"})),
        "gpu_absent_training": Case(300102, "config key 'gpu_id' asks for GPU 7 but",
                                    lambda r: training_env(r, {"gpu_id": "7"})),
        # images
        "infer_every_image_unreadable": Case(300003, "none of the 3 images could be read", all_unreadable_infer),
        # training config
        "epochs_negative": Case(300001, "config key 'epochs': -3", lambda r: training_env(r, {"epochs": -3})),
        "lr0_above_ultralytics_bound": Case(300001, "config key 'lr0': 5", lambda r: training_env(r, {"lr0": 5})),
        "model_unknown": Case(300001, "config key 'model': 'yolov99x' is not a model Ultralytics knows",
                              lambda r: training_env(r, {"model": "yolov99x"}, weights=None)),
        "model_not_detection": Case(300001, "config key 'model': 'yolov8n-cls' is not a detection model",
                                    lambda r: training_env(r, {"model": "yolov8n-cls"}, weights=None)),
        "args_options_config_file": Case(300001, "'cfg' is set by the executor",
                                         lambda r: training_env(r, {"args_options": "cfg=/etc/passwd"})),
        "pretrained_outside_input": Case(300001, "'pretrained_model_params': '/tmp/yolov8n.pt' is outside",
                                         lambda r: training_env(r, {"pretrained_model_params": ["/tmp/yolov8n.pt"]})),
        # training weights
        "pretrained_missing": Case(300004, "no .pt weights file found among: {IN}/models/none.pt",
                                   lambda r: training_env(r, {"pretrained_model_params": [
                                       str(r / "in" / "models" / "none.pt")]})),
        "pretrained_garbage": Case(300004, "cannot load {IN}/models/stage/best.pt",
                                   with_weights(training_env, "pretrained_model_params", garbage)),
        "pretrained_classification": Case(300004, "{IN}/models/stage/best.pt is a classification ('classify') model",
                                          with_weights(training_env, "pretrained_model_params", classify)),
        "pretrained_segmentation": Case(300004, "{IN}/models/stage/best.pt is a segmentation ('segment') model",
                                        with_weights(training_env, "pretrained_model_params", segment)),
        "training_batch_auto": Case(300001, "config key 'batch_size_per_gpu': 0 (auto) is for mining and infer",
                                    lambda r: training_env(r, {"batch_size_per_gpu": 0})),
        # training index files
        "train_index_missing": Case(300002, "train index file not found: {IN}/none.tsv",
                                    lambda r: edit_env(training_env(r), input={
                                        **yaml.safe_load((r / "in" / "env.yaml").read_text())["input"],
                                        "training_index_file": str(r / "in" / "none.tsv")})),
        "val_index_empty": Case(300002, "the val set is empty ({IN}/val-index.tsv: the index lists no images)",
                                index_edit("val", lambda text, root: "\n\n")),
        "train_index_one_column": Case(300002, "{IN}/train-index.tsv line 1: expected '<image path><TAB>",
                                       index_edit("train", lambda text, root: text.split("\t")[0] + "\n")),
        "train_index_relative": Case(300002, "{IN}/train-index.tsv line 1: 'assets/",
                                     index_edit("train", lambda text, root: text.replace(f"{root}/in/", "", 1))),
        "annotation_missing": Case(300002, "{IN}/train-index.tsv line 1: annotation file not found: {IN}/gone.txt",
                                   index_edit("train", lambda text, root: text.replace(
                                       text.splitlines()[0].split("\t")[1], f"{root}/in/gone.txt", 1))),
        "train_every_image_unreadable": Case(300003, "the train set is empty ({IN}/train-index.tsv: 2 unreadable image)",
                                             unreadable_train_images),
        # annotations
        "ark_three_columns": Case(300002, "line 1: expected 'class, xmin, ymin, xmax, ymax', got '0, 1, 2'",
                                  broken_annotation("ark", "0, 1, 2\n")),
        "ark_not_numeric": Case(300002, "line 2: box corners must be numbers, got '1, 10, ten, 20, 20'",
                                broken_annotation("ark", "1, 10, 10, 20, 20\n1, 10, ten, 20, 20\n")),
        "ark_class_out_of_range": Case(300002, f"line 1: class index 20 is outside class_names (0..{len(voc) - 1})",
                                       broken_annotation("ark", "20, 10, 10, 20, 20, -1.0, 0.0\n")),
        "ark_class_not_integer": Case(300002, "line 1: class index 'dog' is not an integer",
                                      broken_annotation("ark", "dog, 10, 10, 20, 20\n")),
        "voc_without_bndbox": Case(300002, "object 1 ('dog'): bndbox needs numeric xmin, ymin, xmax, ymax",
                                   broken_annotation("voc", "<annotation><object><name>dog</name></object></annotation>")),
        "voc_not_xml": Case(300002, "not valid XML", broken_annotation("voc", "<annotation><object>")),
        "voc_unknown_class": Case(300002, "class name 'unicorn' is not in class_names", broken_annotation(
            "voc", "<annotation><object><name>unicorn</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
                   "<ymax>9</ymax></bndbox></object></annotation>")),
        "coco_dangling_image_id": Case(300002, "coco-annotations.json: annotations refer to image ids not in 'images': 999",
                                       coco_edit(lambda d: d["annotations"].append({**d["annotations"][0], "image_id": 999}))),
        "coco_bbox_malformed": Case(300002, "'bbox' must be [x, y, w, h]",
                                    coco_edit(lambda d: d["annotations"][0].update(bbox=[1, 2]))),
        "coco_image_not_listed": Case(300002, "coco-annotations.json: no entry in 'images' for",
                                      coco_edit(drop_first_image)),
        "coco_not_json": Case(300002, "coco-annotations.json: not a readable COCO json", coco_not_json),
        # succeeds: every image is listed, the broken ones last (see test_mining_and_infer_list_broken_images...)
        "odd_and_broken_images": Case(0, "", odd_and_broken_candidates),
        # NaN (and, before it, the broken images skipped and counted)
        "nan_loss_with_broken_images": Case(300201, "training loss is not finite in epoch 1",
                                            broken_images_in_training),
    }


@pytest.fixture(scope="module")
def model_runs(tmp_path_factory, other_task_checkpoints):
    cases = model_cases(other_task_checkpoints)
    return cases, run_group(tmp_path_factory.mktemp("models"), cases, extra_env={"CUDA_VISIBLE_DEVICES": ""})


MODEL_CASE_NAMES = [n for n, c in model_cases({"classify": Path("c.pt"), "segment": Path("s.pt")}).items() if c.code]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_CASE_NAMES)
def test_bad_model_gpu_or_training_data(model_runs, name):
    cases, runs = model_runs
    assert_failed(runs[name], cases[name].code, cases[name].needle)


@pytest.mark.slow
def test_training_skips_and_counts_broken_images_and_boxes(model_runs):
    _, runs = model_runs
    result = runs["nan_loss_with_broken_images"]
    log = result["log"]
    listed = 4 + len(ODD) + len(BROKEN) + 2  # + the duplicated line and the missing image
    assert (f"train: {4 + len(ODD) + 1} images of {listed} listed (skipped: missing image 1, truncated image 1, "
            "unreadable image 2)") in log
    assert "dropped boxes: inverted (negative size) 1, zero area 1" in log
    index = result["root"] / "in" / "train-index.tsv"
    assets = [line.split("\t")[0] for line in index.read_text().splitlines()]
    skipped = {4 + len(ODD): "truncated image", 5 + len(ODD): "unreadable image", 6 + len(ODD): "unreadable image",
               len(assets) - 1: "missing image"}
    for position, reason in skipped.items():  # each named in a warning with its index line
        assert f"WARNING executor.protocol.dataset: {index} line {position + 1}: {reason}: {assets[position]}, skipped" in log
    import numpy as np

    cache = result["root"] / "out" / "yolo_dataset" / "labels" / "train.cache"
    found, missing, empty, corrupt, total = np.load(cache, allow_pickle=True).item()["results"]
    assert (found, corrupt, total) == (4 + len(ODD) + 1, 0, 4 + len(ODD) + 1)  # Ultralytics reads every odd image


# ---------------------------------------------------------------- the segmentation image (object_type 4)

def seg_training_env(root: Path, edit: Callable | None = None) -> Path:
    """seg-coco:raw training data from coco-val (2 train, 1 val images), its json changed by `edit`."""
    from tests.ymir_builders import write_coco_val_dataset

    names = write_coco_val_dataset(root / "in", 2, 1)
    path = root / "in" / "annotations" / "coco-annotations.json"
    if edit:
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    (root / "in" / "models").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(WEIGHTS, root / "in" / "models" / "yolov8n.pt")
    return write_training_env(root, names, {"epochs": 1, "img_size": 64, "batch_size_per_gpu": 2,
                                            "num_workers_per_gpu": 0, "export_format": "seg-coco:raw",
                                            "pretrained_model_params": [str(root / "in" / "models" / "yolov8n.pt")]})


def first_polygon_annotation(data: dict) -> dict:
    return next(a for a in data["annotations"] if not a.get("iscrowd") and isinstance(a["segmentation"], list))


def seg_cases(seg_weights: Path) -> dict:
    seg = weights_file(seg_weights, "yolov8n-seg.pt")
    broken_polygon = lambda d: first_polygon_annotation(d).update(segmentation=[[1, 2, 3]])  # noqa: E731
    outside = lambda d: first_polygon_annotation(d).update(segmentation=[[-90, -90, -50, -90, -50, -40]])  # noqa: E731
    unknown = lambda d: d["categories"].append({"id": 999, "name": "unicorn"}) or \
        first_polygon_annotation(d).update(category_id=999)  # noqa: E731
    return {
        "seg_detection_model_for_infer": Case(
            300004, "model {IN}/models/yolov8n.pt is a detection ('detect') model, but this image serves "
                    "segmentation ('segment') models", lambda r: infer_env(r)),
        "seg_detection_model_for_mining": Case(
            300004, "is a detection ('detect') model, but this image serves segmentation ('segment') models",
            lambda r: mining_env(r, {"mining_algorithm": "aldd"}, weights=WEIGHTS)),
        "seg_config_says_detection": Case(
            300001, "config key 'object_type': 2 (detection), but this image serves object_type 4",
            with_weights(lambda r: infer_env(r, {"object_type": 2}), "model_params_path", seg)),
        "seg_infer_every_image_unreadable": Case(
            300003, "none of the 3 images could be read",
            with_weights(all_unreadable_infer, "model_params_path", seg)),
        "seg_polygon_broken": Case(
            300002, "coco-annotations.json annotation id", lambda r: seg_training_env(r, broken_polygon)),
        "seg_mask_outside_image": Case(
            300002, "the mask lies outside the image", lambda r: seg_training_env(r, outside)),
        "seg_unknown_class": Case(
            300002, "category id 999 'unicorn' is not in class_names", lambda r: seg_training_env(r, unknown)),
        # succeeds: every image listed in both results, the broken ones with no annotations
        "seg_odd_and_broken_images": Case(0, "", with_weights(odd_and_broken_candidates, "model_params_path", seg)),
    }


@pytest.fixture(scope="module")
def seg_runs(tmp_path_factory, seg_weights):
    from executor.protocol.templates import TEMPLATES_VAR, family_templates
    from executor.shared import SEGMENTATION

    cases = seg_cases(seg_weights)
    return cases, run_group(tmp_path_factory.mktemp("seg"), cases, extra_env={
        "CUDA_VISIBLE_DEVICES": "", TEMPLATES_VAR: family_templates(SEGMENTATION)})


SEG_CASE_NAMES = [n for n, c in seg_cases(Path("s.pt")).items() if c.code]


@pytest.mark.slow
@pytest.mark.parametrize("name", SEG_CASE_NAMES)
def test_bad_input_to_the_segmentation_image(seg_runs, name):
    cases, runs = seg_runs
    message = assert_failed(runs[name], cases[name].code, cases[name].needle)
    if name == "seg_polygon_broken":
        assert "polygon is broken: 3 coordinates, an odd count" in message


@pytest.mark.slow
def test_the_segmentation_image_lists_broken_images_and_keeps_going(seg_runs):
    result = seg_runs[1]["seg_odd_and_broken_images"]
    assert_succeeded(result)
    root = result["root"]
    keys = candidate_keys(root / "in" / "env.yaml")
    rows = (root / "out" / "result.tsv").read_text().splitlines()
    assert sorted(r.split("\t")[0] for r in rows) == sorted(keys)
    coco = json.loads((root / "out" / "infer-result.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == [os.path.basename(k) for k in keys]
    broken = {im["id"] for im in coco["images"] if im["file_name"] in {os.path.basename(k) for k in keys[len(ODD):]}}
    assert broken and all((im["width"], im["height"]) == (0, 0) for im in coco["images"] if im["id"] in broken)
    assert coco["annotations"] and not {a["image_id"] for a in coco["annotations"]} & broken
    assert all(a["segmentation"]["size"] and a["segmentation"]["counts"] for a in coco["annotations"])


# ---------------------------------------------------------------- broken images in mining and infer

@pytest.fixture(scope="module")
def broken_image_run(model_runs):
    return model_runs[1]["odd_and_broken_images"]


@pytest.mark.slow
def test_mining_and_infer_list_broken_images_and_keep_going(broken_image_run):
    assert_succeeded(broken_image_run)
    root, log = broken_image_run["root"], broken_image_run["log"]
    keys = candidate_keys(root / "in" / "env.yaml")
    odd, broken = keys[:len(ODD)], keys[len(ODD):]
    rows = [line.split("\t") for line in (root / "out" / "result.tsv").read_text().splitlines()]
    assert sorted(r[0] for r in rows) == sorted(keys)
    assert sorted(r[0] for r in rows[-len(broken):]) == sorted(broken)  # the broken ones last, score -1
    assert all(r[1] == "-1.0" for r in rows[-len(broken):]) and all(float(r[1]) >= 0 for r in rows[:len(odd)])
    detection = json.loads((root / "out" / "infer-result.json").read_text())["detection"]
    assert sorted(detection) == sorted(os.path.basename(k) for k in keys)
    assert all(detection[os.path.basename(k)]["boxes"] == [] for k in broken)
    assert any(detection[os.path.basename(k)]["boxes"] for k in odd)  # the odd ones were really seen
    for key in broken:  # each named in a warning, once: mining and infer share one pass over the images
        assert sum(f"WARNING executor.engine.loop: skipping unreadable image" in line and key in line
                   for line in log.splitlines()) == 1, key


# ---------------------------------------------------------------- mappings that need a GPU to happen for real

@pytest.mark.parametrize("make, code", [
    (lambda torch: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 300103),
    (lambda torch: RuntimeError("CUDA error: out of memory"), 300103),
    (lambda torch: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
     300103),
    (lambda torch: RuntimeError("CUDA error: no kernel image is available for execution on the device"), 300101),
    (lambda torch: RuntimeError("The NVIDIA driver on your system is too old (found version 11040)"), 300101),
    (lambda torch: RuntimeError("CUDA driver version is insufficient for CUDA runtime version"), 300101),
    (lambda torch: RuntimeError("No CUDA GPUs are available"), 300102),
    (lambda torch: RuntimeError("CUDA error: invalid device ordinal"), 300102),
    (lambda torch: RuntimeError("Found no NVIDIA driver on your system."), 300102),
    (lambda torch: ValueError("something else"), 160004),
])
def test_framework_errors_map_to_codes(make, code):
    import torch

    from executor.errors import error_code

    assert error_code(make(torch)) == code


def test_out_of_memory_in_the_loop_names_the_batch_size():
    import torch

    from executor.errors import OutOfMemory, error_code
    from executor.pipeline.passes import Pass
    from executor.protocol.settings import build_settings

    class OutOfMemoryScorer:
        def score(self, batch, detector):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    settings = build_settings("mining", {"img_size": 64, "batch_size_per_gpu": 8, "num_workers_per_gpu": 0})
    with pytest.raises(OutOfMemory) as err:
        Pass({"mining": settings}, scorer=OutOfMemoryScorer()).run([str(COCO_JPEG)] * 3, lambda done: None, {})
    assert error_code(err.value) == 300103
    assert "config key 'batch_size_per_gpu' 8" in str(err.value) and "64x64" in str(err.value)
    assert "Tried to allocate 20.00 GiB" in str(err.value)


class FakeYolo:
    """Stands in for ultralytics.YOLO in train_detector: `train` raises what the trainer would."""
    error: BaseException = RuntimeError()

    def __init__(self, source, task=None):
        self.task = "detect"

    def add_callback(self, event, callback):
        pass

    def train(self, **kwargs):
        raise self.error


@pytest.mark.parametrize("error, code, needle", [
    (RuntimeError("Training failed: NaN persisted for 4 epochs"), 300201, "training diverged: Training failed: NaN"),
    (RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB"), 300103,
     "out of memory training with batch 64 (config key 'batch_size_per_gpu' x GPUs) at img_size 1280"),
])
def test_training_nan_and_out_of_memory_map_to_codes(monkeypatch, tmp_path, error, code, needle):
    import ultralytics

    from executor.engine import trainer as adapter
    from executor.errors import error_code, one_line

    monkeypatch.setattr(ultralytics, "YOLO", FakeYolo)
    monkeypatch.setattr(FakeYolo, "error", error)
    with pytest.raises(Exception) as err:
        adapter.train_detector("yolov8n.yaml", str(tmp_path / "data.yaml"), {"batch": 64, "imgsz": 1280},
                               hooks=None, run_dir=str(tmp_path / "run"))
    assert error_code(err.value) == code and needle in one_line(err.value)


def test_unexpected_errors_name_where_they_were_raised():
    from executor.errors import one_line

    try:
        {}["missing"]
    except KeyError as exc:
        message = one_line(exc)
    assert message.startswith("KeyError: 'missing' (raised at ") and "test_failures.py:" in message


def test_an_error_a_ctrl_c_caused_counts_as_the_ctrl_c(tmp_path, monkeypatch):
    """A KeyboardInterrupt that lands in a lock's release surfaces as RuntimeError('release unlocked lock') with the
    interrupt as its context: scoring still raises Interrupted (what the shards folder keeps; the command exits
    130), and any other error stays an error."""
    from executor.errors import Interrupted, from_ctrl_c
    from executor.pipeline import scoring
    from executor.pipeline.job import Job
    from executor.pipeline.passes import Models
    from tests.pipeline.plans import mining_plan

    def caused_by_ctrl_c(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("release unlocked lock")

    with pytest.raises(RuntimeError) as raised:
        caused_by_ctrl_c()
    assert from_ctrl_c(raised.value) and from_ctrl_c(KeyboardInterrupt())
    assert not from_ctrl_c(RuntimeError("release unlocked lock")) and not from_ctrl_c(ValueError("x"))
    job = Job(candidates=[str(p) for p in coco_images(3)], work_dir=str(tmp_path))
    plan = mining_plan(job, {"mining_algorithm": "random", "class_names": ["a"], "shard_size": 64})
    monkeypatch.setattr(scoring, "run_workers", caused_by_ctrl_c)
    with pytest.raises(Interrupted):
        scoring.score_shards(plan, lambda f: None, Models())
    monkeypatch.setattr(scoring, "run_workers", lambda *a, **k: {}["missing"])
    with pytest.raises(KeyError):
        scoring.score_shards(plan, lambda f: None, Models())


# ---------------------------------------------------------------- pieces of the error path

def test_a_failed_training_removes_the_stages_it_wrote(tmp_path):
    sys.path.insert(0, str(REPO))
    import start
    from executor.protocol.env import parse_env

    models = tmp_path / "out" / "models"
    (models / "earlier").mkdir(parents=True)
    env = parse_env({"run_training": True, "output": {"models_dir": str(models),
                                                      "training_result_file": str(models / "result.yaml")}},
                    "env.yaml", start.DEFAULT_INPUT, start.DEFAULT_OUTPUT)
    created = start.CreatedOutputs(env)
    for stage in ("best", "epoch_2", "attachments/onnx"):
        (models / stage).mkdir(parents=True)
        (models / stage / "w.pt").write_bytes(b"w")
    (models / "result.yaml").write_text("best_stage_name: best\n")
    (models / "best.pt").write_bytes(b"w")
    created.remove()
    assert sorted(os.listdir(models)) == ["earlier"]


@pytest.mark.parametrize("given, expected", [
    ("best.pt", "{IN}/models/best.pt"),
    ("stage/../best.pt", "{IN}/models/best.pt"),
    ("{IN}/models/s/best.pt", "{IN}/models/s/best.pt"),
    ("/in/models/s/best.pt", None),  # input.root_dir is {IN} here
    ("../config.yaml", None),
    ("{IN}/../out/best.pt", None),
    ("/in/../etc/passwd", None),
    ("/opt/quarry/weights/yolov8n.pt", None),
])
def test_model_paths_are_confined_to_the_input_directory(tmp_path, given, expected):
    import start
    from executor.errors import ConfigError
    from executor.protocol.env import confine_model_paths, parse_env

    indir = str(tmp_path / "in")
    env = parse_env({"run_mining": True, "input": {"root_dir": indir, "models_dir": f"{indir}/models"}},
                    "env.yaml", start.DEFAULT_INPUT, start.DEFAULT_OUTPUT)
    config = {"model_params_path": [given.replace("{IN}", indir)], "img_size": 64}
    if expected is None:
        with pytest.raises(ConfigError, match="config key 'model_params_path'.* is outside"):
            confine_model_paths(config, env)
    else:
        assert confine_model_paths(config, env) == {"model_params_path": [expected.replace("{IN}", indir)],
                                                    "img_size": 64}


def test_local_lists_may_hold_relative_paths(tmp_path):
    from executor.errors import DatasetError
    from executor.protocol.index import read_candidate_index

    listing = tmp_path / "list.txt"
    listing.write_text("a.jpg\r\nsub/b.jpg\n\n/abs/c.jpg\n")
    assert list(read_candidate_index(str(listing), relative_to_index=True)) == [
        str(tmp_path / "a.jpg"), str(tmp_path / "sub" / "b.jpg"), "/abs/c.jpg"]
    with pytest.raises(DatasetError, match=r"list.txt line 1: 'a.jpg' is a relative path"):
        read_candidate_index(str(listing))


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_fails_through_the_error_path(tmp_path, processes):
    import signal
    import time

    env = make_env(tmp_path, run_mining=True, weights=WEIGHTS, candidates=coco_images(),
                   config={"mining_algorithm": "entropy", "img_size": 640, "cpu_processes": processes})
    process = subprocess.Popen([sys.executable, str(REPO / "start.py"), "--env", str(env)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # one process: once it started; two: once a worker scores (the elastic agent then holds the signal)
    started = tmp_path / "out" / ("monitor.txt" if processes == 1 else "shards/progress-*.txt")
    deadline = time.monotonic() + 120
    while not list(started.parent.glob(started.name)) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output[-2000:]
    lines = (tmp_path / "out" / "monitor.txt").read_text().splitlines()
    assert lines[0].split("\t")[3:] == ["4", "160004"] and "terminated by signal 15 (SIGTERM)" in lines[1]
    assert not (tmp_path / "out" / "result.tsv").exists()
    assert not list((tmp_path / "out").glob("shards/*-*.json")) + list((tmp_path / "out").glob("shards/progress-*"))


if __name__ == "__main__":
    drive(sys.argv[1], sys.argv[2])
