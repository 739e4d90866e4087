"""start.py audit --export-fixes DIR: the audit's suggested fixes applied to a COPY of the labels, written into a
new folder for review; the original labels are never opened for writing.

Only findings of the chosen types (--fix-types; by default all but spurious, whose deletions are often real objects
the model cannot see) scoring at least `min_score` (--fix-min-score) are applied: missing boxes added, duplicates
(and spurious boxes, when chosen) deleted, classes changed, poor boxes replaced by the prediction's box. Every
finding is listed in DIR/fixes.csv with whether it was applied, and DIR/README.txt says where the originals and the
images are.

- YOLO labels (a data.yaml or a YOLO folder): every label file of the set, mirrored under DIR by its path below
  the folder that holds the set's images and labels; untouched lines are copied as they are, a changed line is
  rewritten as `class cx cy w h` (a polygon whose box is replaced becomes a box), added boxes are appended. An
  image without a label file gets one only when a box is added. Images are not copied.
- a COCO json: a copy of the json, its annotations edited (an added or edited one carries an
  `audit` field: rank, type, score); a replaced box's segmentation is left as it was.

The folder is made beside DIR under a temporary name and renamed into place when complete: DIR holds all of it
or nothing.
"""

import csv
import io
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Sequence

from executor.pipeline.label_audit import Audit, ImageFinding, rounded
from executor.protocol.dataset import read_coco_json
from executor.protocol.labelled import LabelledSet, coco_image_file, yolo_label_paths
from executor.shared import Sample
from mining.audit import SPURIOUS, TYPES

log = logging.getLogger(__name__)

FIX_MIN_SCORE = 0.5  # --fix-min-score: fixes of findings scoring less are listed, not applied
FIX_TYPES = tuple(kind for kind in TYPES if kind != SPURIOUS)  # --fix-types default
YOLO_LINE = re.compile(r"^(?P<file>.+) line (?P<line>\d+)$")        # executor/protocol/dataset.py parse_yolo
COCO_ANNOTATION = re.compile(r"^(?P<file>.+?) annotation id (?P<id>\S+) \(")  # CocoFile._usable
DELETE = ("delete_box", "delete_duplicate")


@dataclass(frozen=True)
class Chosen:
    """A finding with its rank in the audit, and whether its fix is applied (else why not)."""
    rank: int
    found: ImageFinding
    applied: bool
    reason: str = ""


def choose(audit: Audit, min_score: float, types: Sequence[str] = FIX_TYPES) -> list[Chosen]:
    """Every finding, its fix applied when it is of one of `types` and its score reaches `min_score`."""
    chosen = []
    for rank, found in enumerate(audit.findings, 1):
        f = found.finding
        reason = ("type not in --fix-types" if f.kind not in types else
                  f"score below --fix-min-score {min_score:g}" if f.score < min_score else "")
        chosen.append(Chosen(rank, found, not reason, reason))
    return chosen


def data_class(audit: Audit, labelled: LabelledSet, cls: int) -> int:
    """The data's class index of the model's class `cls` (the reader matched them by name, after the class map)."""
    name = audit.name(cls).strip().lower()
    for i, data_name in enumerate(labelled.renamed or labelled.names):
        if data_name.strip().lower() == name:
            return i
    raise ValueError(f"class '{audit.name(cls)}' is not among the data's classes ({labelled.names_from})")


# ---------------------------------------------------------------- YOLO label files

def yolo_box_line(cls: int, box, sample: Sample) -> str:
    """`cls cx cy w h` of a pixel box, normalised by the image's size and clipped to it."""
    x1, x2 = (min(max(v, 0.0), sample.width) for v in (box[0], box[2]))
    y1, y2 = (min(max(v, 0.0), sample.height) for v in (box[1], box[3]))
    return (f"{cls} {(x1 + x2) / 2 / sample.width:.6f} {(y1 + y2) / 2 / sample.height:.6f} "
            f"{(x2 - x1) / sample.width:.6f} {(y2 - y1) / sample.height:.6f}\n")


def line_of(found: ImageFinding) -> tuple[str, int]:
    """(label file, 1-based line) of the finding's labelled box."""
    matched = YOLO_LINE.match(found.where)
    if not matched:
        raise ValueError(f"{found.image}: cannot tell the label line of box {found.finding.annotation} "
                         f"(written at {found.where!r})")
    return matched["file"], int(matched["line"])


