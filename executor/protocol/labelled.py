"""Labelled sets as people keep them → validated samples in a model's classes (`read_labelled`): a data.yaml split,
a YOLO folder, a COCO json or a ymir index. start.py fit-errors fits a model's error model on one. The simulator
reads its data.yaml with the same functions (yaml_names, split_images, convert_yolo_split): one data.yaml reader.

- data.yaml (Ultralytics): the images of one split key (val, test or train: folders, .txt lists, or a list of
  those, relative to its `path` or its own folder), each with the label `labels/…/x.txt` that Ultralytics finds for
  `images/…/x.jpg`; the classes are its `names`.
- a YOLO folder: `images/` and `labels/` side by side, or images with their .txt labels beside them (searched
  recursively); the classes are those of a names.txt, classes.txt or labels.txt in the folder (or beside the
  labels), else of a data.yaml in it, else the label ids are the model's own class indices (a warning says so).
- a COCO json: its images are `images/<file_name>` under the json's folder, or `<file_name>` beside it; the
  classes are its categories' names.
- a ymir index (.tsv: `image<TAB>annotation` per line, absolute paths), read as executor.protocol.dataset.read_split
  reads it: ARK annotations index a names.txt (classes.txt, labels.txt) beside the index, else the model's
  classes; VOC and COCO name their classes.

Every box goes through the training reader's validation (executor/protocol/dataset.py: clipped, degenerate boxes
and crowd regions dropped and counted, unreadable images skipped and counted). An image without a label file
(YOLO) or without annotations (COCO) is a negative: nothing there. The data's classes are matched to the model's
BY NAME, case-insensitively, so a data.yaml in another order is read right; a box of a class the model lacks is a
DatasetError naming the class and the file (and line).

A class map (`class_map`: `data_class<TAB>model_class` per line, the data class a name or a class index, as the
shared sets' coco_names.txt) renames the data's classes first; a class it does not list keeps its own name. Without
one, a coco_names.txt beside the data is used only when the names alone leave a class unmatched; the log says
which map was read.
"""

import hashlib
import json
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np

from executor.errors import DatasetError
from executor.protocol.dataset import (Row, detect_format, probe_image, read_coco_json, read_rows, read_split,
                                       summary, yolo_label_to_ark)
from executor.protocol.index import read_training_index
from executor.protocol.writers import atomic_write_text
from executor.shared import Sample

log = logging.getLogger(__name__)

NAMES_FILES = ("names.txt", "classes.txt", "labels.txt")
SPLITS = ("val", "test", "train")  # the data.yaml keys read_labelled reads
YAML_SUFFIXES = (".yaml", ".yml")
INDEX_SUFFIXES = (".tsv", ".txt")
CLASS_MAP_FILE = "coco_names.txt"  # the class map looked for beside the data


# ---------------------------------------------------------------- data.yaml and YOLO folders (the simulator's too)

def read_names_file(folder: str) -> list[str]:
    """The class names of the first names.txt, classes.txt or labels.txt in `folder` (one per line; `id<TAB>name`
    lines give the name), [] when there is none."""
    path = names_file(folder)
    if not path:
        return []
    with open(path, encoding="utf-8") as handle:
        return [line.split("\t")[-1].strip() for line in handle if line.strip()]


def names_file(folder: str) -> str:
    return next((os.path.join(folder, n) for n in NAMES_FILES if os.path.isfile(os.path.join(folder, n))), "")


def yaml_names(data: Mapping, where: str) -> list[str]:
    """A data.yaml's `names` (a list, or a mapping 0..n-1 → name) as a list."""
    names = data.get("names")
    if isinstance(names, dict):
        try:
            order = sorted(names, key=int)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: 'names' keys must be class indices 0, 1, ...") from None
        if [int(k) for k in order] != list(range(len(order))):
            raise DatasetError(f"{where}: 'names' must number the classes 0..{len(order) - 1} without gaps")
        names = [names[k] for k in order]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{where}: 'names' must list the class names")
    if data.get("nc") is not None and int(data["nc"]) != len(names):
        log.warning("%s: nc %s but %d names; the names are used", where, data["nc"], len(names))
    return [str(n) for n in names]


