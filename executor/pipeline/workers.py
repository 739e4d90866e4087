"""One worker process per device, started by PyTorch's own launcher (torch.distributed's elastic agent, what
torchrun runs), each scoring its own shards; no collectives: the caller merges once every worker is done.

A worker that fails writes its error (code, message, traceback) next to the shards and exits; the agent then
stops the others and the caller raises WorkerFailed with that worker's own code and message. A Ctrl-C stops
every worker without a traceback or an error file and reaches the caller as KeyboardInterrupt (SIGTERM as
Terminated). Workers report the images they finished in a small file each; the caller sums them into one
progress. Under an outer torchrun (several nodes), the process is one rank of the job (RANK, WORLD_SIZE from
the environment) and rank 0 waits for every shard file in the shared folder before merging.
"""
import contextlib
import glob
import json
import logging
import os
import signal
import threading
import time
import traceback
import uuid
from typing import Callable, Sequence

from executor.errors import QuarryError, Terminated, error_code, one_line
from executor.protocol.monitor import Progress
from executor.protocol.writers import atomic_write_text
from executor.runtime import worker_rank

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5
AGENT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)  # what the elastic agent handles
AGENT_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher")

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


def run_workers(work: Work, args: tuple, devices: Sequence[str], folder: str, done_before: int, total: int,
                progress: Progress) -> None:
    """work(*args, rank, world, device, progress) for every device: in this process for one device, else one
    spawned worker per device. `done_before` images were finished by an earlier run (resume)."""
    os.makedirs(folder, exist_ok=True)
    if len(devices) == 1:
        work(*args, 0, 1, devices[0], lambda done: progress((done_before + done) / max(1, total)))
        return
    _remove_worker_files(folder, len(devices))
    stop = threading.Event()
    poller = threading.Thread(target=_poll_progress, args=(folder, len(devices), done_before, total, progress, stop),
                              daemon=True)
    poller.start()
    try:
        _launch(work, args, devices, folder)
    finally:
        stop.set()
        poller.join()
        _remove_worker_files(folder, len(devices))  # any error is reported by now


def _remove_worker_files(folder: str, workers: int) -> None:
    for rank in range(workers):
        for path in (progress_file(folder, rank), error_file(folder, rank)):
            if os.path.exists(path):
                os.unlink(path)


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
    """The workers under the elastic agent. On a signal the agent stops them and raises its SignalException,
    made ours here. SIGINT stays blocked in this thread while the agent starts the workers (they inherit the
    mask, so a Ctrl-C during their start-up waits until worker_main can exit quietly); this process still takes
    it, on the progress thread. The agent's signal handlers, left installed by it, are put back afterwards."""
    from multiprocessing import resource_tracker

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=len(devices), run_id=f"quarry-{uuid.uuid4().hex}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                          monitor_interval=POLL_SECONDS, start_method="spawn")
    log.info("starting %d workers (%s)", len(devices), ", ".join(f"GPU {d}" if d else "CPU" for d in devices))
    handlers = {sig: signal.getsignal(sig) for sig in AGENT_SIGNALS}
    resource_tracker.ensure_running()  # started later, it would unblock SIGINT in this thread
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with _quiet_agent():
            elastic_launch(config, worker_main)(work, args, list(devices), folder)
    except ChildFailedError:
        raise _worker_error(folder, len(devices)) from None
    except SignalException as exc:
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise Terminated(f"terminated by signal {int(exc.sigval)} ({exc.sigval.name}) before the task finished"
                         ) from None
    finally:
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


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


@contextlib.contextmanager
def _quiet_agent():
    """The agent's warnings (a signal received, workers closed) left out of the console: the caller says what
    happened in one line. Its errors still show."""
    handlers = logging.getLogger("torch.distributed").handlers  # the agent's loggers propagate to these only

    def errors_only(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.name.startswith(AGENT_LOGGERS)

    for handler in handlers:
        handler.addFilter(errors_only)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(errors_only)


def worker_main(work: Work, args: tuple, devices: list[str], folder: str) -> None:
    """The body of one spawned worker: its rank from the launcher's environment, its own device."""
    _die_with_parent()
    rank, world = worker_rank()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s worker {rank} %(name)s: %(message)s")
    last = [0.0]

    def report(done: int) -> None:
        if time.monotonic() - last[0] >= POLL_SECONDS:
            last[0] = time.monotonic()
            atomic_write_text(progress_file(folder, rank), str(done))

    try:
        signal.signal(signal.SIGINT, _interrupt_once)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since the start (see _launch)
        work(*args, rank, world, devices[rank], report)
    except KeyboardInterrupt:  # Ctrl-C: the caller says so; a failed exit, or the agent would take it for done
        raise SystemExit(130) from None
    except BaseException as exc:
        atomic_write_text(error_file(folder, rank), json.dumps(
            {"code": error_code(exc), "message": one_line(exc), "traceback": traceback.format_exc()}))
        raise


def _interrupt_once(signum, frame) -> None:
    """A worker's SIGINT: KeyboardInterrupt once; the next (a Ctrl-C reaches a worker and its agent, which
    passes it on) is ignored, so it cannot break the exit with a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


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
