"""A small Python API over the same tasks the command line runs.

    from executor.api import mine, infer
    ranking = mine("images/", "yolov8n.pt", algorithm="entropy", img_size=640)   # [(path, score)], best first
    boxes = infer(["a.jpg", "b.jpg"], "yolov8n.pt", conf_thres=0.3)             # {path: [box records]}

`images` is a folder (recursive), a glob, a .txt/.tsv list, or a sequence of paths; any template key may be
given as a keyword (the templates hold the defaults). Errors are the executor's (executor.errors).
"""
import json
import os
import tempfile
from typing import Sequence

from executor.runtime import prepare_process_env


def _paths(images) -> list[str]:
    if isinstance(images, (str, os.PathLike)):
        from executor.cli import list_images

        return list_images(str(images))[0]
    return [str(p) for p in images]


def _config(weights, settings: dict) -> dict:
    config = dict(settings)
    if weights:
        config["model_params_path"] = [os.path.abspath(str(weights))]
    return config


def mine(images, weights=None, algorithm: str | None = None, **settings) -> list[tuple[str, float]]:
    """(path, score) of every image, most worth labelling first; unreadable images last with score -1."""
    from executor.tasks import Job, run

    prepare_process_env()
    if algorithm:
        settings["mining_algorithm"] = algorithm
    with tempfile.TemporaryDirectory(prefix="quarry-") as scratch:
        out = os.path.join(scratch, "ranked.tsv")
        run(["mining"], Job(candidates=_paths(images), mining_result=out, shards_dir=os.path.join(scratch, "shards")),
            _config(weights, settings))
        with open(out, encoding="utf-8") as handle:
            return [(key, float(score)) for key, score in (line.rstrip("\n").split("\t") for line in handle)]


def infer(images: Sequence[str] | str, weights, **settings) -> dict[str, list[dict]]:
    """Box records ({box: {x, y, w, h}, class_name, score}, original pixels) of every image, by path."""
    from executor.tasks import Job, run

    prepare_process_env()
    paths = _paths(images)
    with tempfile.TemporaryDirectory(prefix="quarry-") as scratch:
        out = os.path.join(scratch, "infer.json")
        run(["infer"], Job(candidates=paths, names=paths, infer_result=out, shards_dir=os.path.join(scratch, "s")),
            _config(weights, settings))
        with open(out, encoding="utf-8") as handle:
            return {name: entry["boxes"] for name, entry in json.load(handle)["detection"].items()}
