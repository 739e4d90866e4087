"""Detections for Label Studio: the infer pass's detections as a Label Studio tasks JSON with predictions (its
documented import format, "Basic Label Studio JSON format" with `predictions`), and the labelling config that
shows them, written beside it.

One task per readable image (an unreadable one has nothing to show): `data` holds `image`, the URL Label Studio
loads it from, and, when mining ran in the same pass, `mining_rank` (1 = label first) and `mining_score` (what
result.tsv says), so the Data Manager sorts by them; tasks come in ranking order then (the top-k first), else in
the index order. The URL is `url_prefix` + the image's path relative to `document_root`, percent-encoded: by
default Label Studio's local-files form `/data/local-files/?d=<path>` under its default LOCAL_FILES_DOCUMENT_ROOT,
the filesystem root (set the same root with LOCAL_FILES_SERVING_ENABLED=true, and a Local Storage of the images'
folder in the project); any other server of the files: its URL as the prefix and the folder it serves as the root.

Each task has one prediction: `model_version` (the model file's name), `score` (the mean box score; 0 with no
boxes) and `result`, one region per detection: a box (`rectanglelabels`) or, for a segmentation model, its mask's
outline (`polygonlabels`: the outer contours of the mask, several parts joined as for training,
executor.engine.masks), in percent of the image (`original_width` / `original_height`: the decoded size), with its
class and score. The config is `<View>` with `<Image name="image" value="$image"/>` and one `<RectangleLabels>`
(or `<PolygonLabels>`) `name="label" toName="image"` listing every class of the model in model order, so the
predictions of any class show; `from_name`/`to_name` of each region are those names.
"""
from __future__ import annotations

import json
import os
from html import escape
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence
from urllib.parse import quote

from executor.protocol.writers import atomic_write_text

if TYPE_CHECKING:  # the command line imports this module for its defaults: nothing heavy at import
    import numpy as np

    from executor.pipeline.shards import Detected

LOCAL_FILES_PREFIX = "/data/local-files/?d="  # Label Studio's local-files URL (LOCAL_FILES_SERVING_ENABLED)
DEFAULT_DOCUMENT_ROOT = os.sep                 # Label Studio's default LOCAL_FILES_DOCUMENT_ROOT
FROM_NAME, TO_NAME = "label", "image"
CONFIG_SUFFIX = ".label-config.xml"


def config_path(tasks_path: str) -> str:
    """Where the labelling config of `tasks_path` goes: beside it, `<stem>.label-config.xml`."""
    return os.path.splitext(tasks_path)[0] + CONFIG_SUFFIX


def outside_root(path: str, document_root: str) -> bool:
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(document_root))
    return relative == os.pardir or relative.startswith(os.pardir + os.sep)


def image_url(path: str, url_prefix: str, document_root: str) -> str:
    """The URL Label Studio loads the image at `path` from (ValueError for one outside `document_root`)."""
    if outside_root(path, document_root):
        raise ValueError(f"image {path} lies outside the document root {document_root}")
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(document_root))
    return url_prefix + quote(relative.replace(os.sep, "/"), safe="/")


def labelling_config(class_names: Sequence[str], polygons: bool) -> str:
    tag = "PolygonLabels" if polygons else "RectangleLabels"
    labels = "".join(f'    <Label value="{escape(name)}"/>\n' for name in dict.fromkeys(class_names))
    return (f'<View>\n  <Image name="{TO_NAME}" value="${TO_NAME}"/>\n'
            f'  <{tag} name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}  </{tag}>\n</View>\n')


def percent(value: float, size: int) -> float:
    return round(100.0 * float(value) / size, 4)


def region(kind: str, value: dict, class_name: str, score: float, width: int, height: int) -> dict:
    return {"from_name": FROM_NAME, "to_name": TO_NAME, "type": kind, "original_width": width,
            "original_height": height, "image_rotation": 0, "value": {**value, kind: [class_name]},
            "score": round(float(score), 6)}


def box_regions(records: list, width: int, height: int) -> list[dict]:
    """Regions of ymir box records (integer x, y, w, h in pixels)."""
    return [region("rectanglelabels", {"x": percent(b["box"]["x"], width), "y": percent(b["box"]["y"], height),
                                       "width": percent(b["box"]["w"], width),
                                       "height": percent(b["box"]["h"], height), "rotation": 0},
                   b["class_name"], b["score"], width, height) for b in records]


def mask_outline(rle: dict) -> np.ndarray | None:
    """One polygon (K, 2) in pixels round a COCO RLE mask (its parts joined as training joins them); None when the
    mask has no region with an area."""
    from pycocotools import mask as mask_utils

    from executor.engine.masks import merge_parts, outer_contours, polygon_area

    mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    parts = [p for p in outer_contours(mask) if len(p) >= 3 and polygon_area(p) > 0]
    return merge_parts(parts) if parts else None


def polygon_regions(instances: list, width: int, height: int) -> list[dict]:
    """Regions of a segmentation record's instances: each mask's outline (a mask with no area: none)."""
    found = []
    for instance in instances:
        outline = mask_outline(instance["segmentation"])
        if outline is not None:
            points = [[percent(x, width), percent(y, height)] for x, y in outline.tolist()]
            found.append(region("polygonlabels", {"points": points}, instance["class_name"],
                                instance["confidence"], width, height))
    return found


def task(found: Detected, url: str, model_version: str, rank: tuple[int, float] | None) -> dict:
    """The Label Studio task of one readable image; `rank`: its (mining rank, result.tsv score) or None."""
    if isinstance(found.record, dict):  # segmentation: {height, width, instances}
        regions = polygon_regions(found.record["instances"], found.width, found.height)
    else:
        regions = box_regions(found.record, found.width, found.height)
    data = {"image": url}
    if rank is not None:
        data.update(mining_rank=rank[0], mining_score=rank[1])
    score = sum(r["score"] for r in regions) / len(regions) if regions else 0.0
    return {"data": data, "predictions": [{"model_version": model_version, "score": round(score, 6),
                                           "result": regions}]}


def write_labelstudio(images: Iterable[Detected], target: str, class_names: Sequence[str], *,
                      paths: Mapping[str, str], model_version: str, url_prefix: str = LOCAL_FILES_PREFIX,
                      document_root: str = DEFAULT_DOCUMENT_ROOT,
                      ranking: Mapping[str, tuple[int, float]] | None = None, polygons: bool = False) -> int:
    """The tasks of the readable `images` at `target` and their labelling config beside it; `paths`: each image's
    file by its result name; `ranking`: mining's (rank, score) by result name (tasks in that order). Returns the
    number of tasks."""
    tasks = [(ranking[found.key][0] if ranking else number, task(
        found, image_url(paths[found.key], url_prefix, document_root), model_version,
        ranking[found.key] if ranking else None))
        for number, found in enumerate(images) if found.record is not None]
    tasks.sort(key=lambda pair: pair[0])
    atomic_write_text(target, json.dumps([t for _, t in tasks], separators=(",", ":")) + "\n")
    atomic_write_text(config_path(target), labelling_config(class_names, polygons))
    return len(tasks)
