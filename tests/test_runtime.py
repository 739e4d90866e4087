import os
import subprocess
import sys

import pytest

from executor.runtime import cgroup_cpu_limit, cpu_threads, usable_cpus
from tests.platform import REPO


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_quota_v2_and_v1(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(str(tmp_path)) == expected


def test_threads_come_from_the_flag_then_omp_num_threads_then_the_usable_cpus(monkeypatch):
    monkeypatch.setenv("QUARRY_OMP_NUM_THREADS", "")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads(3) == 3 and cpu_threads(0) == usable_cpus() >= 1
    monkeypatch.setenv("QUARRY_OMP_NUM_THREADS", "1")
    assert cpu_threads(0) == 1 and cpu_threads(2) == 2


@pytest.mark.parametrize("user_setting", [None, "1"])
def test_importing_ultralytics_does_not_change_the_thread_count(user_setting):
    """Ultralytics sets OMP_NUM_THREADS=1 when imported; what the user set (or did not) still decides."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "QUARRY_OMP_NUM_THREADS")}
    if user_setting:
        env["OMP_NUM_THREADS"] = user_setting
    code = ("from executor.runtime import prepare_process_env, cpu_threads, usable_cpus; prepare_process_env(); "
            "import ultralytics, os; print(os.environ.get('OMP_NUM_THREADS'), cpu_threads(), usable_cpus())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    omp, threads, usable = out.stdout.split()[-3:]
    assert omp == "1"  # what Ultralytics does to the environment
    assert int(threads) == (1 if user_setting else int(usable))