def edited_lines(lines: list[str], sample: Sample, chosen: Sequence[Chosen], audit: Audit,
                 labelled: LabelledSet) -> list[str]:
    """A label file's lines with the applied fixes of its image: lines deleted, classes changed, boxes replaced
    (each in place), added boxes appended."""
    out = list(lines)
    deleted, added = set(), []
    for item in chosen:
        f = item.found.finding
        if f.fix.action == "add_box":
            added.append(yolo_box_line(data_class(audit, labelled, f.fix.cls), f.fix.box, sample))
            continue
        _, number = line_of(item.found)
        fields = out[number - 1].split()
        if f.fix.action in DELETE:
            deleted.add(number)
        elif f.fix.action == "change_class":
            out[number - 1] = " ".join([str(data_class(audit, labelled, f.fix.cls)), *fields[1:]]) + "\n"
        elif f.fix.action == "replace_box":
            out[number - 1] = yolo_box_line(int(float(fields[0])), f.fix.box, sample)
    kept = [line if line.endswith("\n") else line + "\n" for n, line in enumerate(out, 1) if n not in deleted]
    return kept + added


def yolo_root(labelled: LabelledSet, label_files: Sequence[str]) -> str:
    """The folder the copy mirrors: the deepest one holding every image and label file of the set."""
    folders = {os.path.dirname(os.path.abspath(p)) for p in (*label_files, *(row[0] for row in labelled.rows))}
    return os.path.commonpath(sorted(folders))


def label_file_of(image: str, given: str, beside: bool) -> str:
    """The image's label file: the one the set has, else where the set's layout puts it."""
    if given:
        return given
    return os.path.splitext(image)[0] + ".txt" if beside else yolo_label_paths([image])[0]


def write_yolo_fixes(folder: str, audit: Audit, samples: Sequence[Sample], labelled: LabelledSet,
                     chosen: Sequence[Chosen]) -> tuple[str, list[str]]:
    """Every label file of the set under `folder` with its image's fixes; returns (the mirrored root, the files
    changed or added)."""
    given = {os.path.abspath(image): label for image, label, _ in labelled.rows}
    beside = any(label and label == os.path.splitext(image)[0] + ".txt" for image, label, _ in labelled.rows)
    files = {image: label_file_of(image, label, beside) for image, label in given.items()}
    root = yolo_root(labelled, list(files.values()))
    by_image: dict[str, list[Chosen]] = {}
    for item in chosen:
        if item.applied:
            by_image.setdefault(os.path.abspath(item.found.image), []).append(item)
    samples_of = {os.path.abspath(s.image): s for s in samples}
    changed = []
    for image, label in sorted(files.items()):
        lines = []
        if given[image]:
            with open(label, encoding="utf-8") as handle:
                lines = handle.readlines()
        fixes = by_image.get(image, [])
        if not given[image] and not fixes:
            continue
        if fixes:
            lines = edited_lines(lines, samples_of[image], fixes, audit, labelled)
            changed.append(label)
        target = os.path.join(folder, os.path.relpath(label, root))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
    return root, changed


# ---------------------------------------------------------------- a COCO json

def annotation_id(found: ImageFinding) -> str:
    matched = COCO_ANNOTATION.match(found.where)
    if not matched:
        raise ValueError(f"{found.image}: cannot tell the COCO annotation of box {found.finding.annotation} "
                         f"(written at {found.where!r})")
    return matched["id"]


def coco_bbox(box) -> list[float]:
    x1, y1, x2, y2 = rounded(box)
    return [x1, y1, round(x2 - x1, 1), round(y2 - y1, 1)]


def edited_coco(path: str, audit: Audit, chosen: Sequence[Chosen]) -> dict:
    """The json of `path` with the applied fixes."""
    data = read_coco_json(path)
    folder = os.path.dirname(path)
    image_ids = {coco_image_file(folder, str(image.get("file_name", ""))): image.get("id")
                 for image in data["images"] if isinstance(image, dict)}
    categories = {}
    for category in data["categories"]:
        categories.setdefault(str(category.get("name", "")).strip().lower(), category.get("id"))
    annotations = {str(ann.get("id")): ann for ann in data.get("annotations", [])}
    next_id = max((a.get("id") for a in data.get("annotations", []) if isinstance(a.get("id"), int)), default=0) + 1
    deleted = set()
    for item in (c for c in chosen if c.applied):
        f = item.found.finding
        mark = {"rank": item.rank, "type": f.kind, "score": round(f.score, 6)}
        if f.fix.action == "add_box":
            bbox = coco_bbox(f.fix.box)
            data["annotations"].append({"id": next_id, "image_id": image_ids[os.path.normpath(item.found.image)],
                                        "category_id": categories[audit.name(f.fix.cls).strip().lower()],
                                        "bbox": bbox, "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0,
                                        "audit": mark})
            next_id += 1
            continue
        key = annotation_id(item.found)
        ann = annotations[key]
        if f.fix.action in DELETE:
            deleted.add(key)
        elif f.fix.action == "change_class":
            ann.update(category_id=categories[audit.name(f.fix.cls).strip().lower()], audit=mark)
        elif f.fix.action == "replace_box":
            bbox = coco_bbox(f.fix.box)
            ann.update(bbox=bbox, area=round(bbox[2] * bbox[3], 2), audit=mark)
    data["annotations"] = [a for a in data["annotations"] if str(a.get("id")) not in deleted]
    return data


