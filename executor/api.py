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


def _listed(images) -> tuple[list[str], list[str]]:
    """(paths, result keys): as the CLI's --source names them for a folder, glob or list; a sequence as given."""
    if isinstance(images, (str, os.PathLike)):
        from executor.cli import list_images

        return list_images(str(images))
    paths = [str(p) for p in images]
    return paths, paths


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
        paths, names = _listed(images)  # random and CALD draw by the names: the same wherever the folder is
        job = Job(candidates=paths, names=names, mining_result=out, shards_dir=os.path.join(scratch, "shards"))
        run(["mining"], job, _config(weights, settings))
        with open(out, encoding="utf-8") as handle:
            return [(key, float(score)) for key, score in (line.rstrip("\n").split("\t") for line in handle)]


def infer(images: Sequence[str] | str, weights, **settings) -> dict[str, list[dict]]:
    """Box records ({box: {x, y, w, h}, class_name, score}, original pixels) of every image, by path."""
    from executor.tasks import Job, run

    prepare_process_env()
    paths = _listed(images)[0]
    with tempfile.TemporaryDirectory(prefix="quarry-") as scratch:
        out = os.path.join(scratch, "infer.json")
        run(["infer"], Job(candidates=paths, names=paths, infer_result=out, shards_dir=os.path.join(scratch, "s")),
            _config(weights, settings))
        with open(out, encoding="utf-8") as handle:
            return {name: entry["boxes"] for name, entry in json.load(handle)["detection"].items()}
