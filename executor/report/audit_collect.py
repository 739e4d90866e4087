"""The label audit's page as values: per finding type its worst findings (at most SHOWN_PER_TYPE), each with the
image's labelled boxes, the box the finding is about, the prediction it rests on, and the texts the page shows.
Everything comes in as values (the Audit and the samples it read); nothing here reads a file.
"""

from dataclasses import dataclass, field
from typing import Sequence

from executor.pipeline.label_audit import Audit, ImageFinding, fix_text
from executor.shared import Sample
from mining.audit import DUPLICATE, MISSING, SPURIOUS, TYPES

SHOWN_PER_TYPE = 24  # thumbnails per finding type (audit.json has every finding)

TYPE_TITLES = {"missing": "Missing boxes", "wrong_class": "Wrong classes", "poor_box": "Poor boxes",
               "spurious": "Spurious boxes", "duplicate": "Duplicate boxes"}

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class AuditCard:
    """One finding as shown: `truth` every labelled box of the image (box, class name), `accused` the index of the
    one the finding is about (-1 for a missing box), `prediction` the prediction it rests on (box, label) if any."""
    rank: int
    image: str
    kind: str
    score: float
    class_name: str
    where: str
    truth: list[tuple[Box, str]]
    accused: int
    prediction: tuple[Box, str] | None
    evidence: str
    fix: str


@dataclass
class AuditPageData:
    """Everything the page shows: `about` (model, data, settings as audit.json has them), the set's numbers, the
    counts (Audit.counts()), and per type its total and its shown cards, worst first."""
    about: dict
    images: int
    boxes: int
    unreadable: list[str]
    counts: dict
    cards: dict[str, list[AuditCard]] = field(default_factory=dict)

    def hidden(self, kind: str) -> int:
        """Findings of `kind` not shown as a thumbnail."""
        return self.counts["by_type"][kind] - len(self.cards.get(kind, []))


def audit_page_data(audit: Audit, samples: Sequence[Sample], about: dict,
                    per_type: int = SHOWN_PER_TYPE) -> AuditPageData:
    """The page's values: the first `per_type` findings of each type in the audit's order (worst first)."""
    by_image = {sample.image: sample for sample in samples}
    data = AuditPageData(about, audit.images, audit.boxes, list(audit.unreadable), audit.counts(),
                         {kind: [] for kind in TYPES})
    for rank, found in enumerate(audit.findings, 1):
        shown = data.cards[found.finding.kind]
        if len(shown) < per_type:
            shown.append(audit_card(audit, rank, found, by_image.get(found.image)))
    return data


def audit_card(audit: Audit, rank: int, found: ImageFinding, sample: Sample | None) -> AuditCard:
    f, evidence = found.finding, found.finding.evidence
    truth = [] if sample is None else [(tuple(float(v) for v in box), audit.name(int(cls)))
                                       for box, cls in zip(sample.boxes.tolist(), sample.classes.tolist())]
    prediction = None
    if evidence is not None and f.kind != DUPLICATE:
        label = audit.name(evidence.cls) + ("" if evidence.conf is None else f" {evidence.conf:.2f}")
        prediction = (evidence.box, label)
    return AuditCard(rank, found.image, f.kind, f.score, audit.name(f.cls), found.where, truth, f.annotation,
                     prediction, evidence_text(audit, found), fix_text(audit, found))


def evidence_text(audit: Audit, found: ImageFinding) -> str:
    """What the finding rests on, in a sentence."""
    f, e = found.finding, found.finding.evidence
    if f.kind == DUPLICATE:
        return f"overlaps {found.other_where or 'another box'} of the same class by IoU {e.iou:.2f}"
    if e is None:
        return "no prediction of any class overlaps it"
    said = f"'{audit.name(e.cls)}' predicted at {e.conf:.2f}"
    if f.kind == MISSING:
        return (f"{said}; no labelled box lies on it" + (f" (the nearest '{audit.name(e.cls)}' box overlaps it by "
                                                         f"IoU {e.iou:.2f})" if e.iou > 0 else ""))
    if f.kind == SPURIOUS:
        return f"the surest prediction on it: {said}, IoU {e.iou:.2f}"
    return f"{said}, IoU {e.iou:.2f} with the box"