def yaml_root(spec: str, data: Mapping) -> str:
    """The folder a data.yaml's split entries are relative to: its `path` (relative to the yaml's folder), else
    the yaml's folder."""
    base = os.path.dirname(os.path.abspath(spec))
    return os.path.normpath(os.path.join(base, str(data["path"]))) if data.get("path") else base


def split_images(root: str, entry, where: str) -> list[str]:
    """Image paths of a data.yaml split entry: folders (recursive), .txt lists, or a list of those."""
    from ultralytics.data.utils import IMG_FORMATS

    entries = entry if isinstance(entry, (list, tuple)) else [entry]
    found: list[str] = []
    for item in entries:
        if not isinstance(item, str) or not item.strip():
            raise DatasetError(f"{where}: {item!r} is not a folder or list file")
        path = os.path.normpath(item if os.path.isabs(item) else os.path.join(root, item))
        if os.path.isdir(path):
            for folder, _, names in os.walk(path):
                found += [os.path.join(folder, n) for n in names if n.rsplit(".", 1)[-1].lower() in IMG_FORMATS]
        elif os.path.isfile(path) and path.lower().endswith(".txt"):
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    line = line.strip()
                    if line:
                        base = os.path.dirname(path) if line.startswith("./") else root
                        found.append(os.path.normpath(line if os.path.isabs(line) else os.path.join(base, line)))
        else:
            raise DatasetError(f"{where}: {path} is neither a folder nor a .txt list of images")
    if not found:
        raise DatasetError(f"{where}: no images found in {', '.join(map(str, entries))}")
    return sorted(set(found))


def yolo_label_paths(images: Sequence[str]) -> list[str]:
    """Ultralytics' label file of each image: `labels/…/x.txt` for `images/…/x.jpg`."""
    from ultralytics.data.utils import img2label_paths

    return img2label_paths(list(images))


def no_labels_error(where: str, images: Sequence[str], looked_for: str) -> DatasetError:
    return DatasetError(f"{where}: no YOLO label files for its {len(images)} images (looked for e.g. "
                        f"{looked_for})")


def convert_yolo_split(images: Sequence[str], class_names: Sequence[str], folder: str, index_file: str,
                       where: str) -> None:
    """One data.yaml split as a ymir training index with ARK annotations (written under `folder`)."""
    labels = yolo_label_paths(images)
    if not any(os.path.isfile(p) for p in labels):
        raise no_labels_error(where, images, f"{labels[0]}: labels/ beside images/, one .txt per image")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for image, label in zip(images, labels):
        stem = os.path.splitext(os.path.basename(image))[0]
        target = os.path.join(folder, f"{hashlib.sha1(image.encode()).hexdigest()[:10]}_{stem}.txt")
        probed = probe_image(image)
        lines = []
        if os.path.isfile(label) and not isinstance(probed, str):  # no label file: a negative image
            lines = yolo_label_to_ark(label, probed[0], probed[1], class_names)
        atomic_write_text(target, "".join(lines))  # unreadable images are skipped (and counted) when read
        rows.append(f"{os.path.abspath(image)}\t{target}\n")
    atomic_write_text(index_file, "".join(rows))


# ---------------------------------------------------------------- one labelled set, whatever its form

@dataclass
class LabelledSet:
    """What a form gives before the reading: rows, the format, the data's class names and where they come from."""
    name: str          # the split in messages ('val', or 'labelled')
    rows: list[Row]
    fmt: str           # yolo, coco, ark or voc
    names: list[str]   # the data's classes, which the annotations index (matched to the model's by name)
    names_from: str    # where those names are written, for messages
    source: str        # the set in messages and in the error model's file
    index_file: str = ""  # a ymir index: read by read_split itself (no rows)
    renamed: list[str] = field(default_factory=list)  # `names` as the model's names (after the class map), once read


def read_labelled(spec: str, class_names_of_model: Sequence[str], split: str = "val",
                  class_map: str | None = None) -> tuple[list[Sample], str]:
    """(samples with classes in the model's class indices and where each box is written, a text naming the set)
    of a data.yaml (its `split` key: val, test or train), a YOLO folder, a COCO json or a ymir index, its classes
    renamed by `class_map` (a file; see the module docstring). Raises DatasetError (or ConfigError for an
    unreadable data.yaml) naming the file, line or key."""
    samples, labelled = read_labelled_set(spec, class_names_of_model, split, class_map)
    return samples, labelled.source


