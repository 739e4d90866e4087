"""Training data: ymir index files + ark/voc/coco annotations → validated samples → a YOLO dataset under /out.
The same validation reads YOLO labels (`read_rows`, fmt 'yolo') for the labelled sets of executor/protocol/labelled.py.

Boxes are held as continuous pixel rectangles [x1, x2) × [y1, y2) of the image as decoded (EXIF applied).
ymir writes ARK and VOC corners inclusive (`xmax = x + w - 1`), so x2 = xmax + 1; COCO `bbox` is
[x, y, w, h], so x2 = x + w. The three readers therefore give identical boxes for one ymir annotation.

Validation: boxes are clipped to the image; inverted, zero-area and outside-the-image boxes (and COCO
crowd regions) are dropped and counted, the first NAMED_DROPS degenerate ones of a split named (file and line)
in a warning; a class outside `class_names` is a DatasetError naming the file and line; unreadable images are
skipped and counted; an empty train or val split is a DatasetError.

Instance segmentation (`masks=True`, seg-coco annotations): each non-crowd annotation's polygons or RLE become
one polygon (executor/engine/masks.py, with its validation rules), its box is the polygon's, and the YOLO export
writes Ultralytics' segment labels `class x1 y1 x2 y2 ...`.
"""

import json
import logging
import os
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import yaml
from PIL import Image

from executor.engine.images import truncated_jpeg
from executor.errors import DatasetError, NoReadableImages
from executor.protocol.index import read_training_index
from executor.shared import Sample

log = logging.getLogger(__name__)


FORMATS = {"ark": "ark", "det-ark": "ark", "voc": "voc", "det-voc": "voc", "coco": "coco", "seg-coco": "coco"}
DEFAULT_FORMAT = "voc"  # ymir 2.x exports VOC when export_format is empty (ymir-protocol §4.4)
SUFFIX_FORMAT = {".txt": "ark", ".xml": "voc", ".json": "coco"}
# PIL format → a file suffix Ultralytics accepts (it filters images by suffix, and ymir may write `.unknown`)
IMAGE_SUFFIX = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp"}
EXIF_ORIENTATION = 0x0112
MIN_SIZE = 10


@dataclass
class SplitStats:
    listed: int = 0
    skipped: Counter = field(default_factory=Counter)   # reason → images left out
    dropped: Counter = field(default_factory=Counter)   # reason → boxes left out
    clipped: int = 0
    boxes_per_class: Counter = field(default_factory=Counter)


@dataclass
class Split:
    name: str
    samples: list[Sample]
    stats: SplitStats


# ---------------------------------------------------------------- export_format and index files

def annotation_format(export_format: str) -> str:
    """'ark' | 'voc' | 'coco' from `<anno>:<asset>`; '' → the platform's default (VOC). Unknown → ''
    (the platform then exports no annotations; the files decide, see detect_format)."""
    text = str(export_format or "").strip().lower()
    anno, _, asset = text.partition(":")
    if asset and asset != "raw":
        log.warning("export_format %r: asset format %r is not 'raw'; the platform only exports raw images",
                    export_format, asset)
    if not anno:
        return DEFAULT_FORMAT
    if anno not in FORMATS:
        log.warning("export_format %r: annotation format %r is unknown; detecting it from the files",
                    export_format, anno)
        return ""
    return FORMATS[anno]


def sniff_format(path: str) -> str:
    """The annotation format of a file by its suffix, else by its first character."""
    by_suffix = SUFFIX_FORMAT.get(os.path.splitext(path)[1].lower())
    if by_suffix:
        return by_suffix
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = handle.read(256).lstrip()
    return "voc" if head.startswith("<") else "coco" if head.startswith("{") else "ark"


def detect_format(declared: str, annotation_paths: Sequence[str]) -> str:
    """The format the files really have; a warning when export_format says otherwise."""
    existing = [p for p in annotation_paths if os.path.isfile(p)]
    if not existing:
        return declared or DEFAULT_FORMAT
    found = Counter(sniff_format(p) for p in existing[:50]).most_common(1)[0][0]
    if declared and found != declared:
        log.warning("export_format says %s but the annotation files are %s (e.g. %s); reading them as %s",
                    declared, found, existing[0], found)
    return found


# ---------------------------------------------------------------- annotation parsers → raw boxes

# A raw box: (class index, x1, y1, x2, y2, where) with continuous corners; `where` names file and line/object.
RawBox = tuple[int, float, float, float, float, str]


