"""Fixtures of the labelled-set commands (fit-errors, audit)."""
import shutil

import pytest

from tests.ymir_builders import SHARED, WEIGHTS_DIR


@pytest.fixture
def coco8_copy(tmp_path):
    """A copy of coco8 (its data.yaml names the classes) and of the weights, as yolov8n-copy.pt."""
    shutil.copytree(SHARED / "data" / "coco8", tmp_path / "coco8")
    shutil.copy(WEIGHTS_DIR / "yolov8n.pt", tmp_path / "yolov8n-copy.pt")
    return tmp_path / "coco8", tmp_path / "yolov8n-copy.pt"