def read_labelled_set(spec: str, class_names_of_model: Sequence[str], split: str = "val",
                      class_map: str | None = None) -> tuple[list[Sample], LabelledSet]:
    """read_labelled with the LabelledSet it read (its rows, format, the data's class names and those names as the
    model's, after the class map)."""
    if split not in SPLITS:
        raise DatasetError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    model = [str(n) for n in class_names_of_model]
    path = os.path.abspath(spec)
    lower = path.lower()
    if os.path.isdir(path):
        labelled = yolo_folder(path, model)
    elif not os.path.isfile(path):
        raise DatasetError(f"{spec}: no such file or folder")
    elif lower.endswith(YAML_SUFFIXES):
        labelled = yaml_split(path, split)
    elif lower.endswith(".json"):
        labelled = coco_json(path)
    elif lower.endswith(INDEX_SUFFIXES):
        labelled = ymir_index(path, model)
    else:
        raise DatasetError(f"{spec}: expected a data.yaml, a YOLO folder (images/ and labels/), a COCO .json or a "
                           "ymir index .tsv")
    if labelled.index_file:
        read = read_split(labelled.name, labelled.index_file, labelled.names, f"{labelled.fmt}:raw", sources=True)
    else:
        read = read_rows(labelled.name, labelled.rows, labelled.source, labelled.names, labelled.fmt,
                         names_source=labelled.names_from, sources=True)
    log.info("read %s: %s", labelled.source, summary(read, labelled.names))
    if not read.stats.boxes_per_class:
        raise DatasetError(f"{labelled.source}: no labelled boxes in its {len(read.samples)} images")
    chosen = chosen_class_map(labelled, model, class_map, spec)
    labelled = replace(labelled, renamed=chosen.rename(labelled.names) if chosen else list(labelled.names))
    return in_model_classes(read.samples, labelled, model, chosen), labelled


def yaml_split(spec: str, split: str) -> LabelledSet:
    from executor.protocol.yaml_file import read_yaml_mapping

    data = read_yaml_mapping(spec, "data.yaml")
    names = yaml_names(data, spec)
    if not data.get(split):
        present = [key for key in SPLITS if data.get(key)]
        raise DatasetError(f"{spec}: no key '{split}' (its splits: {', '.join(present) or 'none'})")
    where = f"{spec} key '{split}'"
    if split == "train":
        log.warning("%s: the train split is usually what the model trained on; on its training images a model makes "
                    "too few errors (an error model fitted there underestimates them, an audit finds too few "
                    "mistakes): use val or test", where)
    images = split_images(yaml_root(spec, data), data[split], where)
    labels = yolo_label_paths(images)
    if not any(os.path.isfile(p) for p in labels):
        raise no_labels_error(where, images, f"{labels[0]}: labels/ beside images/, one .txt per image")
    return LabelledSet(split, yolo_rows(images, labels, where), "yolo", names, f"the names of {spec}", where)


def yolo_rows(images: Sequence[str], labels: Sequence[str], where: str) -> list[Row]:
    """Rows of images with their YOLO label files ('' where there is none: a negative image)."""
    return [(image, label if os.path.isfile(label) else "", where) for image, label in zip(images, labels)]


def yolo_folder(folder: str, model: Sequence[str]) -> LabelledSet:
    """images/ + labels/ side by side, or images with their labels beside them."""
    images = split_images(folder, folder, folder)
    beside = [os.path.splitext(image)[0] + ".txt" for image in images]
    labels = beside if any(os.path.isfile(p) for p in beside) else yolo_label_paths(images)
    if not any(os.path.isfile(p) for p in labels):
        raise no_labels_error(folder, images, f"{beside[0]} beside the image, or {labels[0]}")
    label_dir = os.path.dirname(next(p for p in labels if os.path.isfile(p)))
    yaml_file = next((os.path.join(folder, n) for n in ("data.yaml", "data.yml")
                      if os.path.isfile(os.path.join(folder, n))), "")
    if yaml_file:
        log.warning("%s: the whole folder is read (%d images); to read one split, pass %s", folder, len(images),
                    yaml_file)
    found = names_file(folder) or names_file(label_dir) or names_file(os.path.join(folder, "labels"))
    if found:
        names, names_from = read_names_file(os.path.dirname(found)), f"the names of {found}"
    elif yaml_file:
        from executor.protocol.yaml_file import read_yaml_mapping

        names, names_from = yaml_names(read_yaml_mapping(yaml_file, "data.yaml"), yaml_file), \
            f"the names of {yaml_file}"
    else:
        log.warning("%s: no %s: the label class ids are read as the model's own class indices", folder,
                    ", ".join(NAMES_FILES))
        names, names_from = list(model), "the model's classes (no names file in the folder)"
    source = f"the YOLO folder {folder}"
    return LabelledSet("labelled", yolo_rows(images, labels, source), "yolo", names, names_from, source)