def class_index(value: str, class_names: Sequence[str], where: str) -> int:
    try:
        index = int(float(value))
        if index != float(value):
            raise ValueError
    except ValueError:
        raise DatasetError(f"{where}: class index {value!r} is not an integer") from None
    if not 0 <= index < len(class_names):
        raise DatasetError(f"{where}: class index {index} is outside class_names (0..{len(class_names) - 1})")
    return index


def parse_ark(path: str, class_names: Sequence[str]) -> list[RawBox]:
    """`class, xmin, ymin, xmax, ymax[, quality[, angle]]` per line; the first five fields are used."""
    boxes = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            fields = [f.strip() for f in line.split(",")]
            if len(fields) < 5:
                raise DatasetError(f"{where}: expected 'class, xmin, ymin, xmax, ymax', got {line.strip()!r}")
            cls = class_index(fields[0], class_names, where)
            try:
                xmin, ymin, xmax, ymax = (float(f) for f in fields[1:5])
            except ValueError:
                raise DatasetError(f"{where}: box corners must be numbers, got {line.strip()!r}") from None
            boxes.append((cls, xmin, ymin, xmax + 1, ymax + 1, where))
    return boxes


def parse_voc(path: str, class_names: Sequence[str]) -> list[RawBox]:
    """Pascal VOC / ymir VOC xml: per `object`, `name` and `bndbox` (inclusive corners). Other fields
    (`truncated` may be the string 'unknown', `difficult`, `pose`, ...) are not needed and not parsed."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(f"{path}: not valid XML ({exc})") from None
    index = {name: i for i, name in enumerate(class_names)}
    boxes = []
    for number, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        where = f"{path} object {number} ('{name}')"
        if name not in index:
            raise DatasetError(f"{where}: class name '{name}' is not in class_names")
        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise DatasetError(f"{where}: bndbox needs numeric xmin, ymin, xmax, ymax") from None
        boxes.append((index[name], xmin, ymin, xmax + 1, ymax + 1, where))
    return boxes


def read_coco_json(path: str) -> dict:
    """A COCO json's content, checked to be one (an 'images' list); DatasetError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable COCO json ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: a COCO json needs an 'images' list")
    return data


class CocoFile:
    """One COCO json (ymir writes one for train and val): boxes per image file name.

    Categories map to class indices by name first, else (ymir's exporter: id = class index) by id."""

    def __init__(self, path: str, class_names: Sequence[str]):
        data = read_coco_json(path)
        self.path = path
        index = {name: i for i, name in enumerate(class_names)}
        self.category = {}  # category id → class index, or an error text
        for cat in data.get("categories") or []:
            name = str(cat.get("name", ""))
            if name in index:
                self.category[cat.get("id")] = index[name]
            else:
                self.category[cat.get("id")] = f"category id {cat.get('id')} '{name}' is not in class_names"
        self.num_classes = len(class_names)
        self.by_name: dict[str, list] = {}
        self.by_stem: dict[str, list] = {}
        anns: dict = {}
        for ann in data.get("annotations") or []:
            anns.setdefault(ann.get("image_id"), []).append(ann)
        dangling = sorted({str(ann.get("image_id")) for ann in data.get("annotations") or []}
                          - {str(image.get("id")) for image in data["images"]})
        if dangling:
            raise DatasetError(f"{path}: annotations refer to image ids not in 'images': {', '.join(dangling[:5])}"
                               + (f" and {len(dangling) - 5} more" if len(dangling) > 5 else ""))
        for image in data["images"]:
            name = os.path.basename(str(image.get("file_name", "")))
            items = anns.get(image.get("id"), [])
            self.by_name[name] = items
            self.by_stem.setdefault(os.path.splitext(name)[0], items)

    def _annotations(self, asset: str) -> tuple[str, list]:
        name = os.path.basename(asset)
        items = self.by_name.get(name)
        if items is None:
            items = self.by_stem.get(os.path.splitext(name)[0])
        if items is None:
            raise DatasetError(f"{self.path}: no entry in 'images' for {name}")
        return name, items

    def _usable(self, asset: str, dropped: Counter) -> Iterator[tuple[dict, int, str]]:
        """(annotation, class index, where) of every non-crowd annotation of `asset` (crowds dropped, counted)."""
        name, items = self._annotations(asset)
        for ann in items:
            where = f"{self.path} annotation id {ann.get('id')} ({name})"
            if ann.get("iscrowd"):
                dropped["crowd region"] += 1
                continue
            cls = self.category.get(ann.get("category_id"))
            if cls is None:  # not listed in categories: ymir's category id is the class index
                cls = class_index(str(ann.get("category_id")), [""] * self.num_classes, where)
            if isinstance(cls, str):
                raise DatasetError(f"{where}: {cls}")
            yield ann, cls, where

    def boxes_for(self, asset: str, dropped: Counter) -> list[RawBox]:
        boxes = []
        for ann, cls, where in self._usable(asset, dropped):
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"{where}: 'bbox' must be [x, y, w, h]") from None
            boxes.append((cls, x, y, x + w, y + h, where))
        return boxes

    def instances_for(self, asset: str, width: int, height: int, stats: "SplitStats") -> list:
        """(class index, masks.Instance, where) of every usable non-crowd annotation of `asset`; crowd regions and
        degenerate masks dropped and counted in `stats`; broken or outside masks and unknown classes raise."""
        from executor.engine.masks import instance_from_coco

        found = []
        for ann, cls, where in self._usable(asset, stats.dropped):
            instance = instance_from_coco(ann.get("segmentation"), width, height, where, stats.dropped)
            if instance is not None:
                stats.clipped += int(instance.clipped)
                found.append((cls, instance, where))
        return found


