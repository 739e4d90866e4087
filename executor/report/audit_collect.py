"""The label audit's page as values: per finding type its worst findings (at most SHOWN_PER_TYPE), each with the
image's labelled boxes, the box the finding is about, the prediction it rests on, and the texts the page shows.
executor/pipeline/audit_report.py makes them from an audit; nothing here reads a file.
"""

from dataclasses import dataclass, field

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
    split: str = ""  # whose images: 'val', 'train' (the model trained on it), 'fold k' (--folds); '' not said


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