def coco_json(path: str) -> LabelledSet:
    """A COCO json with its images under images/ or beside it (the missing ones left out, with a warning)."""
    data = read_coco_json(path)
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise DatasetError(f"{path}: a COCO json needs a 'categories' list naming the classes")
    names = list(dict.fromkeys(str(cat.get("name", "")) for cat in data["categories"] if isinstance(cat, dict)))
    folder = os.path.dirname(path)
    rows, missing = [], []
    for number, image in enumerate(data["images"]):
        name = str(image.get("file_name", "")) if isinstance(image, dict) else ""
        if not name:
            raise DatasetError(f"{path}: images[{number}] has no 'file_name'")
        found = coco_image_file(folder, name)
        if found:
            rows.append((found, path, f"{path} image '{name}'"))
        else:
            missing.append(os.path.join(folder, "images", name))
    if not rows:
        raise DatasetError(f"{path}: none of its {len(data['images'])} images found (looked for images/<file_name> "
                           f"under its folder and <file_name> beside it, e.g. {missing[0] if missing else '-'})")
    if missing:
        log.warning("%s: %d of its %d images not found, left out (e.g. %s)", path, len(missing), len(data["images"]),
                    missing[0])
    return LabelledSet("labelled", rows, "coco", names, f"the categories of {path}", f"the COCO json {path}")


def coco_image_file(folder: str, name: str) -> str:
    """The image a COCO json in `folder` names `name`: images/<name> under it or <name> beside it (or their base
    names there), normalised; '' when none is a file."""
    tries = [os.path.join(folder, "images", name), os.path.join(folder, name)]
    tries += [os.path.join(folder, "images", os.path.basename(name)), os.path.join(folder, os.path.basename(name))]
    return next((os.path.normpath(p) for p in tries if os.path.isfile(p)), "")


def ymir_index(path: str, model: Sequence[str]) -> LabelledSet:
    rows = read_training_index(path, "labelled")
    fmt = detect_format("", [annotation for _, annotation, _ in rows])
    if fmt == "ark":
        names = read_names_file(os.path.dirname(path))
        names_from = f"the names of {names_file(os.path.dirname(path))}"
        if not names:
            log.info("%s: no %s beside the index: the ARK class ids are read as the model's own class indices", path,
                     ", ".join(NAMES_FILES))
            names, names_from = list(model), "the model's classes"
    elif fmt == "voc":
        names, names_from = voc_names(sorted({annotation for _, annotation, _ in rows})), "the VOC object names"
    else:
        names = []
        for annotation in dict.fromkeys(annotation for _, annotation, _ in rows):
            names += coco_json_names(annotation)
        names, names_from = list(dict.fromkeys(names)), "the COCO categories"
    return LabelledSet("labelled", [], fmt, names, names_from, f"the ymir index {path}", index_file=path)


def voc_names(files: Sequence[str]) -> list[str]:
    """Every object name of the VOC files, in order of appearance (unreadable files are read_split's to report)."""
    names = []
    for path in files:
        try:
            names += [(obj.findtext("name") or "").strip() for obj in ET.parse(path).getroot().iter("object")]
        except (OSError, ET.ParseError):
            continue
    return list(dict.fromkeys(names))


