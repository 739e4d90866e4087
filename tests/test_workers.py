"""Several worker processes, torchrun across "nodes", resume after kill -9, a failing worker: through start.py.
What needs one process only (one pass for mining and infer, shards invalidated by a changed parameter, a model
that fails to load) is driven in process with the fake detector: tests/pipeline/test_tasks.py.

Scores are bit-identical for the same per-process thread count (a float32 convolution's last bits depend on
how many threads split it), so the one-worker reference runs with the thread count each worker gets.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from tests.platform import COCO_VAL, REPO, WEIGHTS, coco_images, make_env, monitor_fields, run_start

pytestmark = pytest.mark.slow
IMAGES = coco_images(12)
SMALL = ["--img-size", "160", "--set", "shard_size=2"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A folder with 12 coco-val images (so --images lists exactly them)."""
    folder = tmp_path_factory.mktemp("pool")
    for image in IMAGES:
        os.symlink(image, folder / image.name)
    return folder


def mine_pool(pool, out, *extra, algorithm="entropy", **kwargs):
    return run_start("mine", "--weights", WEIGHTS, "--images", pool, "--algorithm", algorithm, "--out", out,
                     *SMALL, *extra, **kwargs)


@pytest.mark.parametrize("algorithm", ["random", "entropy", "aldd", "cald"])
def test_two_cli_workers_write_what_one_writes(pool, tmp_path, algorithm):
    one, two = tmp_path / "one.tsv", tmp_path / "two.tsv"
    assert mine_pool(pool, one, "--set", "cpu_threads=1", algorithm=algorithm).returncode == 0
    done = mine_pool(pool, two, "--nproc", "2", "--set", "cpu_threads=2", "--drop-shards", algorithm=algorithm)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "starting 2 workers" in done.stdout
    assert two.read_bytes() == one.read_bytes() and len(one.read_text().splitlines()) == len(IMAGES)
    assert not (tmp_path / "two.tsv.shards").exists()  # --drop-shards: removed after the merge
    kept = os.listdir(tmp_path / "one.tsv.shards")  # by default the scores stay for a re-selection, nothing else
    assert kept and all(re.fullmatch(r"mining-\d{6}\.(txt|npz)", name) for name in kept)


