"""Ground truth for the quality benchmark, as per-image boxes in the detector's class indices.

Three sources:
- COCO json (`coco-val/annotations.json`): category ids 1..90 are mapped to the model's class indices
  **by name** (never by position); `iscrowd=1` boxes become *ignore* regions.
- Pascal VOC xml (`voc2007/Annotations/*.xml`): VOC names are first renamed to COCO names with
  `coco_names.txt` (tab-separated `voc<TAB>coco`), then mapped by name; `difficult=1` objects become
  *ignore* regions, as VOC's own evaluation does.
- YOLO txt (`highway/{valid,test}/labels/*.txt`): class ids are renamed to COCO names with the dataset's
  `coco_names.txt` (`id<TAB>coco`), then mapped by name. Only a fixed subset is used (`fixed_draw`): the
  images whose relative paths have the smallest sha256, so the set does not depend on file-system order
  or on where the data lives, and a smaller draw (`--images`) is the start of the larger one.

Boxes are float xyxy in pixel-edge coordinates (pixel i spans [i, i+1]), the frame of the detector's
`Detections.xyxy`: COCO `bbox` is already [x, y, w, h] in that frame; VOC's 1-based inclusive
`xmin..xmax` becomes `[xmin - 1, xmax]`; YOLO's normalised `cx cy w h` is scaled by the image size.

`ImageTruth.classes` is the set of model classes the dataset labels at all: a detection of any other
class (a COCO model finding a bench in a VOC image) is not an error, because nobody labelled benches.
"""
import hashlib
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from mining.truth import ImageTruth


@dataclass
class Dataset:
    name: str
    images: list[ImageTruth]
    classes: frozenset = field(default_factory=frozenset)  # model class indices the dataset labels

    @property
    def paths(self) -> list[str]:
        return [image.path for image in self.images]


def image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file from its header (PIL reads no pixels), as stored: no EXIF rotation (the
    error model's features read only the image's area, which a rotation keeps)."""
    with Image.open(path) as image:
        width, height = image.size
    return height, width


def _name_index(model_names: list[str]) -> dict[str, int]:
    return {name.strip().lower(): i for i, name in enumerate(model_names)}


def load_coco(root: str, model_names: list[str], limit: int | None = None) -> Dataset:
    """`root/annotations.json` + `root/images/<file_name>`; images sorted by file name."""
    with open(os.path.join(root, "annotations.json"), encoding="utf-8") as handle:
        data = json.load(handle)
    index = _name_index(model_names)
    to_model = {}
    for cat in data["categories"]:
        name = cat["name"].strip().lower()
        if name not in index:
            raise ValueError(f"COCO category {cat['name']!r} (id {cat['id']}) is not a class of the model")
        to_model[cat["id"]] = index[name]
    per_image: dict[int, list] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        per_image[ann["image_id"]].append(ann)
    images = []
    for img in sorted(data["images"], key=lambda i: i["file_name"])[:limit]:
        boxes, cls, ign, ign_cls = [], [], [], []
        for ann in per_image[img["id"]]:
            x, y, w, h = ann["bbox"]
            target = (ign, ign_cls) if ann.get("iscrowd", 0) else (boxes, cls)
            target[0].append([x, y, x + w, y + h])
            target[1].append(to_model[ann["category_id"]])
        images.append(ImageTruth(os.path.join(root, "images", img["file_name"]), boxes, cls, ign, ign_cls, True))
    return Dataset("coco-val", images, frozenset(to_model.values()))


def read_coco_names(path: str) -> dict[str, str]:
    """coco_names.txt: `own_class<TAB>coco_name` per line (own_class: a VOC name or a YOLO class id)."""
    mapping = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                voc, coco = line.rstrip("\n").split("\t")
                mapping[voc.strip().lower()] = coco.strip().lower()
    return mapping


def parse_voc_xml(path: str) -> list[tuple[str, list[float], bool]]:
    """(name, [x1, y1, x2, y2] pixel-edge, difficult) per <object> of a VOC annotation file."""
    objects = []
    for obj in ET.parse(path).getroot().iter("object"):
        box = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(box.find(tag).text) for tag in ("xmin", "ymin", "xmax", "ymax"))
        difficult = obj.findtext("difficult", "0").strip() == "1"
        objects.append((obj.findtext("name").strip().lower(), [xmin - 1, ymin - 1, xmax, ymax], difficult))
    return objects


def renamed_classes(root: str, model_names: list[str]) -> dict[str, int]:
    """The dataset's own classes -> model class indices, through `root/coco_names.txt`."""
    index = _name_index(model_names)
    to_model = {}
    for own, coco in read_coco_names(os.path.join(root, "coco_names.txt")).items():
        if coco not in index:
            raise ValueError(f"class {own!r} of {root} maps to {coco!r}, which is not a class of the model")
        to_model[own] = index[coco]
    return to_model