# ---------------------------------------------------------------- images and validation

def probe_image(path: str) -> tuple[int, int, str] | str:
    """(width, height, suffix) of a decodable image with EXIF orientation applied, or the reason it is not."""
    if not os.path.isfile(path):
        return "missing image"
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            fmt, (width, height) = im.format, im.size
            if im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated by 90°: decoders swap w, h
                width, height = height, width
    except Exception:  # PIL raises many types for corrupt, truncated or unknown files
        return "unreadable image"
    if fmt in ("JPEG", "MPO") and truncated_jpeg(path):
        return "truncated image"  # PIL's verify misses it and Ultralytics would fill the rest with grey
    suffix = IMAGE_SUFFIX.get(fmt or "")
    if suffix is None:
        return f"unsupported image format {fmt}"
    if width < MIN_SIZE or height < MIN_SIZE:
        return f"image smaller than {MIN_SIZE}x{MIN_SIZE} pixels"  # Ultralytics rejects these too
    return width, height, suffix


DEGENERATE = ("inverted (negative size)", "zero area", "outside image")
NAMED_DROPS = 5  # the first boxes dropped as degenerate in a split are named in the log; the rest only counted


def drop_degenerate(stats: SplitStats, reason: str, where: str) -> None:
    """Count a box dropped for `reason`; name its file (and line) at warning level for the first NAMED_DROPS."""
    named = sum(stats.dropped[r] for r in DEGENERATE)
    stats.dropped[reason] += 1
    if named < NAMED_DROPS:
        log.warning("%s: %s box dropped%s", where, reason,
                    " (further ones in this split are only counted)" if named + 1 == NAMED_DROPS else "")


