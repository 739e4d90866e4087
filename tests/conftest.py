import os
import sys

import pytest

# Tests import the project as the executor does, and run offline like it (start.py sets the same).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from executor.runtime import prepare_process_env  # noqa: E402

prepare_process_env()
PLATFORM_DIRS = ("/in", "/out")


def snapshot(folder: str):
    """Everything under a host folder, with sizes and modification times (None when it does not exist)."""
    if not os.path.exists(folder):
        return None
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            stat = os.lstat(path)
            found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="session", autouse=True)
def host_platform_dirs_stay_untouched():
    """Tests write only under their temp dirs: the host's /in and /out are the same after the session."""
    before = {folder: snapshot(folder) for folder in PLATFORM_DIRS}
    yield
    for folder in PLATFORM_DIRS:
        assert snapshot(folder) == before[folder], f"the test session wrote into the host's {folder}"


@pytest.fixture(scope="session")
def seg_weights(tmp_path_factory):
    """tests.ymir_builders.write_seg_weights: yolov8n-seg seeded from the shared yolov8n.pt."""
    from tests.ymir_builders import write_seg_weights

    return write_seg_weights(tmp_path_factory.mktemp("seg-weights") / "yolov8n-seg.pt")