def write_coco_fixes(folder: str, audit: Audit, labelled: LabelledSet, chosen: Sequence[Chosen]) -> str:
    path = labelled.rows[0][1]
    target = os.path.join(folder, os.path.basename(path))
    with open(target, "w", encoding="utf-8") as handle:
        json.dump(edited_coco(path, audit, chosen), handle, indent=1, ensure_ascii=False)
        handle.write("\n")
    return path


# ---------------------------------------------------------------- the folder

def fixes_csv(chosen: Sequence[Chosen], audit: Audit) -> str:
    from executor.pipeline.label_audit import fix_text

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("rank", "score", "type", "image", "where", "action", "fix", "applied"))
    for item in chosen:
        f = item.found.finding
        writer.writerow((item.rank, f"{f.score:.6f}", f.kind, item.found.image, item.found.where, f.fix.action,
                         fix_text(audit, item.found), "yes" if item.applied else f"no: {item.reason}"))
    return out.getvalue()


def readme(labelled: LabelledSet, origin: str, chosen: Sequence[Chosen], min_score: float, types: Sequence[str],
           changed: int) -> str:
    applied = sum(item.applied for item in chosen)
    images = sorted({os.path.dirname(image) for image, _, _ in labelled.rows})
    where = (f"The label files mirror {origin}: DIR/<path> is the corrected copy of {origin}/<path>; "
             f"{changed} of them changed or added." if labelled.fmt == "yolo" else
             f"{os.path.basename(origin)} is the corrected copy of {origin}; edited and added annotations carry an "
             f"'audit' field (rank, type, score).")
    return (f"Suggested label fixes of the label audit (start.py audit --export-fixes), for review.\n\n"
            f"The set: {labelled.source}\n{where}\n"
            f"Applied: {applied} of {len(chosen)} findings, those of the types {', '.join(types)} (--fix-types) "
            f"scoring at least {min_score:g} (--fix-min-score); fixes.csv lists every finding and whether its fix "
            f"was applied.\n"
            f"The originals were not changed. The images were not copied; they are in:\n"
            + "".join(f"  {folder}\n" for folder in images[:20])
            + (f"  ... and {len(images) - 20} more folders\n" if len(images) > 20 else "")
            + "\nReview the differences (e.g. diff -r), then copy what you accept over the originals.\n")


def export_fixes(folder: str, audit: Audit, samples: Sequence[Sample], labelled: LabelledSet,
                 min_score: float = FIX_MIN_SCORE, types: Sequence[str] = FIX_TYPES) -> int:
    """The corrected copy in `folder` (absent or empty), made under a temporary name beside it and renamed into
    place when complete; returns how many fixes were applied."""
    if labelled.fmt not in ("yolo", "coco") or labelled.index_file:
        raise ValueError(f"--export-fixes writes YOLO label files or a COCO json; {labelled.source} is {labelled.fmt}")
    chosen = choose(audit, min_score, types)
    folder = os.path.abspath(folder)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.", dir=os.path.dirname(folder))
    try:
        if labelled.fmt == "yolo":
            origin, changed = write_yolo_fixes(work, audit, samples, labelled, chosen)
            count = len(changed)
        else:
            origin, count = write_coco_fixes(work, audit, labelled, chosen), 1
        for name, text in (("fixes.csv", fixes_csv(chosen, audit)),
                           ("README.txt", readme(labelled, origin, chosen, min_score, types, count))):
            with open(os.path.join(work, name), "w", encoding="utf-8") as handle:
                handle.write(text)
        os.chmod(work, 0o755)
        os.replace(work, folder)  # an empty folder is replaced; a non-empty one was refused before the audit
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    applied = sum(item.applied for item in chosen)
    log.info("wrote the suggested fixes to %s: %d of %d applied (%s, score >= %g)", folder, applied, len(chosen),
             ", ".join(types), min_score)
    return applied