def test_platform_cpu_processes_give_the_same_mining_selection_and_infer(tmp_path):
    """Two CPU worker processes (one thread each, like the one-process run) write the same files as one, the
    diverse selection (from the workers' side files) and the raw scores included."""
    results = []
    for processes, threads in ((1, 1), (2, 2)):
        root = tmp_path / f"p{processes}"
        env = make_env(root, run_mining=True, run_infer=True, candidates=IMAGES,
                       config={"img_size": 160, "shard_size": 3, "cpu_processes": processes, "cpu_threads": threads,
                               "selection": "diverse"})
        done = run_start("--env", env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert monitor_fields(env)[2:] == ["1.0000", "2", "0"]
        assert ("starting 2 workers" in done.stdout) == (processes == 2)
        results.append([(root / "out" / name).read_text().replace(str(root), "ROOT")
                        for name in ("result.tsv", "mining-scores.tsv", "infer-result.json")])
    assert results[0] == results[1]  # the same images under the same sha1 asset names in both /in folders


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_on_one_machine(pool, tmp_path):
    reference = tmp_path / "reference.tsv"
    assert mine_pool(pool, reference, "--set", "cpu_threads=1").returncode == 0
    out, port = tmp_path / "shared" / "ranked.tsv", free_port()
    out.parent.mkdir()
    nodes = []
    for node in range(2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                   "--rdzv-id", "quarry-test", str(REPO / "start.py"), "mine", "--weights", str(WEIGHTS),
                   "--images", str(pool), "--algorithm", "entropy", "--out", str(out), *SMALL,
                   "--set", "cpu_threads=1"]
        nodes.append(subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(logs)[-4000:]
    assert out.read_bytes() == reference.read_bytes()


def test_kill_9_then_rerun_scores_only_the_missing_shards(pool, tmp_path):
    reference, out = tmp_path / "reference.tsv", tmp_path / "ranked.tsv"
    assert mine_pool(pool, reference, algorithm="cald").returncode == 0
    process = subprocess.Popen([sys.executable, str(REPO / "start.py"), "mine", "--weights", str(WEIGHTS),
                                "--images", str(pool), "--algorithm", "cald", "--out", str(out), *SMALL],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shards = tmp_path / "ranked.tsv.shards"
    deadline = time.monotonic() + 300
    while len(list(shards.glob("mining-*.txt"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in shards.glob("mining-*.txt")}
    assert 3 <= len(kept) < 6 and not out.exists()
    (shards / ".half-written.tmp").write_text("x")  # what a kill during a write leaves: never read
    done = mine_pool(pool, out, algorithm="cald")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(kept)} of 6 shards are complete from an earlier run" in done.stdout
    assert out.read_bytes() == reference.read_bytes()


def test_a_failing_worker_ends_the_task_with_its_own_code(tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(  # rank 1 fails as a broken model would, rank 0 would run for long
        f"import os, sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "import executor.pipeline.passes as t\n"
        "from executor.errors import ModelError\n"
        "loading = t.Models.detector\n"
        "def broken(*a, **k):\n"
        "    if os.environ.get('LOCAL_RANK') == '1':\n"
        "        raise ModelError('injected: rank 1 cannot load its model')\n"
        "    return loading(*a, **k)\n"
        "t.Models.detector = broken\n")
    env_path = make_env(tmp_path, run_mining=True, candidates=coco_images(100),
                        config={"img_size": 640, "shard_size": 1, "cpu_processes": 2, "mining_algorithm": "cald"})
    started = time.monotonic()
    done = run_start("--env", env_path, env=dict(os.environ, PYTHONPATH=str(hooks)))
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    fields = monitor_fields(env_path)
    assert fields[3:] == ["4", "300004"], fields
    message = (tmp_path / "out" / "monitor.txt").read_text().splitlines()[1]
    assert "worker 1 failed: injected: rank 1 cannot load its model" in message
    assert not (tmp_path / "out" / "result.tsv").exists()
    assert elapsed < 45, elapsed  # rank 0 alone needs minutes for 100 cald images at 640
    assert yaml.safe_load((env_path.parent / "config.yaml").read_text())["cpu_processes"] == 2


@pytest.mark.parametrize("whom", ["the launcher", "every process (a terminal's Ctrl-C)"])
def test_ctrl_c_with_two_workers_is_one_line_and_leaves_only_finished_shards(tmp_path, whom):
    out, shards = tmp_path / "ranked.tsv", tmp_path / "ranked.tsv.shards"
    command = [sys.executable, str(REPO / "start.py"), "mine", "--model", str(WEIGHTS), "--source",
               str(COCO_VAL / "images"), "--out", str(out), "--imgsz", "160", "--nproc", "2", "--set", "shard_size=8"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(shards.glob("mining-*.txt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    if whom == "the launcher":
        process.send_signal(signal.SIGINT)
    else:
        os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout[-3000:] + stderr[-3000:]
    for needle in ("Traceback", "SignalException", "site-packages", "death signal"):
        assert needle not in stdout + stderr, stdout[-3000:] + stderr[-3000:]
    kept = sorted(path.name for path in shards.glob("mining-*.txt"))
    side_files = [name.replace(".txt", ".npz") for name in kept]  # what the report reads
    assert kept and sorted(os.listdir(shards)) == sorted(kept + side_files)  # no error-*.json, progress, temp file
    images = sum(len((shards / name).read_text().splitlines()) - 1 for name in kept)  # a header, then one per image
    assert stderr.strip().splitlines()[-1] == (f"interrupted: {len(kept)} of 26 shards ({images} images) are "
                                               f"finished and kept in {shards}; run the same command again to resume")
