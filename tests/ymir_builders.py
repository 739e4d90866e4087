"""Builders of ymir-style training inputs: assets with sha1 names, ARK / VOC / COCO annotations, index files,
env.yaml and config.yaml, from the shared voc2007 and coco-val sets (or from hand-made boxes).

An `Item` is one image with its objects as ymir stores them: (class index, xmin, ymin, xmax, ymax) with
inclusive integer corners (ARK and VOC write them so; COCO gets [x, y, xmax - xmin + 1, ymax - ymin + 1]).
"""
import hashlib
import json
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS_DIR = SHARED / "weights"
VOC = SHARED / "data" / "voc2007"
COCO_VAL = SHARED / "data" / "coco-val"


@dataclass
class Item:
    image: Path
    objects: list = field(default_factory=list)  # (class index, xmin, ymin, xmax, ymax), inclusive corners
    xml: Path | None = None                      # an original VOC xml to copy instead of writing one


# ---------------------------------------------------------------- sources

def voc_names() -> list[str]:
    return [line.strip() for line in (VOC / "names.txt").read_text().splitlines() if line.strip()]


def voc_items(count: int | None = None) -> list[Item]:
    names = {n: i for i, n in enumerate(voc_names())}
    items = []
    for xml in sorted((VOC / "Annotations").glob("*.xml"))[:count]:
        root = ET.parse(xml).getroot()
        objects = []
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            objects.append((names[obj.findtext("name").strip()],
                            *(int(float(box.findtext(t))) for t in ("xmin", "ymin", "xmax", "ymax"))))
        items.append(Item(VOC / "JPEGImages" / f"{xml.stem}.jpg", objects, xml))
    return items


def coco_val_json() -> dict:
    return json.loads((COCO_VAL / "annotations.json").read_text())


def coco_val_names() -> list[str]:
    return [c["name"] for c in sorted(coco_val_json()["categories"], key=lambda c: c["id"])]


# ---------------------------------------------------------------- writers

def sha1_name(path: Path) -> tuple[str, str]:
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    return digest, path.suffix.lstrip(".") or "unknown"


def ark_text(objects) -> str:
    return "".join(f"{c}, {x1}, {y1}, {x2}, {y2}, -1.0, 0.0\n" for c, x1, y1, x2, y2 in objects)


def voc_text(objects, class_names, filename: str, size=(0, 0)) -> str:
    parts = [f"<annotation><folder>folder</folder><filename>{filename}</filename>",
             f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size><segmented>0</segmented>"]
    for c, x1, y1, x2, y2 in objects:
        parts.append(f"<object><name>{class_names[c]}</name><pose>unknown</pose><truncated>unknown</truncated>"
                     f"<occluded>0</occluded><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                     f"<ymax>{y2}</ymax><rotate_angle>0.0</rotate_angle></bndbox><difficult>0</difficult></object>")
    return "".join(parts) + "</annotation>\n"


def write_dataset(root: Path, train: list[Item], val: list[Item], class_names: list[str], fmt: str,
                  index_root: str | None = None, asset_ext: str | None = None) -> dict:
    """`root`/assets, `root`/annotations, train-index.tsv, val-index.tsv, candidate-index.tsv, class_names.txt.

    fmt: 'ark' | 'voc' | 'coco'. Index lines name `index_root` (default: `root` itself; '/in' for the
    verifier). `asset_ext` overrides every asset's extension (e.g. 'unknown'). Returns the index paths."""
    root = Path(root)
    prefix = (index_root or str(root)).rstrip("/")
    coco = {"images": [], "licenses": [], "categories": [], "annotations": []}
    used_classes: set = set()
    index = {}
    for split, items in (("train", train), ("val", val)):
        lines = []
        for item in items:
            digest, ext = sha1_name(item.image)
            ext = asset_ext or ext
            asset = root / "assets" / digest[-2:] / f"{digest}.{ext}"
            asset.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.image, asset)
            asset_ref = f"{prefix}/assets/{digest[-2:]}/{digest}.{ext}"
            if fmt == "coco":
                anno_ref = f"{prefix}/annotations/coco-annotations.json"
                if not any(im["file_name"] == asset.name for im in coco["images"]):
                    image_id = len(coco["images"]) + 1
                    coco["images"].append({"id": image_id, "file_name": asset.name, "width": 0, "height": 0})
                    for c, x1, y1, x2, y2 in item.objects:
                        used_classes.add(c)
                        coco["annotations"].append({
                            "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": c,
                            "iscrowd": 0, "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1], "area": 0,
                            "confidence": 1.0, "segmentation": []})
            else:
                suffix = "xml" if fmt == "voc" else "txt"
                anno = root / "annotations" / digest[-2:] / f"{digest}.{suffix}"
                anno.parent.mkdir(parents=True, exist_ok=True)
                if fmt == "voc":
                    if item.xml is not None:
                        shutil.copyfile(item.xml, anno)
                    else:
                        anno.write_text(voc_text(item.objects, class_names, asset_ref))
                else:
                    anno.write_text(ark_text(item.objects))
                anno_ref = f"{prefix}/annotations/{digest[-2:]}/{digest}.{suffix}"
            lines.append(f"{asset_ref}\t{anno_ref}\n")
        path = root / f"{'train' if split == 'train' else 'val'}-index.tsv"
        path.write_text("".join(lines))
        index[split] = path
    if fmt == "coco":
        coco["categories"] = [{"id": c, "name": class_names[c], "supercategory": "object"}
                              for c in sorted(used_classes)]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / "coco-annotations.json").write_text(json.dumps(coco))
    (root / "candidate-index.tsv").write_text(
        "".join(line.split("\t")[0] + "\n" for line in index["val"].read_text().splitlines()))
    (root / "class_names.txt").write_text("".join(n + "\n" for n in class_names))
    return index


