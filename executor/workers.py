"""One worker process per device, started by PyTorch's own launcher (torch.distributed's elastic agent, what
torchrun runs), each scoring its own shards; no collectives: the caller merges once every worker is done.

A worker that fails writes its error (code, message, traceback) next to the shards and exits; the agent then
stops the others and the caller raises WorkerFailed with that worker's own code and message. Workers report
the images they finished in a small file each; the caller sums them into one progress. Under an outer
torchrun (several nodes), the process is one rank of the job (RANK, WORLD_SIZE from the environment) and
rank 0 waits for every shard file in the shared folder before merging.
"""
import glob
import json
import logging
import os
import threading
import time
import traceback
import uuid
from typing import Callable, Sequence

from executor.errors import QuarryError, error_code, one_line
from executor.monitor import Progress
from executor.writers import atomic_write_text

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5

# work(rank, world, device, progress) scores the shards of one rank; it must be importable by name (spawn)
Work = Callable[[int, int, str, Progress], None]


class WorkerFailed(QuarryError):
    """A worker process failed; carries that worker's own error code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def progress_file(folder: str, rank: int) -> str:
    return os.path.join(folder, f"progress-{rank}.txt")


def error_file(folder: str, rank: int) -> str:
    return os.path.join(folder, f"error-{rank}.json")


def clear(folder: str) -> None:
    """Remove the workers' progress and error files, and the folder when nothing else is left in it."""
    for path in glob.glob(os.path.join(folder, "progress-*.txt")) + glob.glob(os.path.join(folder, "error-*.json")):
        os.unlink(path)
    if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)


def outer_rank() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when this process was started by an outer torchrun with several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else None


def run_workers(work: Work, args: tuple, devices: Sequence[str], folder: str, done_before: int, total: int,
                progress: Progress) -> None:
    """work(*args, rank, world, device, progress) for every device: in this process for one device, else one
    spawned worker per device. `done_before` images were finished by an earlier run (resume)."""
    os.makedirs(folder, exist_ok=True)
    if len(devices) == 1:
        work(*args, 0, 1, devices[0], lambda done: progress((done_before + done) / max(1, total)))
        return
    for rank in range(len(devices)):
        for path in (progress_file(folder, rank), error_file(folder, rank)):
            if os.path.exists(path):
                os.unlink(path)
    stop = threading.Event()
    poller = threading.Thread(target=_poll_progress, args=(folder, len(devices), done_before, total, progress, stop),
                              daemon=True)
    poller.start()
    try:
        _launch(work, args, devices, folder)
    finally:
        stop.set()
        poller.join()


def _poll_progress(folder, workers, done_before, total, progress, stop) -> None:
    while not stop.wait(POLL_SECONDS):
        done = 0
        for rank in range(workers):
            try:
                with open(progress_file(folder, rank), encoding="ascii") as handle:
                    done += int(handle.read() or 0)
            except (OSError, ValueError):
                pass
        progress((done_before + done) / max(1, total))


def _launch(work: Work, args: tuple, devices: Sequence[str], folder: str) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=len(devices), run_id=f"quarry-{uuid.uuid4().hex}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                          monitor_interval=POLL_SECONDS, start_method="spawn")
    log.info("starting %d workers (%s)", len(devices), ", ".join(f"GPU {d}" if d else "CPU" for d in devices))
    try:
        elastic_launch(config, worker_main)(work, args, list(devices), folder)
    except ChildFailedError:
        raise _worker_error(folder, len(devices)) from None


def _worker_error(folder: str, workers: int) -> QuarryError:
    for rank in range(workers):
        try:
            with open(error_file(folder, rank), encoding="utf-8") as handle:
                error = json.load(handle)
        except (OSError, ValueError):
            continue
        log.error("worker %d failed:\n%s", rank, error["traceback"])
        return WorkerFailed(f"worker {rank} failed: {error['message']}", int(error["code"]))
    return WorkerFailed("a worker process died without reporting an error (killed? out of host memory?); "
                        "see the log above", 160004)


def worker_main(work: Work, args: tuple, devices: list[str], folder: str) -> None:
    """The body of one spawned worker: its rank from the launcher's environment, its own device."""
    _die_with_parent()
    rank, world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s worker {rank} %(name)s: %(message)s")
    last = [0.0]

    def report(done: int) -> None:
        if time.monotonic() - last[0] >= POLL_SECONDS:
            last[0] = time.monotonic()
            atomic_write_text(progress_file(folder, rank), str(done))

    try:
        work(*args, rank, world, devices[rank], report)
    except BaseException as exc:
        atomic_write_text(error_file(folder, rank), json.dumps(
            {"code": error_code(exc), "message": one_line(exc), "traceback": traceback.format_exc()}))
        raise


def _die_with_parent() -> None:
    """Linux: this worker gets SIGTERM when the agent that started it dies (kill -9 of the job)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def wait_for(complete: Callable[[], int], total: int, progress: Progress, timeout: float | None = None) -> None:
    """Rank 0 of an outer torchrun: wait until `complete()` (images in finished shards) reaches `total`."""
    start = time.monotonic()
    while (done := complete()) < total:
        progress(done / max(1, total))
        if timeout is not None and time.monotonic() - start > timeout:
            raise WorkerFailed(f"only {done} of {total} images were scored by the other ranks in {timeout:.0f} s",
                               160004)
        time.sleep(POLL_SECONDS * 4)
