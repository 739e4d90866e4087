"""A small Python API over the same tasks the command line runs.

    from executor.api import mine, infer
    ranking = mine("images/", "yolov8n.pt", algorithm="entropy", imgsz=640)   # [(path, score)], best first
    boxes = infer(["a.jpg", "b.jpg"], "yolov8n.pt", conf=0.3)                 # {path: [box records] or None}

`images` is a folder (recursive), a glob, a .txt/.tsv list, or a sequence of paths. Settings are keywords: the
command line's names (model, imgsz, conf, iou, batch, device, workers, threads, nproc, seed, backend, selection,
dedup_similarity, diverse_pool, diversity_weight, report_top_n: `start.py mine --help`) or any template key
(img_size, conf_thres, ...; the templates hold the defaults). One setting under two names is a TypeError; other
errors are the executor's (executor.errors).
"""
import os
import tempfile
from typing import Sequence

from executor.runtime import outer_ranks, prepare_process_env


def _listed(images) -> tuple[list[str], list[str]]:
    """(paths, result keys): as the CLI's --source names them for a folder, glob or list; a sequence as given."""
    if isinstance(images, (str, os.PathLike)):
        from executor.cli.commands import list_images

        return list_images(str(images))
    paths = [str(p) for p in images]
    return paths, paths


def _config(weights, settings: dict) -> dict:
    """The keywords as config keys: a command line name becomes the key its flag sets (device as --device takes
    it: cpu, 0, cuda:0, 0,1), `model` is `weights`."""
    from executor.cli.flags import gpu_id_of
    from executor.cli.flags import FLAG_OF

    settings = dict(settings)
    if "model" in settings:
        if weights:
            raise TypeError("weights and model= name the same file; give one")
        weights = settings.pop("model")
    key_of = {flag[2:].replace("-", "_"): key for key, flag in FLAG_OF.items() if key != "model_params_path"}
    config, named = {}, {}
    for name, value in settings.items():
        key = key_of.get(name, name)
        if key in config:
            raise TypeError(f"{named[key]}= and {name}= both set {key}; give one")
        config[key], named[key] = gpu_id_of(str(value)) if name == "device" else value, name
    if weights:
        config["model_params_path"] = [os.path.abspath(str(weights))]
    return config


def mine(images, weights=None, algorithm: str | None = None, **settings) -> list[tuple[str, float]]:
    """(path, score) of every image, most worth labelling first; unreadable images last with score -1."""
    from executor.pipeline.job import Job
    from executor.pipeline.plan import make_plan
    from executor.pipeline.tasks import run

    prepare_process_env()
    config = _config(weights, settings)
    if algorithm:
        config["mining_algorithm"] = algorithm
    with tempfile.TemporaryDirectory(prefix="quarry-") as scratch:
        paths, names = _listed(images)  # random and CALD draw by the names: the same wherever the folder is
        job = Job(candidates=paths, names=names, shards_dir=os.path.join(scratch, "shards"), outer=outer_ranks())
        ranking = run(make_plan(["mining"], job, config))["mining"]  # no result file: the ranking comes back as values
    return [(found.key, found.score) for found in ranking]


def infer(images: Sequence[str] | str, weights=None, **settings) -> dict[str, list[dict] | None]:
    """Box records of every image, by path: {box: {x, y, w, h} in original pixels, class_id (the model's class
    index), class_name, score}; None for an image that could not be read ([]: read, nothing found). A
    segmentation model gives {height, width, instances} per image instead, each instance with its class_id."""
    from executor.pipeline.job import Job
    from executor.pipeline.passes import Models
    from executor.pipeline.plan import make_plan
    from executor.pipeline.tasks import model_class_names, run
    from executor.protocol.writers import class_ids

    prepare_process_env()
    paths = _listed(images)[0]
    config, models = _config(weights, settings), Models()
    with tempfile.TemporaryDirectory(prefix="quarry-") as scratch:
        job = Job(candidates=paths, names=paths, shards_dir=os.path.join(scratch, "s"), outer=outer_ranks())
        plan = make_plan(["infer"], job, config)
        found = run(plan, models=models)["infer"]  # no result file: the detections as values
    boxes = {image.key: image.record for image in found}
    ids = class_ids(model_class_names(plan, models))
    for records in boxes.values():
        for record in records.get("instances", []) if isinstance(records, dict) else records or []:
            record["class_id"] = ids[record["class_name"]]
    return boxes