def write_coco_val_dataset(root: Path, count_train: int, count_val: int, index_root: str | None = None) -> list[str]:
    """coco-val as ymir would export it with seg-coco: sha1 asset names, one json with the original category
    ids (1..90) and names, crowd regions kept. Returns the 80 class names (in category-id order)."""
    root = Path(root)
    prefix = (index_root or str(root)).rstrip("/")
    data = coco_val_json()
    names = coco_val_names()
    images = sorted(data["images"], key=lambda im: im["id"])[:count_train + count_val]
    keep = {im["id"] for im in images}
    lines = []
    for im in images:
        digest, ext = sha1_name(COCO_VAL / "images" / im["file_name"])
        asset = root / "assets" / digest[-2:] / f"{digest}.{ext}"
        asset.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(COCO_VAL / "images" / im["file_name"], asset)
        im = dict(im, file_name=asset.name)
        lines.append((im, f"{prefix}/assets/{digest[-2:]}/{digest}.{ext}\t{prefix}/annotations/coco-annotations.json\n"))
    out = {"images": [im for im, _ in lines], "licenses": data.get("licenses", []),
           "categories": data["categories"],
           "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "coco-annotations.json").write_text(json.dumps(out))
    (root / "train-index.tsv").write_text("".join(line for _, line in lines[:count_train]))
    (root / "val-index.tsv").write_text("".join(line for _, line in lines[count_train:]))
    (root / "candidate-index.tsv").write_text("".join(line.split("\t")[0] + "\n" for _, line in lines[count_train:]))
    (root / "class_names.txt").write_text("".join(n + "\n" for n in names))
    return names


def write_training_env(root: Path, class_names: list[str], config: dict | None = None,
                       protocol_version: str | None = "1.1.0") -> Path:
    """env.yaml and config.yaml for a training run on the dataset already written to `root`/in
    (tests.platform.make_env writes them)."""
    from tests.platform import make_env

    return make_env(Path(root), run_training=True, weights=None, task_id="t-train", protocol_version=protocol_version,
                    config={"class_names": list(class_names), **(config or {})})


# ---------------------------------------------------------------- reading outputs back

def read_events(folder: Path) -> list:
    """(step, summary value) of every value in every tensorboard event file under `folder`, parsed with
    tensorboardX's own Event protobuf (TFRecord framing: length, crc, payload, crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    found = []
    for path in sorted(Path(folder).rglob("events.out.tfevents*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            found.extend((event.step, value) for value in event.summary.value)
    return found


def read_scalars(folder: Path) -> dict:
    """{tag: [(step, value), ...]} of the scalars under `folder` (read_events)."""
    scalars: dict = {}
    for step, value in read_events(folder):
        if value.HasField("simple_value"):
            scalars.setdefault(value.tag, []).append((step, value.simple_value))
    return scalars


def read_images(folder: Path) -> dict:
    """{tag: [(step, decoded RGB array), ...]} of the images under `folder` (read_events)."""
    import cv2
    import numpy as np

    images: dict = {}
    for step, value in read_events(folder):
        if value.HasField("image"):
            bgr = cv2.imdecode(np.frombuffer(value.image.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
            images.setdefault(value.tag, []).append((step, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return images


def write_seg_weights(path: Path) -> Path:
    """A yolov8n-seg checkpoint whose every tensor of matching name and shape comes from the shared yolov8n.pt
    (backbone, neck, box and class branches: it finds the very boxes, classes and scores yolov8n.pt finds), with a
    fresh mask head and yolov8n's COCO class names. No COCO -seg checkpoint exists offline; this one is real
    where mining reads it (boxes and class probabilities) and of the right form where infer reads it (masks)."""
    from ultralytics import YOLO

    detection = YOLO(str(WEIGHTS_DIR / "yolov8n.pt"))
    model = YOLO("yolov8n-seg.yaml", task="segment")
    model.load(str(WEIGHTS_DIR / "yolov8n.pt"))
    model.model.names = dict(detection.names)
    model.save(str(path))
    return Path(path)
