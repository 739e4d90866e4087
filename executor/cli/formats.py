"""Detections for labelling tools: the ymir infer result rewritten as a COCO dataset JSON or YOLO label files.

Class ids are the model's, whatever a run happened to find, so the pre-labels of two batches merge: YOLO's class
is the model's class index and `classes.txt` lists every class of the model in model order; COCO's
`categories` are every class of the model in model order with ids from 1 (category_id = class index + 1, as in
the segmentation COCO result).

COCO: `images` (file_name = the image's name in the run, its decoded width and height; an unreadable image
0 × 0, with no annotations), `categories`, `annotations` with `bbox` [x, y, w, h], `area`, `iscrowd` 0 and
`score`. YOLO: one `<name>.txt` per image, mirroring the source tree (an absolute name, from a list of images
outside the list's folder, is mirrored without its root), with `class cx cy w h` normalised to [0, 1]; an image
without detections gets an empty file (labelled: nothing there), an unreadable one none.
"""
import json
import os
from typing import Mapping, Sequence

from executor.protocol.dataset import probe_image
from executor.protocol.writers import atomic_write_text, class_ids, coco_categories


def read_ymir(path: str) -> dict[str, list[dict] | None]:
    """Box records by image name; None for an unreadable image (an infer result written with
    Job.infer_unreadable_none)."""
    with open(path, encoding="utf-8") as handle:
        detection = json.load(handle)["detection"]
    return {name: entry.get("boxes", entry.get("annotations", [])) for name, entry in detection.items()}


def image_size(path: str) -> tuple[int, int]:
    """(width, height) as decoded (EXIF applied); (0, 0) for an unreadable image."""
    probed = probe_image(path)
    return (probed[0], probed[1]) if isinstance(probed, tuple) else (0, 0)


def coco_dataset(boxes: Mapping[str, list[dict] | None], paths: Mapping[str, str], class_names: Sequence[str]) -> dict:
    category = class_ids(class_names)
    images, annotations = [], []
    for image_id, (name, found) in enumerate(boxes.items(), 1):
        width, height = (0, 0) if found is None else image_size(paths[name])
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for b in found or []:
            box = b["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category[b["class_name"]] + 1,
                                "bbox": [box["x"], box["y"], box["w"], box["h"]],
                                "area": box["w"] * box["h"], "iscrowd": 0, "score": b["score"]})
    return {"images": images, "categories": coco_categories(class_names), "annotations": annotations}


def label_path(folder: str, name: str) -> str:
    """The YOLO label file of image `name` under `folder`, never outside it."""
    relative = os.path.normpath(os.path.splitdrive(name)[1]).lstrip(os.sep)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise ValueError(f"image name {name!r} climbs out of the label folder {folder}")
    return os.path.join(folder, os.path.splitext(relative)[0] + ".txt")


def write_yolo(boxes: Mapping[str, list[dict] | None], paths: Mapping[str, str], folder: str,
               class_names: Sequence[str]) -> None:
    index = class_ids(class_names)
    for name, found in boxes.items():
        width, height = (0, 0) if found is None else image_size(paths[name])
        if not (width and height):
            continue  # unreadable: no label file (an empty one says "labelled, nothing there")
        lines = []
        for b in found:
            box = b["box"]
            cx, cy = (box["x"] + box["w"] / 2) / width, (box["y"] + box["h"] / 2) / height
            lines.append(f"{index[b['class_name']]} {cx:.6f} {cy:.6f} {box['w'] / width:.6f} {box['h'] / height:.6f}\n")
        atomic_write_text(label_path(folder, name), "".join(lines))
    atomic_write_text(os.path.join(folder, "classes.txt"), "".join(n + "\n" for n in class_names))


def write_detections(ymir_json: str, target: str, fmt: str, paths: Mapping[str, str],
                     class_names: Sequence[str]) -> None:
    """Rewrite `ymir_json` as `fmt` ('coco' file or 'yolo' folder) at `target`; `paths`: image path per name;
    `class_names`: the model's classes in model order."""
    boxes = read_ymir(ymir_json)
    if fmt == "coco":
        atomic_write_text(target, json.dumps(coco_dataset(boxes, paths, class_names), separators=(",", ":")) + "\n")
    elif fmt == "yolo":
        write_yolo(boxes, paths, target, class_names)
    else:
        raise ValueError(f"unknown detection format {fmt!r}")
