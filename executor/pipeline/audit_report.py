"""The label audit's page step: the values executor/report/audit_page.py shows, made from an Audit and the samples
it read (as executor/pipeline/reporting.py does for the mining report), and the page written from them.
"""

import logging
import os
from typing import Sequence

from executor.pipeline.label_audit import Audit, ImageFinding, fix_text
from executor.report.audit_collect import SHOWN_PER_TYPE, AuditCard, AuditPageData
from executor.shared import Sample
from mining.audit import DUPLICATE, MISSING, SPURIOUS, TYPES

log = logging.getLogger(__name__)


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
                     prediction, evidence_text(audit, found), fix_text(audit, found), found.split)


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


def write_audit_page(audit: Audit, samples: Sequence[Sample], about: dict, html_path: str, json_path: str) -> bool:
    """The HTML page (executor/report/audit_page.py), atomically; any failure is a warning, never a failed audit:
    audit.json and audit.csv are the product. Returns whether it was written."""
    try:
        from executor.report.audit_page import write_audit_page as write_page

        write_page(html_path, audit_page_data(audit, samples, about), os.path.basename(json_path))
    except Exception as exc:  # noqa: BLE001 — the page never fails the audit
        log.warning("the audit page %s was not written (%s: %s); %s is complete", html_path, type(exc).__name__,
                    exc, json_path)
        log.debug("page failure", exc_info=True)
        return False
    log.info("wrote the audit page %s", html_path)
    return True
