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
