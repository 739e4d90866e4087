"""Benchmarks (`python -m benchmarks`, `python -m benchmarks.audit`, ...): scripts that print numbers."""
import argparse
import logging
import os
import sys

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared")


def benchmark_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.<name>` (its module docstring as the help), with --weights: the
    shared yolov8n unless told."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=os.path.join(SHARED, "weights", "yolov8n.pt"))
    return parser


def log_to_stderr(quiet=("executor", "quarry", "ultralytics")) -> None:
    """A benchmark's own progress on stderr; the project's and Ultralytics' INFO lines left out."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in quiet:
        logging.getLogger(noisy).setLevel(logging.WARNING)