def coco_json_names(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return [str(cat.get("name", "")) for cat in data.get("categories") or []]
    except (OSError, ValueError, AttributeError):
        return []  # read_split names the broken file


# ---------------------------------------------------------------- the data's classes → the model's, by name

@dataclass(frozen=True)
class ClassMap:
    """A class map file: data class (a name or a class index, lower-case) → the model class name it is."""
    path: str
    names: dict[str, str]

    def rename(self, names: Sequence[str]) -> list[str]:
        """The model class name of each data class (by its name, else its index; unlisted: its own name)."""
        return [self.names.get(name.strip().lower(), self.names.get(str(i), name)) for i, name in enumerate(names)]


def read_class_map(path: str) -> ClassMap:
    """`data_class<TAB>model_class` per line (blank lines and # comments skipped); DatasetError naming the line."""
    names: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the class map ({error})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 2 or not all(fields):
            raise DatasetError(f"{path} line {number}: expected 'data_class<TAB>model_class', got {line!r}")
        if names.setdefault(fields[0].lower(), fields[1]) != fields[1]:
            raise DatasetError(f"{path} line {number}: class '{fields[0]}' is mapped twice")
    if not names:
        raise DatasetError(f"{path}: the class map is empty")
    return ClassMap(os.path.abspath(path), names)


def chosen_class_map(labelled: LabelledSet, model: Sequence[str], class_map: str | None, spec: str) -> ClassMap | None:
    """The class map to read: `class_map`, else a coco_names.txt beside the data when the names alone leave a
    data class that is no model class (None: the names are the model's); the log says which."""
    if class_map:
        found = read_class_map(class_map)
        log.info("the data's classes are renamed by the class map %s", found.path)
        return found
    beside = os.path.join(spec if os.path.isdir(spec) else os.path.dirname(os.path.abspath(spec)), CLASS_MAP_FILE)
    known = {name.strip().lower() for name in model}
    if all(name.strip().lower() in known for name in labelled.names) or not os.path.isfile(beside):
        log.info("the data's classes are matched to the model's by name (no class map)")
        return None
    found = read_class_map(beside)
    log.info("the data's classes are renamed by the class map %s, found beside the data (some of its class names "
             "are not the model's; pass --class-map to choose another)", found.path)
    return found


def in_model_classes(samples: Sequence[Sample], labelled: LabelledSet, model: Sequence[str],
                     class_map: ClassMap | None = None) -> list[Sample]:
    index: dict[str, int] = {}
    for i, name in enumerate(model):
        index.setdefault(name.strip().lower(), i)
    renamed = labelled.renamed or list(labelled.names)
    to_model = np.array([index.get(name.strip().lower(), -1) for name in renamed], np.int64)
    moved = [(name, k) for i, (name, k) in enumerate(zip(renamed, to_model.tolist())) if k >= 0 and k != i]
    if moved:
        log.info("the data's classes are matched to the model's by name: %d of them have another index in the "
                 "model (e.g. '%s' is the model's class %d)", len(moved), *moved[0])
    converted = []
    for sample in samples:
        classes = to_model[sample.classes] if len(sample.classes) else sample.classes
        if (classes < 0).any():
            data_class = int(sample.classes[np.argmax(classes < 0)])
            name, mapped = labelled.names[data_class], renamed[data_class]
            via = f", mapped to '{mapped}' by {class_map.path}" if class_map and mapped != name else \
                (f", not in the class map {class_map.path}" if class_map else "")
            raise DatasetError(f"{where_class(sample.image, data_class, labelled)}: class '{name}' "
                               f"({labelled.names_from}{via}) is not a class of the model, whose {len(model)} "
                               f"classes are {preview(model)}; map it to one (--class-map) or use data labelled in "
                               "the model's classes")
        converted.append(replace(sample, classes=classes.astype(np.int64)))
    return converted


def where_class(image: str, data_class: int, labelled: LabelledSet) -> str:
    """The file (and line, for text labels) that gives `image` a box of `data_class`."""
    annotation = next((a for i, a, _ in labelled.rows if i == image), "")
    if labelled.index_file:
        annotation = next((a for i, a, _ in read_training_index(labelled.index_file, "labelled") if i == image), "")
    if not annotation:
        return image
    if labelled.fmt in ("yolo", "ark"):
        with open(annotation, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                first = line.replace(",", " ").split()[:1]
                try:
                    if first and float(first[0]) == data_class:
                        return f"{annotation} line {number}"
                except ValueError:
                    continue
    return f"{annotation} (image {os.path.basename(image)})" if labelled.fmt == "coco" else annotation


def preview(names: Sequence[str], count: int = 8) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", … ({len(names) - count} more)" if len(names) > count else "")
