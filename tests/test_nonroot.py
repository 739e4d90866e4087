"""The platform runs the image as an arbitrary uid with no passwd entry, no HOME and a read-only /in."""
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.platform import REPO, coco_images, make_env, monitor_fields

UID = GID = 54321  # no passwd entry


def snapshot(folder: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture
def shared_tmp():
    """A temp dir the unprivileged uid can traverse (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="quarry-nonroot-"))
    root.chmod(0o755)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


def run_as_nobody(env_path: Path) -> subprocess.CompletedProcess:
    """start.py as UID:GID. The interpreter may live under root's 0700 home here, so the process keeps
    CAP_DAC_READ_SEARCH (read and traverse anything) but no right to write anywhere it doesn't own."""
    drop = ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    clean_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # no HOME, nothing inherited
    return subprocess.run([*drop, sys.executable, str(REPO / "start.py"), "--env", str(env_path)], cwd="/",
                          env=clean_env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_mining_and_infer_as_unprivileged_uid(shared_tmp):
    env = make_env(shared_tmp, run_mining=True, run_infer=True, candidates=coco_images(3),
                   config={"img_size": 320, "mining_algorithm": "entropy"})
    indir, outdir = shared_tmp / "in", shared_tmp / "out"
    for path in [indir, *indir.rglob("*")]:  # read-only for everyone but root
        mode = path.stat().st_mode
        path.chmod((mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH) & ~0o222 | (0o111 if path.is_dir() else 0))
    os.chown(outdir, UID, GID)
    before_in, before_code = snapshot(indir), snapshot(REPO / "executor") | snapshot(REPO / "mining")
    done = run_as_nobody(env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (outdir / "result.tsv").stat().st_uid == UID
    assert (outdir / "infer-result.json").exists() and monitor_fields(env)[3] == "2"
    assert snapshot(indir) == before_in
    assert snapshot(REPO / "executor") | snapshot(REPO / "mining") == before_code
