"""start.py in platform mode, end to end in temporary directories: the one run of the real start.py process with
the real yolov8n (mining and infer, each algorithm), and a missing env.yaml (in process). The failures and the
runs without a model are in tests/test_failures.py."""
import json

import pytest

from tests.platform import coco_images, make_env, monitor_fields, read_result_tsv, run_platform, run_start

ALGORITHMS = ["random", "entropy", "aldd", "cald"]
FAST = {"img_size": 320}


def candidates(env_path):
    return [line for line in (env_path.parent / "candidate-index.tsv").read_text().splitlines() if line]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_mining_and_infer_in_one_run(tmp_path, algorithm):
    env = make_env(tmp_path, run_mining=True, run_infer=True, config={**FAST, "mining_algorithm": algorithm},
                   candidates=coco_images(5), protocol_version="1.0.0")
    done = run_start("--env", env)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = read_result_tsv(env)
    assert sorted(path for path, _ in rows) == sorted(candidates(env))  # every candidate once, verbatim
    scores = [score for _, score in rows]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    detection = json.loads((tmp_path / "out" / "infer-result.json").read_text())["detection"]
    assert sorted(detection) == sorted(p.rsplit("/", 1)[1] for p in candidates(env))
    assert all("annotations" in entry for entry in detection.values())  # protocol 1.0.0 → annotations
    assert monitor_fields(env)[2:] == ["1.0000", "2", "0"]


def test_missing_env_yaml(tmp_path):
    status, log = run_platform(tmp_path / "nowhere" / "env.yaml")  # --env given: no monitor to write to
    assert status == 1
    assert f"failed with code 300001: env.yaml not found: {tmp_path / 'nowhere' / 'env.yaml'}" in log
    assert not (tmp_path / "nowhere").exists()

