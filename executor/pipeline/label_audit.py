"""The label audit of a labelled set (start.py audit): one forward per image in the evaluation's batches with every
box NMS keeps down to the support level, each image's likely mistakes found by mining/audit.py, ranked worst first
across the set, and written as audit.json (every finding, counts per type and class, the model, data and settings)
and audit.csv (one row per finding): both files or neither.
"""

import csv
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from executor.engine.detector import Detector
from executor.engine.evaluation import predict_candidates, sample_truth
from executor.protocol.writers import atomic_writer
from executor.shared import Sample
from mining import audit as rules
from mining.audit import TYPES, Finding
from mining.base import Detections

log = logging.getLogger(__name__)

CSV_COLUMNS = ("rank", "score", "type", "image", "annotation", "where", "class", "x1", "y1", "x2", "y2",
               "evidence_class", "evidence_confidence", "evidence_iou", "fix")


@dataclass(frozen=True)
class ImageFinding:
    """A finding in the set: its image and where its labelled box (and a duplicate's other box) is written."""
    image: str
    finding: Finding
    where: str = ""        # '' for a missing box
    other_where: str = ""  # a duplicate's other box
    split: str = ""        # after training: 'val' (the model never trained on it) or 'train' (in sample)


@dataclass
class Audit:
    """The findings of a set, worst first, with what the audit read."""
    findings: list[ImageFinding]
    class_names: list[str]
    images: int
    boxes: int
    unreadable: list[str] = field(default_factory=list)

    def counts(self) -> dict:
        """Findings per type, and per class (the labelled box's class; a missing box's predicted class) and type."""
        by_class: dict[str, Counter] = {}
        for found in self.findings:
            by_class.setdefault(self.name(found.finding.cls), Counter())[found.finding.kind] += 1
        return {"by_type": {kind: sum(1 for f in self.findings if f.finding.kind == kind) for kind in TYPES},
                "by_class": {name: {kind: by_class[name][kind] for kind in TYPES if by_class[name][kind]}
                             for name in sorted(by_class)}}

    def name(self, cls: int) -> str:
        return self.class_names[cls] if 0 <= cls < len(self.class_names) else str(cls)


def audit_samples(detector: Detector, samples: Sequence[Sample], confident: float, support: float,
                  batch_size: int, progress: Callable[[float], None] = lambda f: None, split: str = "") -> Audit:
    """The audit of `samples` (classes in the detector's indices) by `detector`."""
    unreadable: list[int] = []
    found = predict_candidates(detector, samples, support, batch_size, progress, unreadable)
    return audit_predictions(samples, found, detector.names, confident, support, unreadable, split)


def audit_predictions(samples: Sequence[Sample], predictions: Sequence[Detections], class_names: Sequence[str],
                      confident: float, support: float, unreadable: Sequence[int] = (), split: str = "") -> Audit:
    """The audit of `samples` from their predictions; an unreadable image (its index in `unreadable`) is left out
    (its labels would all look spurious). Predictions of classes no box in the set has accuse no label."""
    labelled = labelled_classes(samples)
    skipped = set(unreadable)
    found = [None if i in skipped else rules.audit_image(sample_truth(sample), det.xyxy, det.conf, det.cls, det.probs,
                                                         labelled, confident, support)
             for i, (sample, det) in enumerate(zip(samples, predictions))]
    return assembled(samples, found, class_names, split)


def labelled_classes(samples: Sequence[Sample]) -> set[int]:
    """The classes the set's labels name: a prediction of another class accuses no label."""
    return {int(c) for sample in samples for c in sample.classes}


def assembled(samples: Sequence[Sample], found: Sequence[Sequence[Finding] | None], class_names: Sequence[str],
              split: str = "") -> Audit:
    """The audit of `samples` from each one's findings (None: the image could not be decoded), ranked worst first
    across the set."""
    findings = [ImageFinding(sample.image, finding, where_written(sample, finding.annotation),
                             where_written(sample, finding.fix.annotation), split)
                for sample, image in zip(samples, found) if image is not None for finding in image]
    findings.sort(key=lambda f: -f.finding.score)  # stable: ties keep the set's order
    kept = [sample for sample, image in zip(samples, found) if image is not None]
    audit = Audit(findings, list(class_names), len(kept), sum(len(s.boxes) for s in kept),
                  [sample.image for sample, image in zip(samples, found) if image is None])
    if audit.unreadable:
        log.warning("%d images could not be decoded and are not audited (e.g. %s)", len(audit.unreadable),
                    audit.unreadable[0])
    log.info("audited %d images (%d boxes): %d findings (%s)", audit.images, audit.boxes, len(findings),
             ", ".join(f"{kind} {n}" for kind, n in audit.counts()["by_type"].items()))
    return audit


