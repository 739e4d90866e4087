"""Builders for ymir-style /in and /out directories, and a runner for `start.py` in platform mode."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "weights" / "yolov8n.pt"
COCO_VAL = SHARED / "data" / "coco-val"
VOC = SHARED / "data" / "voc2007"


def coco_names() -> list[str]:
    data = json.loads((COCO_VAL / "annotations.json").read_text())
    return [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]


def coco_images(count: int | None = None) -> list[Path]:
    return sorted((COCO_VAL / "images").glob("*.jpg"))[:count]


def image_folder(folder: Path, count: int) -> Path:
    """A new folder holding copies of the first `count` COCO val images under their own names (a --source)."""
    folder.mkdir(parents=True)
    for source in coco_images(count):
        shutil.copy(source, folder / source.name)
    return folder


def add_assets(assets_dir: Path, sources: list[Path]) -> list[str]:
    """Copy images into sha1-named files under two-character folders, as the platform exports them."""
    paths = []
    for src in sources:
        data = src.read_bytes()
        digest = hashlib.sha1(data).hexdigest()
        ext = src.suffix.lstrip(".") or "unknown"
        target = assets_dir / digest[-2:] / f"{digest}.{ext}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        paths.append(str(target))
    return paths


def make_env(root: Path, *, run_mining=False, run_infer=False, run_training=False, config=None,
             candidates=None, protocol_version="1.1.0", weights=WEIGHTS, extra_index_lines=(),
             task_id="t-test") -> Path:
    """A complete /in + /out pair under `root`; returns the env.yaml path. Paths are absolute. The one env.yaml
    writer of the tests. A training run (tests.ymir_builders.write_training_env) reads the dataset already
    written under `root`/in (train-index.tsv, val-index.tsv): no candidates, class names or models then."""
    indir, outdir = root / "in", root / "out"
    (indir / "models").mkdir(parents=True, exist_ok=True)
    outdir.mkdir(parents=True, exist_ok=True)
    model_paths = []
    if weights:
        target = indir / "models" / Path(weights).name
        shutil.copy(weights, target)
        model_paths = [str(target)]
    training = run_training and not (run_mining or run_infer)
    index = indir / "candidate-index.tsv"
    if not training:
        keys = add_assets(indir / "assets", candidates if candidates is not None else coco_images(6))
        index.write_text("".join(k + "\n" for k in [*keys, *extra_index_lines]))
    defaults = {} if training else {"class_names": coco_names(), "model_params_path": model_paths}
    cfg = {"gpu_id": "", "gpu_count": 0, "task_id": task_id, **defaults, **(config or {})}
    (indir / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {
        "task_id": task_id, "run_mining": run_mining, "run_infer": run_infer, "run_training": run_training,
        "input": {"root_dir": str(indir), "assets_dir": str(indir / "assets"), "models_dir": str(indir / "models"),
                  "annotations_dir": str(indir / "annotations"), "config_file": str(indir / "config.yaml"),
                  "candidate_index_file": "" if training else str(index),
                  "training_index_file": str(indir / "train-index.tsv") if training else "",
                  "val_index_file": str(indir / "val-index.tsv") if training else ""},
        "output": {"root_dir": str(outdir), "models_dir": str(outdir / "models"),
                   "tensorboard_dir": str(outdir / "tensorboard"),
                   "training_result_file": str(outdir / "models" / "result.yaml"),
                   "mining_result_file": str(outdir / "result.tsv"),
                   "infer_result_file": str(outdir / "infer-result.json"),
                   "monitor_file": str(outdir / "monitor.txt")},
    }
    if protocol_version:
        env["protocol_version"] = protocol_version
    (indir / "env.yaml").write_text(yaml.safe_dump(env))
    return indir / "env.yaml"


def run_start(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "start.py"), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def run_platform(env_path: Path, environ: dict | None = None, default_monitor: Path | None = None) -> tuple[int, str]:
    """`start.py --env ENV_PATH` in this process (start.run_platform, what main runs after its set-up): the exit
    status and what the run logged, in start.py's log format. `environ`: variables set during the run;
    `default_monitor`: run as the platform does (no --env), with this file for /out/monitor.txt. The SIGTERM
    handler the run installs is put back afterwards."""
    import io
    import logging
    import os
    import signal

    import start

    stream, root = io.StringIO(), logging.getLogger()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved_level, saved_sigterm = root.level, signal.getsignal(signal.SIGTERM)
    saved_env = {key: os.environ.get(key) for key in environ or {}}
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    os.environ.update(environ or {})
    try:
        saved_monitor = start.DEFAULT_MONITOR
        start.DEFAULT_MONITOR = str(default_monitor) if default_monitor else saved_monitor
        try:
            status = start.run_platform(str(env_path), default_monitor=default_monitor is not None)
        finally:
            start.DEFAULT_MONITOR = saved_monitor
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
        signal.signal(signal.SIGTERM, saved_sigterm)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return status, stream.getvalue()


def run_cli(capsys, *argv) -> tuple[int, str]:
    """The local command line in this process (what `start.py COMMAND ...` runs after its set-up, without
    touching logging): its exit status and what it wrote to stderr."""
    from executor.cli import commands as cli

    status = cli.run(cli.build_parser().parse_args([str(a) for a in argv]))
    return status, capsys.readouterr().err


def monitor_fields(env_path: Path) -> list[str]:
    text = (env_path.parent.parent / "out" / "monitor.txt").read_text()
    return text.splitlines()[0].split("\t")


def read_result_tsv(env_path: Path) -> list[tuple[str, float]]:
    lines = (env_path.parent.parent / "out" / "result.tsv").read_text().splitlines()
    return [(line.split("\t")[0], float(line.split("\t")[1])) for line in lines]


def template_detector(img_size: int = 640, weights=WEIGHTS, **overrides):
    """The real detector with the infer template's post-processing (what a run with defaults loads)."""
    from executor.engine.loading import load_detector
    from executor.protocol.settings import build_settings

    s = build_settings("infer", {"img_size": img_size, **overrides})
    return load_detector(str(weights), s.backend, s.gpu_id, s.img_size, conf_thres=s.conf_thres,
                         iou_thres=s.iou_thres, max_det=s.max_det, class_names=s.class_names)


def batch_of(paths, detector):
    """A mining.base.Batch of image files letterboxed for `detector` (one canvas shape required)."""
    import numpy as np

    from executor.engine.images import read_image
    from mining.base import Batch

    images = [read_image(str(p)) for p in paths]
    boxed = [detector.letterbox(image) for image in images]
    return Batch([str(p) for p in paths], images, np.stack([c for c, _ in boxed]), [b for _, b in boxed])


def fake_detections(rows, num_classes: int):
    """Detections of (box xyxy, conf, cls) rows, each class vector holding only its predicted class."""
    import numpy as np

    from mining.base import Detections

    probs = np.zeros((len(rows), num_classes), np.float32)
    for i, (_, conf, cls) in enumerate(rows):
        probs[i, cls] = conf
    return Detections(np.asarray([r[0] for r in rows], np.float32).reshape(-1, 4),
                      np.asarray([r[1] for r in rows], np.float32), np.asarray([r[2] for r in rows], np.int64), probs)
