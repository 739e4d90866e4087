"""Detections for labelling tools: the ymir infer result rewritten as a COCO dataset JSON or YOLO label files.

COCO: `images` (file_name = the image's name in the run, its decoded width and height), `categories` (ids from
1, names sorted), `annotations` with `bbox` [x, y, w, h], `area`, `iscrowd` 0 and `score`. YOLO: one
`<name>.txt` per image (mirroring the source tree) with `class cx cy w h` normalised to [0, 1], and
`classes.txt` with the class of each id; images without detections get an empty file (labelled: nothing).
"""
import json
import os
from typing import Mapping

from executor.dataset import probe_image
from executor.writers import atomic_write_text


def read_ymir(path: str) -> dict[str, list[dict]]:
    with open(path, encoding="utf-8") as handle:
        detection = json.load(handle)["detection"]
    return {name: entry.get("boxes", entry.get("annotations", [])) for name, entry in detection.items()}


def image_size(path: str) -> tuple[int, int]:
    """(width, height) as decoded (EXIF applied); (0, 0) for an unreadable image."""
    probed = probe_image(path)
    return (probed[0], probed[1]) if isinstance(probed, tuple) else (0, 0)


def coco_dataset(boxes: Mapping[str, list[dict]], paths: Mapping[str, str]) -> dict:
    names = sorted({b["class_name"] for found in boxes.values() for b in found})
    category = {name: i for i, name in enumerate(names, 1)}
    images, annotations = [], []
    for image_id, (name, found) in enumerate(boxes.items(), 1):
        width, height = image_size(paths[name])
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for b in found:
            box = b["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category[b["class_name"]], "bbox": [box["x"], box["y"], box["w"], box["h"]],
                                "area": box["w"] * box["h"], "iscrowd": 0, "score": b["score"]})
    return {"images": images, "categories": [{"id": i, "name": n} for n, i in category.items()],
            "annotations": annotations}


def write_yolo(boxes: Mapping[str, list[dict]], paths: Mapping[str, str], folder: str) -> None:
    names = sorted({b["class_name"] for found in boxes.values() for b in found})
    index = {name: i for i, name in enumerate(names)}
    for name, found in boxes.items():
        width, height = image_size(paths[name])
        lines = []
        for b in found if width and height else []:
            box = b["box"]
            cx, cy = (box["x"] + box["w"] / 2) / width, (box["y"] + box["h"] / 2) / height
            lines.append(f"{index[b['class_name']]} {cx:.6f} {cy:.6f} {box['w'] / width:.6f} {box['h'] / height:.6f}\n")
        atomic_write_text(os.path.join(folder, os.path.splitext(name)[0] + ".txt"), "".join(lines))
    atomic_write_text(os.path.join(folder, "classes.txt"), "".join(n + "\n" for n in names))


def write_detections(ymir_json: str, target: str, fmt: str, paths: Mapping[str, str]) -> None:
    """Rewrite `ymir_json` as `fmt` ('coco' file or 'yolo' folder) at `target`; `paths`: image path per name."""
    boxes = read_ymir(ymir_json)
    if fmt == "coco":
        atomic_write_text(target, json.dumps(coco_dataset(boxes, paths), separators=(",", ":")) + "\n")
    elif fmt == "yolo":
        write_yolo(boxes, paths, target)
    else:
        raise ValueError(f"unknown detection format {fmt!r}")
