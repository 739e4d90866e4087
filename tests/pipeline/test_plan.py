"""The run plan decides what the templates leave to the run: here, batch_size_per_gpu 0 (auto) per device."""
import pytest

from executor.engine.device import AUTO_BATCH
from executor.errors import ConfigError
from executor.pipeline import plan as plans
from executor.pipeline.job import Job
from tests.platform import WEIGHTS

CONFIG = {"mining_algorithm": "random", "model_params_path": [str(WEIGHTS)]}


def batches(config: dict, tasks=("mining", "infer")) -> dict:
    made = plans.make_plan(list(tasks), Job(candidates=["a.jpg"]), {**CONFIG, **config})
    return {task: made.settings[task].batch_size_per_gpu for task in tasks}


def test_auto_batch_is_the_devices_and_a_given_batch_wins(monkeypatch):
    assert batches({}) == {"mining": AUTO_BATCH["cpu"], "infer": AUTO_BATCH["cpu"]} == {"mining": 4, "infer": 4}
    assert batches({"batch_size_per_gpu": 16}) == {"mining": 16, "infer": 16}
    monkeypatch.setattr(plans, "visible_gpus", lambda gpu_id: [0])
    assert batches({"gpu_id": "0"}) == {"mining": 16, "infer": 16}


def test_training_has_no_auto_batch():
    with pytest.raises(ConfigError, match="'batch_size_per_gpu': 0 \\(auto\\) is for mining and infer"):
        plans.make_plan(["training"], Job(), {"batch_size_per_gpu": 0})
