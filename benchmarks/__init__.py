"""Benchmarks (`python -m benchmarks`, `python -m benchmarks.audit`, ...): scripts that print numbers."""
import logging
import sys


def log_to_stderr(quiet=("executor", "quarry", "ultralytics")) -> None:
    """A benchmark's own progress on stderr; the project's and Ultralytics' INFO lines left out."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in quiet:
        logging.getLogger(noisy).setLevel(logging.WARNING)