def load_voc(root: str, model_names: list[str], limit: int | None = None) -> Dataset:
    """`root/JPEGImages/*.jpg` + `root/Annotations/<stem>.xml`, names via `root/coco_names.txt`."""
    to_model = renamed_classes(root, model_names)
    images = []
    names = sorted(n for n in os.listdir(os.path.join(root, "JPEGImages")) if n.lower().endswith(".jpg"))
    for name in names[:limit]:
        stem = os.path.splitext(name)[0]
        boxes, cls, ign, ign_cls = [], [], [], []
        for voc, box, difficult in parse_voc_xml(os.path.join(root, "Annotations", stem + ".xml")):
            if voc not in to_model:
                raise ValueError(f"{stem}.xml: class {voc!r} is not in coco_names.txt")
            target = (ign, ign_cls) if difficult else (boxes, cls)
            target[0].append(box)
            target[1].append(to_model[voc])
        images.append(ImageTruth(os.path.join(root, "JPEGImages", name), boxes, cls, ign, ign_cls, False))
    return Dataset("voc2007", images, frozenset(to_model.values()))


HIGHWAY_SPLITS = ("valid", "test")
HIGHWAY_IMAGES = 300


def fixed_draw(relative_paths: list[str], size: int) -> list[str]:
    """The `size` paths with the smallest sha256 of their text, in that order: a seeded draw that needs no
    seed, and the first n of it are the draw of size n."""
    return sorted(relative_paths, key=lambda p: hashlib.sha256(p.encode()).hexdigest())[:size]


def parse_yolo_txt(path: str, width: int, height: int) -> list[tuple[str, list[float]]]:
    """(class id, [x1, y1, x2, y2] pixel-edge) per line of a YOLO label file."""
    objects = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                own, cx, cy, w, h = line.split()
                cx, cy, w, h = float(cx) * width, float(cy) * height, float(w) * width, float(h) * height
                objects.append((own, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    return objects


def load_yolo(root: str, model_names: list[str], limit: int | None = None, name: str = "highway",
              splits=HIGHWAY_SPLITS, size: int = HIGHWAY_IMAGES) -> Dataset:
    """A fixed draw of `size` images (then the first `limit` of it) from `root/<split>/images` over `splits`,
    boxes from `root/<split>/labels/<stem>.txt`, class ids via `root/coco_names.txt`. No ignore regions."""
    to_model = renamed_classes(root, model_names)
    relative = [f"{split}/images/{n}" for split in splits for n in os.listdir(os.path.join(root, split, "images"))
                if n.lower().endswith((".jpg", ".jpeg", ".png"))]
    images = []
    for rel in fixed_draw(relative, size)[:limit]:
        path = os.path.join(root, rel)
        split, _, file_name = rel.split("/")
        label = os.path.join(root, split, "labels", os.path.splitext(file_name)[0] + ".txt")
        height, width = image_size(path)
        boxes, cls = [], []  # no label file: a negative image, as in YOLO training
        for own, box in parse_yolo_txt(label, width, height) if os.path.isfile(label) else ():
            if own not in to_model:
                raise ValueError(f"{label}: class {own!r} is not in coco_names.txt")
            boxes.append(box)
            cls.append(to_model[own])
        images.append(ImageTruth(path, boxes, cls, [], [], False))
    return Dataset(name, images, frozenset(to_model.values()))
