"""monitor.txt: the platform's only view of a running task (ymir-protocol §5.1).

Line 1 is `task_id<TAB>timestamp<TAB>percent<TAB>state<TAB>error_code`; on failure the one-line
message follows on line 2 and the traceback after it (ymir keeps lines 2-100). State is 2 while
running and 4 on error; 3 (done) is written by ymir itself, never by us.
"""
import logging
import time
from typing import Callable, Sequence

from executor.protocol.writers import atomic_write_text

RUNNING = 2
FAILED = 4
MAX_LINES = 100

Progress = Callable[[float], None]
log = logging.getLogger(__name__)


class Monitor:
    """Writes progress for one run: `progress(fraction)` at most every `interval` seconds (and always at the
    end), so callers report per image and the file is not rewritten per batch."""

    def __init__(self, path: str | None, task_id: str = "quarry", interval: float = 1.0):
        self.path = path
        self.task_id = task_id or "quarry"
        self.percent = 0.0
        self.interval = interval
        self._last_time = 0.0
        self._last_write = -float("inf")

    def write(self, percent: float, state: int = RUNNING, code: int = 0, extra: Sequence[str] = ()):
        self.percent = min(1.0, max(0.0, float(percent)))
        if not self.path:
            return
        now = max(time.time(), self._last_time + 1e-6)  # the platform only notices a changed timestamp
        self._last_time = now
        self._last_write = time.monotonic()
        head = f"{self.task_id}\t{now:.6f}\t{self.percent:.4f}\t{state}\t{code}"
        body = [line for text in extra for line in str(text).splitlines()]
        atomic_write_text(self.path, "\n".join([head, *body][:MAX_LINES]) + "\n")

    def progress(self, fraction: float) -> None:
        """The run's progress in [0, 1], written when `interval` has passed since the last write, or at 1."""
        if fraction >= 1.0 or time.monotonic() - self._last_write >= self.interval:
            self.write(fraction)
        else:
            self.percent = min(1.0, max(0.0, float(fraction)))

    def fail(self, code: int, message: str, traceback_lines: Sequence[str] = ()) -> None:
        try:
            self.write(self.percent, FAILED, code, [message, *traceback_lines])
        except OSError as exc:  # the error itself must still reach the log
            log.error("could not write %s: %s", self.path, exc)


def span(progress: Progress, lo: float, hi: float) -> Progress:
    """progress(fraction in [0, 1]) of a part mapped into [lo, hi] of the whole."""
    return lambda fraction: progress(lo + (hi - lo) * min(1.0, max(0.0, fraction)))
