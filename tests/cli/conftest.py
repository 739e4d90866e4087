"""Fixtures of the labelled-set commands (fit-errors, audit)."""
import shutil
from pathlib import Path

import pytest

from tests.ymir_builders import SHARED, WEIGHTS_DIR


@pytest.fixture
def coco8_copy(tmp_path):
    """A copy of coco8 (its data.yaml names the classes) and of the weights, as yolov8n-copy.pt."""
    shutil.copytree(SHARED / "data" / "coco8", tmp_path / "coco8")
    shutil.copy(WEIGHTS_DIR / "yolov8n.pt", tmp_path / "yolov8n-copy.pt")
    return tmp_path / "coco8", tmp_path / "yolov8n-copy.pt"


def readme_example(command: str) -> list[str]:
    """The arguments of the README's first `start.py <command> --data` example (its examples must be valid)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    example = next(line for line in readme.splitlines() if f"start.py {command} --data" in line)
    return example.split("start.py ", 1)[1].split()