def clean_boxes(raw: list[RawBox], width: int, height: int, stats: SplitStats
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Clip to the image, drop (count, and name the first few of) inverted, zero-area and outside boxes; the kept
    boxes, their classes and where each is written."""
    kept_boxes, kept_classes, kept_where = [], [], []
    for cls, x1, y1, x2, y2, where in raw:
        if x2 < x1 or y2 < y1:
            drop_degenerate(stats, "inverted (negative size)", where)
            continue
        if x2 == x1 or y2 == y1:
            drop_degenerate(stats, "zero area", where)
            continue
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
        if cx2 <= cx1 or cy2 <= cy1:
            drop_degenerate(stats, "outside image", where)
            continue
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            stats.clipped += 1
        kept_boxes.append((cx1, cy1, cx2, cy2))
        kept_classes.append(cls)
        kept_where.append(where)
    return np.asarray(kept_boxes, np.float32).reshape(-1, 4), np.asarray(kept_classes, np.int64), kept_where


def segmented_sample(asset: str, width: int, height: int, suffix: str, instances: list) -> Sample:
    """A sample whose boxes are its instances' polygon boxes."""
    from executor.engine.masks import polygon_box

    boxes = np.asarray([polygon_box(inst.polygon) for _, inst, _ in instances], np.float32).reshape(-1, 4)
    classes = np.asarray([cls for cls, _, _ in instances], np.int64)
    return Sample(asset, width, height, suffix, boxes, classes, segments=[inst.polygon for _, inst, _ in instances],
                  masks=[inst.rle for _, inst, _ in instances])


def read_split(name: str, index_file: str, class_names: Sequence[str], export_format: str,
               masks: bool = False, sources: bool = False) -> Split:
    """All samples of one index file, validated (with `masks`: instance masks from seg-coco; with `sources`: where
    each box is written). Raises DatasetError when none is usable."""
    rows = read_training_index(index_file, name)
    fmt = detect_format(annotation_format(export_format), [r[1] for r in rows])
    if masks and rows and fmt != "coco":
        raise DatasetError(f"{index_file}: segmentation training needs seg-coco annotations (one COCO json with "
                           f"polygons or RLE masks), but the annotation files are {fmt} (e.g. {rows[0][1]}); "
                           "export the dataset with export_format seg-coco:raw")
    return read_rows(name, [(asset, annotation, f"{index_file} line {number}") for asset, annotation, number in rows],
                     index_file, class_names, fmt, masks, sources=sources)


# One image to read: (image path, its annotation file ('' for none: a negative image), where it is listed).
Row = tuple[str, str, str]


def read_rows(name: str, rows: Sequence[Row], source: str, class_names: Sequence[str], fmt: str,
              masks: bool = False, names_source: str = "class_names", sources: bool = False) -> Split:
    """The samples of `rows` (annotations in `fmt`: ark, voc, coco or yolo), validated as read_split says;
    `source` names where the rows come from in messages, `names_source` the names YOLO class ids index; with
    `sources` each box keeps where it is written (Sample.sources)."""
    stats = SplitStats(listed=len(rows))
    coco_files: dict[str, CocoFile] = {}
    samples = []
    for asset, annotation, where in rows:
        if annotation and not os.path.isfile(annotation):
            raise DatasetError(f"{where}: annotation file not found: {annotation}")
        probed = probe_image(asset)
        if isinstance(probed, str):
            stats.skipped[probed] += 1
            log.warning("%s: %s: %s, skipped", where, probed, asset)
            continue
        width, height, suffix = probed
        if masks:
            if annotation not in coco_files:
                coco_files[annotation] = CocoFile(annotation, class_names)
            sample = segmented_sample(asset, width, height, suffix,
                                      coco_files[annotation].instances_for(asset, width, height, stats))
            stats.boxes_per_class.update(int(c) for c in sample.classes)
            samples.append(sample)
            continue
        if not annotation:
            raw = []
        elif fmt == "coco":
            if annotation not in coco_files:
                coco_files[annotation] = CocoFile(annotation, class_names)
            raw = coco_files[annotation].boxes_for(asset, stats.dropped)
        elif fmt == "yolo":
            raw = parse_yolo(annotation, width, height, class_names, names_source)
        else:
            raw = (parse_voc if fmt == "voc" else parse_ark)(annotation, class_names)
        boxes, classes, where_written = clean_boxes(raw, width, height, stats)
        stats.boxes_per_class.update(int(c) for c in classes)
        samples.append(Sample(asset, width, height, suffix, boxes, classes, sources=where_written if sources else None))
    if not samples:
        reasons = ", ".join(f"{n} {r}" for r, n in stats.skipped.items()) or "the index lists no images"
        error = NoReadableImages if rows else DatasetError  # every listed image unreadable: 300003
        raise error(f"the {name} set is empty ({source}: {reasons})")
    return Split(name, samples, stats)


def summary(split: Split, class_names: Sequence[str]) -> str:
    s = split.stats
    what = "masks" if any(sample.segments is not None for sample in split.samples) else "boxes"
    per_class = ", ".join(f"{class_names[c]} {n}" for c, n in sorted(s.boxes_per_class.items())) or "none"
    skipped = ", ".join(f"{r} {n}" for r, n in sorted(s.skipped.items())) or "none"
    dropped = ", ".join(f"{r} {n}" for r, n in sorted(s.dropped.items())) or "none"
    return (f"{split.name}: {len(split.samples)} images of {s.listed} listed (skipped: {skipped}); "
            f"{sum(s.boxes_per_class.values())} {what} ({per_class}); dropped {what}: {dropped}; "
            f"clipped to the image: {s.clipped}")


def read_dataset(train_index: str, val_index: str, class_names: Sequence[str],
                 export_format: str, masks: bool = False) -> tuple[Split, Split]:
    """The validated train and val splits; `masks`: instance segmentation (seg-coco polygons / RLE)."""
    if not class_names:
        raise DatasetError("config key 'class_names' is empty: nothing to train")
    train = read_split("train", train_index, class_names, export_format, masks)
    val = read_split("val", val_index, class_names, export_format, masks)
    for split in (train, val):
        log.info("dataset %s", summary(split, class_names))
        if not split.stats.boxes_per_class:
            log.warning("the %s set has no %s at all", split.name, "masks" if masks else "boxes")
    return train, val


# ---------------------------------------------------------------- YOLO export

def yolo_label_lines(sample: Sample) -> list[str]:
    """`class cx cy w h` normalised to [0, 1], one line per box; with segments, `class x1 y1 x2 y2 ...` per
    instance polygon (Ultralytics' segment labels)."""
    if sample.segments is not None:
        from executor.engine.masks import yolo_segment_line

        return [yolo_segment_line(int(cls), polygon, sample.width, sample.height)
                for polygon, cls in zip(sample.segments, sample.classes.tolist())]
    lines = []
    for (x1, y1, x2, y2), cls in zip(sample.boxes.tolist(), sample.classes.tolist()):
        cx, cy = (x1 + x2) / 2 / sample.width, (y1 + y2) / 2 / sample.height
        w, h = (x2 - x1) / sample.width, (y2 - y1) / sample.height
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return lines


def export_yolo(root: str, splits: Sequence[Split], class_names: Sequence[str]) -> str:
    """`root`/{images,labels}/<split>/ (images are symlinks with a real suffix) and `root`/data.yaml with
    absolute paths; returns the data.yaml path. Nothing is written next to the inputs."""
    root = os.path.abspath(root)
    for split in splits:
        image_dir = os.path.join(root, "images", split.name)
        label_dir = os.path.join(root, "labels", split.name)
        for folder in (image_dir, label_dir):
            os.makedirs(folder, exist_ok=True)
            for name in os.listdir(folder):  # a previous run's files (and Ultralytics' caches) must not mix in
                os.unlink(os.path.join(folder, name))
        used: Counter = Counter()
        for sample in split.samples:
            stem = os.path.splitext(os.path.basename(sample.image))[0]
            used[stem] += 1
            if used[stem] > 1:
                stem = f"{stem}_{used[stem]}"
            os.symlink(os.path.abspath(sample.image), os.path.join(image_dir, f"{stem}.{sample.suffix}"))
            with open(os.path.join(label_dir, f"{stem}.txt"), "w", encoding="utf-8") as handle:
                handle.writelines(yolo_label_lines(sample))
    for stale in ("train.cache", "val.cache"):
        path = os.path.join(root, "labels", stale)
        if os.path.exists(path):
            os.unlink(path)
    data = {"path": root, "train": os.path.join(root, "images", "train"),
            "val": os.path.join(root, "images", "val"), "nc": len(class_names),
            "names": {i: name for i, name in enumerate(class_names)}}
    path = os.path.join(root, "data.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle, sort_keys=False, allow_unicode=True)
    return path


def parse_yolo(path: str, width: int, height: int, class_names: Sequence[str],
               names_source: str = "class_names") -> list[RawBox]:
    """YOLO `cls cx cy w h` (normalised; polygons `cls x y x y ...` become their box) of an image of `width` x
    `height` → raw boxes in pixels; a class id outside `class_names` (called `names_source` in the message) is a
    DatasetError naming the file and line."""
    boxes = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path} line {number}"
            try:
                cls, values = float(fields[0]), [float(f) for f in fields[1:]]
            except ValueError:
                raise DatasetError(f"{where}: expected 'class cx cy w h' numbers, got {line.strip()!r}") from None
            if cls != int(cls) or not 0 <= cls < len(class_names):
                raise DatasetError(f"{where}: class {fields[0]} is outside {names_source} "
                                   f"(0..{len(class_names) - 1})")
            if len(values) == 4:
                cx, cy, w, h = values
                x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            elif len(values) >= 6 and len(values) % 2 == 0:
                xs, ys = values[0::2], values[1::2]
                x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
            else:
                raise DatasetError(f"{where}: expected 'class cx cy w h' (or a polygon), got {line.strip()!r}")
            boxes.append((int(cls), x1 * width, y1 * height, x2 * width, y2 * height, where))
    return boxes


def yolo_label_to_ark(label_file: str, width: int, height: int, class_names: Sequence[str],
                      names_source: str = "the data.yaml names") -> list[str]:
    """YOLO labels (parse_yolo) → ARK lines with the inclusive pixel corners ymir writes (executor.protocol.dataset
    reads xmax + 1)."""
    return [f"{cls}, {x1:.4f}, {y1:.4f}, {x2 - 1:.4f}, {y2 - 1:.4f}\n"
            for cls, x1, y1, x2, y2, _ in parse_yolo(label_file, width, height, class_names, names_source)]
