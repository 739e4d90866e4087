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


@pytest.fixture
def fake_detector(monkeypatch):
    """Every model the pipeline loads in this test is a tests.pipeline.fake_detector.PixelDetector (for runs that
    make their own Models: start.run_platform, the CLI); returns the loader."""
    from executor.pipeline import passes
    from tests.pipeline.fake_detector import pixel_load

    monkeypatch.setattr(passes, "load_detector", pixel_load)
    return pixel_load


@pytest.fixture(autouse=True)
def torch_threads_stay():
    """A run driven in this process sets torch's thread count (cpu_threads); the next test gets it back."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    yield
    torch = sys.modules.get("torch")
    if torch and before and torch.get_num_threads() != before:
        torch.set_num_threads(before)


SHARED_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "shared", "weights", "yolov8n.pt")


def is_shared_weights(path) -> bool:
    """The shared yolov8n.pt or a copy of it (make_env copies it into /in/models)."""
    return (os.path.isfile(SHARED_WEIGHTS) and os.path.isfile(path)
            and os.path.getsize(path) == os.path.getsize(SHARED_WEIGHTS))


@pytest.fixture(autouse=True)
def real_model_only_when_slow(request, monkeypatch):
    """A test not marked slow never loads the real yolov8n: loading it for prediction fails the test, and the
    checkpoint's family (what the CLI reads to choose its templates) is answered without unpickling it: detection,
    what yolov8n.pt is (read for real by the slow tests, e.g. tests/test_segmentation_tasks.py's CLI test)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    from executor.engine import loading, torch_detector

    read_task, load = loading.model_task, torch_detector.load_torch_model

    def model_task(weights):
        return "detect" if is_shared_weights(weights) else read_task(weights)

    def guarded(weights, *args, **kwargs):
        assert not is_shared_weights(weights), f"a test not marked slow loads the real model {weights}"
        return load(weights, *args, **kwargs)

    monkeypatch.setattr(loading, "model_task", model_task)
    monkeypatch.setattr(torch_detector, "load_torch_model", guarded)
    yield
