"""`pip install .`: the wheel holds what an installed Quarry reads (both families' templates), and a
segmentation run works from it outside the clone."""
import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from executor.errors import ConfigError
from executor.protocol import templates
from executor.protocol.templates import TEMPLATES_DIR, TEMPLATES_VAR
from executor.shared import SEGMENTATION
from tests.platform import REPO, coco_images

# what pyproject.toml builds the wheel from (its packages, py-modules and dynamic metadata files)
BUILD_INPUTS = ("pyproject.toml", "requirements.txt", "start.py", "executor", "mining", "templates")


def template_files() -> list[str]:
    """Every template and manifest of both families, as wheel paths (templates/…)."""
    found = []
    for root, _, files in os.walk(TEMPLATES_DIR):
        relative = os.path.relpath(root, os.path.dirname(TEMPLATES_DIR))
        found += [f"{relative}/{name}".replace(os.sep, "/") for name in files if name.endswith(".yaml")]
    return sorted(found)


def imported_packages() -> set[str]:
    """Top-level names of every third-party package start.py, executor/ and mining/ import (in-function too)."""
    files = [REPO / "start.py", *(REPO / "executor").rglob("*.py"), *(REPO / "mining").rglob("*.py")]
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("executor", "mining", "start")}


def test_every_imported_package_is_declared_and_pinned_to_the_installed_version():
    pins = dict(re.match(r"([\w.-]+)==(\S+)", line).groups() for line in (REPO / "requirements.txt").read_text()
                .splitlines() if line.strip() and not line.startswith("#"))
    pins = {name.lower(): version for name, version in pins.items()}
    distributions = importlib.metadata.packages_distributions()
    for package in sorted(imported_packages()):
        declared = [d for d in distributions[package] if d.lower() in pins]
        assert declared, f"{package} is imported but requirements.txt declares none of {distributions[package]}"
        assert pins[declared[0].lower()] == importlib.metadata.version(declared[0]), declared[0]


def build_wheel(folder) -> str:
    source, dist = folder / "source", folder / "dist"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--no-cache-dir", "-w", str(dist), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    wheels = list(dist.glob("quarry-*.whl"))
    assert len(wheels) == 1, wheels
    return str(wheels[0])


def test_missing_family_templates_are_named_in_the_users_terms(monkeypatch, tmp_path):
    monkeypatch.setitem(templates.FAMILY_TEMPLATES, SEGMENTATION, str(tmp_path / "segmentation"))
    with pytest.raises(ConfigError) as caught:
        templates.family_templates(SEGMENTATION)
    message = str(caught.value)
    assert message.startswith("this Quarry installation has no instance segmentation templates")
    assert str(tmp_path / "segmentation") in message and "reinstall" in message and TEMPLATES_VAR not in message


@pytest.mark.slow
def test_the_wheel_holds_both_families_and_runs_a_seg_infer_outside_the_clone(tmp_path, seg_weights):
    with zipfile.ZipFile(build_wheel(tmp_path)) as wheel:
        names = set(wheel.namelist())
        expected = template_files()
        assert "templates/segmentation/manifest.yaml" in expected and "templates/manifest.yaml" in expected
        assert [name for name in expected if name not in names] == []
        wheel.extractall(tmp_path / "site")
    images, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    images.mkdir()
    elsewhere.mkdir()
    for image in coco_images(2):
        os.symlink(image, images / image.name)
    out = elsewhere / "masks.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", TEMPLATES_VAR)}
    done = subprocess.run([sys.executable, "-m", "start", "-v", "infer", "--model", str(seg_weights),
                           "--source", str(images), "--imgsz", "320", "--out", str(out)],
                          cwd=elsewhere, env={**env, "PYTHONPATH": str(tmp_path / "site")},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert str(REPO) not in done.stdout + done.stderr  # everything came from the unpacked wheel
    result = json.loads(out.read_text())  # a segmentation model's infer result: the COCO result with RLE masks
    assert sorted(image["file_name"] for image in result["images"]) == sorted(p.name for p in coco_images(2))
    assert result["annotations"] and all("counts" in a["segmentation"] for a in result["annotations"])
