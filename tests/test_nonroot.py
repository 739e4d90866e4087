"""The platform runs the image as an arbitrary uid with no passwd entry, no HOME and a read-only /in."""
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.platform import REPO, WEIGHTS, coco_images, make_env, monitor_fields

UID = GID = 54321  # no passwd entry


def snapshot(folder: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture
def shared_tmp():
    """A temp dir the unprivileged uid can traverse (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="quarry-nonroot-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)  # root removes what the uid wrote and the read-only /in alike


def run_as_nobody(env_path: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """start.py as UID:GID. The interpreter may live under root's 0700 home here, so the process keeps
    CAP_DAC_READ_SEARCH (read and traverse anything) but no right to write anywhere it doesn't own."""
    drop = ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    clean_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **(extra_env or {})}  # no HOME, nothing inherited
    return subprocess.run([*drop, sys.executable, str(REPO / "start.py"), "--env", str(env_path)], cwd="/",
                          env=clean_env, capture_output=True, text=True, timeout=600)


def read_only_in_and_own_out(root: Path) -> None:
    """/in readable by anyone and writable by no one but root; /out owned by the uid, as the platform mounts them."""
    indir = root / "in"
    for path in [indir, *indir.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod((mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH) & ~0o222 | (0o111 if path.is_dir() else 0))
    (root / "out").mkdir(exist_ok=True)
    os.chown(root / "out", UID, GID)


def code_snapshot() -> dict:
    return snapshot(REPO / "executor") | snapshot(REPO / "mining") | snapshot(REPO / "templates")


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")


@pytest.mark.slow
@needs_root
@pytest.mark.parametrize("family", ["detection", "segmentation"])
def test_mining_and_infer_as_unprivileged_uid(shared_tmp, family, request):
    """Both families: the segmentation image (its templates, as QUARRY_TEMPLATES names them in the image) with a
    seg model writes the COCO result with masks."""
    from executor.protocol.templates import TEMPLATES_VAR, family_templates
    from executor.shared import SEGMENTATION

    seg = family == "segmentation"
    env = make_env(shared_tmp, run_mining=True, run_infer=True, candidates=coco_images(3),
                   weights=request.getfixturevalue("seg_weights") if seg else WEIGHTS,
                   config={"img_size": 160, "mining_algorithm": "cald" if seg else "entropy"})
    indir, outdir = shared_tmp / "in", shared_tmp / "out"
    read_only_in_and_own_out(shared_tmp)
    before_in, before_code = snapshot(indir), snapshot(REPO / "executor") | snapshot(REPO / "mining")
    done = run_as_nobody(env, {TEMPLATES_VAR: family_templates(SEGMENTATION)} if seg else None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (outdir / "result.tsv").stat().st_uid == UID
    assert (outdir / "infer-result.json").exists() and monitor_fields(env)[3] == "2"
    assert ("annotations" in (outdir / "infer-result.json").read_text()) == seg
    assert snapshot(indir) == before_in
    assert snapshot(REPO / "executor") | snapshot(REPO / "mining") == before_code


@pytest.mark.slow
@needs_root
def test_training_as_unprivileged_uid(shared_tmp):
    from tests.ymir_builders import voc_items, voc_names, write_dataset, write_training_env

    items = voc_items(6)
    write_dataset(shared_tmp / "in", items[:4], items[4:], voc_names(), "ark")
    (shared_tmp / "in" / "models").mkdir(parents=True)
    shutil.copyfile(WEIGHTS, shared_tmp / "in" / "models" / "yolov8n.pt")
    env = write_training_env(shared_tmp, voc_names(), {
        "epochs": 1, "img_size": 64, "batch_size_per_gpu": 4, "num_workers_per_gpu": 1, "save_best_only": True,
        "pretrained_model_params": [str(shared_tmp / "in" / "models" / "yolov8n.pt")]})
    indir, outdir = shared_tmp / "in", shared_tmp / "out"
    read_only_in_and_own_out(shared_tmp)
    before_in, before_code = snapshot(indir), code_snapshot()
    done = run_as_nobody(env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = outdir / "models" / "result.yaml"
    assert result.stat().st_uid == UID and (outdir / "models" / "best" / "best.pt").stat().st_uid == UID
    assert monitor_fields(env)[2:] == ["1.0000", "2", "0"]
    assert any((outdir / "tensorboard").iterdir())
    assert snapshot(indir) == before_in
    assert code_snapshot() == before_code
    scratch = Path("/tmp") / f"quarry-{UID}"  # settings and caches of Ultralytics, matplotlib, torch
    assert scratch.is_dir() and scratch.stat().st_uid == UID
