"""The devices a detector runs on: `gpu_id` ('' = CPU, '0,1') checked against what CUDA sees; never a silent
CPU fallback.
"""

import logging

import torch

from executor.errors import NoGpuError
from executor.shared import gpu_list

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- devices

def visible_gpus(gpu_id: str) -> list[int]:
    """The GPUs of `gpu_id` ('' = none), each checked against what CUDA sees. Never a silent CPU fallback."""
    ids = gpu_list(gpu_id)
    available = torch.cuda.device_count() if ids and torch.cuda.is_available() else 0
    if ids and max(ids) >= available:
        raise NoGpuError(f"config key 'gpu_id' asks for GPU {gpu_id} but {available} CUDA device(s) are visible")
    return ids


def select_device(gpu_id: str) -> torch.device:
    """'' = CPU; '0' or '0,1' = the first listed container-local GPU."""
    ids = visible_gpus(gpu_id)
    if not ids:
        return torch.device("cpu")
    if len(ids) > 1:
        log.warning("gpu_id %s: mining and inference run on GPU %d only", gpu_id, ids[0])
    return torch.device(f"cuda:{ids[0]}")


# ---------------------------------------------------------------- batch size

# batch_size_per_gpu 0 (auto), per device. CPU: yolov8n's forward on 2 cores is fastest at batch 4-8 (16 is 6%
# slower) and small batches fill better from a mix of canvas shapes (benchmarks/FINDINGS.md, item 29); GPU: 16,
# the default before auto (not measured against others here: no GPU on the project's machines)
AUTO_BATCH = {"cpu": 4, "cuda": 16}


def batch_size(asked: int, on_gpu: bool) -> int:
    """batch_size_per_gpu as a pass over images runs it: 0 (auto) the device's AUTO_BATCH, else as asked."""
    return asked or AUTO_BATCH["cuda" if on_gpu else "cpu"]
