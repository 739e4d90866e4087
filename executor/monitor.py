"""monitor.txt: the platform's only view of a running task (ymir-protocol §5.1).

Line 1 is `task_id<TAB>timestamp<TAB>percent<TAB>state<TAB>error_code`; on failure the one-line
message follows on line 2 and the traceback after it (ymir keeps lines 2-100). State is 2 while
running and 4 on error; 3 (done) is written by ymir itself, never by us.
"""
import logging
import time
from typing import Callable, Sequence

from executor.writers import atomic_write_text

RUNNING = 2
FAILED = 4
MAX_LINES = 100

Progress = Callable[[float], None]
log = logging.getLogger(__name__)


class Monitor:
    """Writes progress for one run. `span(lo, hi)` hands a sub-task a progress(fraction) callable."""

    def __init__(self, path: str | None, task_id: str = "quarry"):
        self.path = path
        self.task_id = task_id or "quarry"
        self.percent = 0.0
        self._last_time = 0.0

    def write(self, percent: float, state: int = RUNNING, code: int = 0, extra: Sequence[str] = ()):
        self.percent = min(1.0, max(0.0, float(percent)))
        if not self.path:
            return
        now = max(time.time(), self._last_time + 1e-6)  # the platform only notices a changed timestamp
        self._last_time = now
        head = f"{self.task_id}\t{now:.6f}\t{self.percent:.4f}\t{state}\t{code}"
        body = [line for text in extra for line in str(text).splitlines()]
        atomic_write_text(self.path, "\n".join([head, *body][:MAX_LINES]) + "\n")

    def span(self, lo: float, hi: float) -> Progress:
        """progress(fraction in [0, 1]) mapped into [lo, hi] of the whole run."""

        def progress(fraction: float) -> None:
            self.write(lo + (hi - lo) * min(1.0, max(0.0, fraction)))

        return progress

    def fail(self, code: int, message: str, traceback_lines: Sequence[str] = ()) -> None:
        try:
            self.write(self.percent, FAILED, code, [message, *traceback_lines])
        except OSError as exc:  # the error itself must still reach the log
            log.error("could not write %s: %s", self.path, exc)


def task_spans(run_mining: bool, run_infer: bool) -> dict:
    """Progress ranges of mining and infer: halves when both run in one call ('tmi' order)."""
    if run_mining and run_infer:
        return {"mining": (0.0, 0.5), "infer": (0.5, 1.0)}
    return {"mining": (0.0, 1.0), "infer": (0.0, 1.0)}