def merged(audits: Sequence[Audit]) -> Audit:
    """One audit of several parts of a set (the splits of a training), findings worst first across them."""
    findings = sorted((f for audit in audits for f in audit.findings), key=lambda f: -f.finding.score)
    return Audit(findings, audits[0].class_names, sum(a.images for a in audits), sum(a.boxes for a in audits),
                 [path for audit in audits for path in audit.unreadable])


def where_written(sample: Sample, annotation: int) -> str:
    """Where box `annotation` of `sample` is written (file and line, ...); '' for none (-1)."""
    if annotation < 0:
        return ""
    return sample.sources[annotation] if sample.sources else f"{sample.image} box {annotation}"


# ---------------------------------------------------------------- audit.json and audit.csv

def settings_record(confident: float, support: float, img_size: int, nms_iou: float) -> dict:
    """The settings an audit ran with, its fixed thresholds (mining/audit.py) included."""
    return {"confident_conf": confident, "support_conf": support, "img_size": img_size, "nms_iou": nms_iou,
            "match_iou": rules.MATCH_IOU, "poor_min_iou": rules.POOR_MIN_IOU, "spurious_iou": rules.SPURIOUS_IOU,
            "spurious_max_support": rules.SPURIOUS_MAX_SUPPORT, "duplicate_iou": rules.DUPLICATE_IOU}


def rounded(box) -> list[float]:
    return [round(float(v), 1) for v in box]


def fix_text(audit: Audit, found: ImageFinding) -> str:
    fix = found.finding.fix
    if fix.action == "add_box":
        return f"add a '{audit.name(fix.cls)}' box at {rounded(fix.box)}"
    if fix.action == "change_class":
        return f"change the class to '{audit.name(fix.cls)}'"
    if fix.action == "replace_box":
        return f"replace the box with {rounded(fix.box)}"
    if fix.action == "delete_duplicate":
        return f"delete this box: it repeats {found.other_where}"
    return "delete this box"


def finding_record(audit: Audit, rank: int, found: ImageFinding) -> dict:
    f, evidence, fix = found.finding, found.finding.evidence, found.finding.fix
    record = {"rank": rank, "image": found.image, **({"split": found.split} if found.split else {}),
              "type": f.kind, "score": round(f.score, 6),
              "class": audit.name(f.cls),
              "annotation": None if f.annotation < 0 else {"index": f.annotation, "where": found.where,
                                                            "box": rounded(f.box)},
              "evidence": None, "fix": {"action": fix.action, "text": fix_text(audit, found)}}
    if evidence is not None:
        record["evidence"] = {"box": rounded(evidence.box), "class": audit.name(evidence.cls),
                              "confidence": None if evidence.conf is None else round(evidence.conf, 6),
                              "iou": round(evidence.iou, 4)}
        if evidence.annotation >= 0:
            record["evidence"]["annotation"] = {"index": evidence.annotation, "where": found.other_where}
    if fix.cls >= 0:
        record["fix"]["class"] = audit.name(fix.cls)
    if fix.box is not None:
        record["fix"]["box"] = rounded(fix.box)
    if fix.annotation >= 0:
        record["fix"]["annotation"] = fix.annotation
    return record


def audit_json(audit: Audit, about: dict) -> str:
    """audit.json: `about` (model, data, settings), the set's numbers, the counts and every finding, worst first."""
    data = {**about, "images": audit.images, "boxes": audit.boxes, "unreadable": audit.unreadable,
            "counts": audit.counts(),
            "findings": [finding_record(audit, rank, found) for rank, found in enumerate(audit.findings, 1)]}
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def audit_csv(audit: Audit) -> str:
    """audit.csv: one row per finding, worst first (a missing box: its predicted box, no annotation)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rank, found in enumerate(audit.findings, 1):
        f, evidence = found.finding, found.finding.evidence
        writer.writerow([rank, f"{f.score:.6f}", f.kind, found.image, "" if f.annotation < 0 else f.annotation,
                         found.where, audit.name(f.cls), *rounded(f.box),
                         "" if evidence is None else audit.name(evidence.cls),
                         "" if evidence is None or evidence.conf is None else f"{evidence.conf:.6f}",
                         "" if evidence is None else f"{evidence.iou:.4f}", fix_text(audit, found)])
    return out.getvalue()


def write_audit(audit: Audit, about: dict, json_path: str, csv_path: str) -> None:
    """Both files, each atomically, made in full before either is renamed into place: a failure while making or
    writing them leaves neither."""
    json_text, csv_text = audit_json(audit, about), audit_csv(audit)
    with atomic_writer(json_path) as json_file, atomic_writer(csv_path) as csv_file:
        json_file.write(json_text)
        csv_file.write(csv_text)
    log.info("wrote %s and %s (%d findings, worst first)", json_path, csv_path, len(audit.findings))
