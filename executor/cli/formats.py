"""Detections for labelling tools: the infer pass's detections (executor.pipeline.tasks.InferResult: each image's
box records and decoded size) written as a COCO dataset JSON or YOLO label files.

Class ids are the model's, whatever a run happened to find, so the pre-labels of two batches merge: YOLO's class
is the model's class index and `classes.txt` lists every class of the model in model order; COCO's
`categories` are every class of the model in model order with ids from 1 (category_id = class index + 1, as in
the segmentation COCO result).

COCO: `images` (file_name = the image's name in the run, its decoded width and height; an unreadable image
0 × 0, with no annotations), `categories`, `annotations` with `bbox` [x, y, w, h], `area`, `iscrowd` 0 and
`score`. YOLO: one `<name>.txt` per image, mirroring the source tree (an absolute name, from a list of images
outside the list's folder, is mirrored without its root), with `class cx cy w h` normalised to [0, 1]; an image
without detections gets an empty file (labelled: nothing there), an unreadable one none. Boxes are the records
infer-result.json holds (integer pixels), so each format says what the ymir one does.
"""
import json
import os
from typing import Iterable, Sequence

from executor.pipeline.shards import Detected
from executor.protocol.writers import atomic_write_text, class_ids, coco_categories


def coco_dataset(images: Iterable[Detected], class_names: Sequence[str]) -> dict:
    category = class_ids(class_names)
    listed, annotations = [], []
    for image_id, found in enumerate(images, 1):
        listed.append({"id": image_id, "file_name": found.key, "width": found.width, "height": found.height})
        for b in found.record or []:
            box = b["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category[b["class_name"]] + 1,
                                "bbox": [box["x"], box["y"], box["w"], box["h"]],
                                "area": box["w"] * box["h"], "iscrowd": 0, "score": b["score"]})
    return {"images": listed, "categories": coco_categories(class_names), "annotations": annotations}


def label_path(folder: str, name: str) -> str:
    """The YOLO label file of image `name` under `folder`, never outside it."""
    relative = os.path.normpath(os.path.splitdrive(name)[1]).lstrip(os.sep)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise ValueError(f"image name {name!r} climbs out of the label folder {folder}")
    return os.path.join(folder, os.path.splitext(relative)[0] + ".txt")


def write_yolo(images: Iterable[Detected], folder: str, class_names: Sequence[str]) -> None:
    index = class_ids(class_names)
    for found in images:
        if found.record is None:
            continue  # unreadable: no label file (an empty one says "labelled, nothing there")
        width, height = found.width, found.height
        lines = []
        for b in found.record:
            box = b["box"]
            cx, cy = (box["x"] + box["w"] / 2) / width, (box["y"] + box["h"] / 2) / height
            lines.append(f"{index[b['class_name']]} {cx:.6f} {cy:.6f} {box['w'] / width:.6f} {box['h'] / height:.6f}\n")
        atomic_write_text(label_path(folder, found.key), "".join(lines))
    atomic_write_text(os.path.join(folder, "classes.txt"), "".join(n + "\n" for n in class_names))


def write_detections(images: Iterable[Detected], target: str, fmt: str, class_names: Sequence[str]) -> None:
    """`images` (an infer pass's detections, by result name) as `fmt` ('coco' file or 'yolo' folder) at `target`;
    `class_names`: the model's classes in model order."""
    if fmt == "coco":
        atomic_write_text(target, json.dumps(coco_dataset(images, class_names), separators=(",", ":")) + "\n")
    elif fmt == "yolo":
        write_yolo(images, target, class_names)
    else:
        raise ValueError(f"unknown detection format {fmt!r}")
