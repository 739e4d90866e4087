"""Label audit: the likely mistakes in one labelled image, read off a detector's predictions at low confidence.

Five kinds of finding, each with a score in [0, 1] (higher = more likely a mistake), the evidence and a fix:

- missing: a confident prediction that matches no ground-truth box of its class (the one labelled pass,
  mining/truth.py) and lies on no labelled box. Score: its confidence.
- wrong class: a labelled box that a confident prediction of another class lies on (and that no labelled box
  of that class explains), while the model does not confidently back the label's own class there.
  Score: the other class's confidence x (1 - the own class's support).
- poor box: a labelled box the model does not confidently back where it is drawn, but a confident prediction of
  its class overlaps it only partly. Score: confidence x (1 - IoU) x (1 - the own class's support).
- spurious: a labelled box that no prediction of any class overlaps, even at low confidence.
  Score: (1 - the best confidence of a prediction overlapping it) x (1 - its best IoU with any prediction read):
  a box the model sees nothing on AND nothing near is likelier invented than a real object it sees faintly.
- duplicate: two labelled boxes of one class on one object. Score: their IoU.

A labelled box gets at most one of wrong class, poor box and spurious (the first that applies, in that order);
duplicate is about a pair. The support of a labelled box for class k: the largest probability of k that a
prediction on it (IoU >= MATCH_IOU) gives, read from its full class vector when there is one (a box predicted
'dog' at 0.6 may give 'cat' 0.3), else its confidence when its class is k.
Predictions of classes the labels never name (`classes`: a COCO model's benches on a VOC image) accuse no label.
"""
from dataclasses import dataclass

import numpy as np

from mining.boxes import box_iou
from mining.truth import IOU_THRESHOLD, ImageTruth, match

MISSING, WRONG_CLASS, POOR_BOX, SPURIOUS, DUPLICATE = "missing", "wrong_class", "poor_box", "spurious", "duplicate"
TYPES = (MISSING, WRONG_CLASS, POOR_BOX, SPURIOUS, DUPLICATE)

CONFIDENT_CONF = 0.5        # a prediction this sure is evidence against the labels (below it most are doubts)
SUPPORT_CONF = 0.01         # predictions down to this confidence count as support for a label
MATCH_IOU = IOU_THRESHOLD   # a prediction and a box on one object (COCO's match, as the labelled pass)
POOR_MIN_IOU = 0.1          # below it a same-class prediction is on another object, not a loose box of this one
SPURIOUS_IOU = 0.3          # a prediction overlapping a box this much shows something is there, if loosely boxed
SPURIOUS_MAX_SUPPORT = 0.1  # a real object nearly always draws a prediction above this; less is nothing seen there
DUPLICATE_IOU = 0.7         # two boxes of one class overlapping this much are one object labelled twice


@dataclass(frozen=True)
class Evidence:
    """What a finding rests on: a prediction (its box, class, confidence and IoU with the labelled box), or for a
    duplicate the other labelled box (`annotation`, no confidence)."""
    box: tuple[float, float, float, float]
    cls: int
    iou: float
    conf: float | None = None
    annotation: int = -1


@dataclass(frozen=True)
class Fix:
    """The suggested correction: add_box (cls, box), delete_box, change_class (cls), replace_box (box) or
    delete_duplicate (of `annotation`)."""
    action: str
    cls: int = -1
    box: tuple[float, float, float, float] | None = None
    annotation: int = -1


@dataclass(frozen=True)
class Finding:
    """One likely mistake. `annotation`: the labelled box's index in the image's truth (-1 for missing); `cls` and
    `box`: the labelled box's (for missing: the prediction's)."""
    kind: str
    score: float
    annotation: int
    cls: int
    box: tuple[float, float, float, float]
    evidence: Evidence | None
    fix: Fix


@dataclass
class Predictions:
    """One image's predictions as the checks read them, with their IoU against the labelled boxes."""
    xyxy: np.ndarray   # (P, 4)
    conf: np.ndarray   # (P,)
    cls: np.ndarray    # (P,)
    probs: np.ndarray | None  # (P, C) or None
    iou: np.ndarray    # (P, G)
    labelled: np.ndarray  # (P,) bool: of a class the labels name

    def prob(self, k: int) -> np.ndarray:
        """(P,) each prediction's probability of class k."""
        if self.probs is not None and k < self.probs.shape[1]:
            return self.probs[:, k]
        return np.where(self.cls == k, self.conf, 0.0)

    def box(self, p: int) -> tuple[float, float, float, float]:
        return _box(self.xyxy[p])


def _box(row) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in row)


def audit_image(truth: ImageTruth, det_xyxy, det_conf, det_cls, det_probs=None, classes=None,
                confident: float = CONFIDENT_CONF, support: float = SUPPORT_CONF) -> list[Finding]:
    """The findings of one image, most likely mistake first: `truth` its labels, the detections (xyxy, conf, cls,
    optionally the full class vectors (N, C)) made down to `support` or lower, `classes` the classes the labels
    name (None: all). A prediction at `confident` or above is evidence of a mistake."""
    preds = predictions(truth, det_xyxy, det_conf, det_cls, det_probs, classes, support)
    own = own_support(preds, truth)
    findings, used = [], set()
    for g in range(truth.objects):
        finding = wrong_class(preds, truth, g, own[g], confident)
        if finding is None:
            p = partial_prediction(preds, truth, g, own[g], confident)
            finding = poor_box(preds, truth, g, p, own[g]) if p >= 0 else spurious(preds, truth, g)
            used.add(p)  # the poor box's evidence is not also a missing object (-1: none)
        if finding is not None:
            findings.append(finding)
    findings += missing(preds, truth, classes, confident, used) + duplicates(truth)
    return sorted(findings, key=lambda f: -f.score)


def predictions(truth: ImageTruth, det_xyxy, det_conf, det_cls, det_probs, classes, support: float) -> Predictions:
    """The detections at `support` or above, checked for consistent shapes."""
    conf = np.asarray(det_conf, np.float64).reshape(-1)
    xyxy, cls = np.asarray(det_xyxy, np.float64).reshape(-1, 4), np.asarray(det_cls, np.int64).reshape(-1)
    probs = None if det_probs is None else np.asarray(det_probs, np.float64)
    vectors_fit = probs is None or (probs.ndim == 2 and len(probs) == len(conf))
    if not len(xyxy) == len(cls) == len(conf) or not vectors_fit:
        raise ValueError(f"{truth.path}: detections of inconsistent shapes")
    keep = conf >= support
    labelled = np.ones(int(keep.sum()), bool) if classes is None else np.isin(cls[keep], list(classes))
    return Predictions(xyxy[keep], conf[keep], cls[keep], None if probs is None else probs[keep],
                       box_iou(xyxy[keep], truth.boxes), labelled)


def own_support(preds: Predictions, truth: ImageTruth) -> np.ndarray:
    """(G,) per labelled box, the largest probability of its class a prediction on it gives (0 without one)."""
    found = np.zeros(truth.objects)
    for g in range(truth.objects):
        on = preds.iou[:, g] >= MATCH_IOU
        if on.any():
            found[g] = preds.prob(int(truth.cls[g]))[on].max()
    return found


def wrong_class(preds: Predictions, truth: ImageTruth, g: int, own: float, confident: float) -> Finding | None:
    """The most confident prediction of another (labelled) class on box g, if no box of that class explains it."""
    if own >= confident:
        return None
    label = int(truth.cls[g])
    best = -1
    for p in np.argsort(-preds.conf, kind="stable"):
        k = int(preds.cls[p])
        if k == label or not preds.labelled[p] or preds.conf[p] < confident or preds.iou[p, g] < MATCH_IOU:
            continue
        if (preds.iou[p][truth.cls == k] >= MATCH_IOU).any():
            continue  # its own labelled box is there too (a rider on a horse)
        best = int(p)
        break
    if best < 0:
        return None
    conf, k = float(preds.conf[best]), int(preds.cls[best])
    return Finding(WRONG_CLASS, conf * (1.0 - own), g, label, _box(truth.boxes[g]),
                   Evidence(preds.box(best), k, float(preds.iou[best, g]), conf), Fix("change_class", cls=k))


def partial_prediction(preds: Predictions, truth: ImageTruth, g: int, own: float, confident: float) -> int:
    """The confident same-class prediction that overlaps box g best but only partly, g being its nearest box of
    that class, when the model does not back g where it is drawn; -1 when there is none."""
    if own >= confident:
        return -1
    label = int(truth.cls[g])
    same = truth.cls == label
    best, best_iou = -1, 0.0
    for p in range(len(preds.conf)):
        iou = preds.iou[p, g]
        if preds.cls[p] != label or preds.conf[p] < confident or not POOR_MIN_IOU <= iou < MATCH_IOU:
            continue
        if preds.iou[p][same].max() > iou:
            continue  # nearer to another box of the class: about that one
        if iou > best_iou:
            best, best_iou = p, float(iou)
    return best


def poor_box(preds: Predictions, truth: ImageTruth, g: int, p: int, own: float) -> Finding:
    """Box g, to be replaced by prediction p's box."""
    conf, iou, label = float(preds.conf[p]), float(preds.iou[p, g]), int(truth.cls[g])
    return Finding(POOR_BOX, conf * (1.0 - iou) * (1.0 - own), g, label, _box(truth.boxes[g]),
                   Evidence(preds.box(p), label, iou, conf), Fix("replace_box", box=preds.box(p)))


def spurious(preds: Predictions, truth: ImageTruth, g: int) -> Finding | None:
    """Box g when no prediction of any class overlapping it reaches SPURIOUS_MAX_SUPPORT, scored lower the nearer
    any prediction comes."""
    near = np.where(preds.iou[:, g] >= SPURIOUS_IOU)[0]
    best = int(near[np.argmax(preds.conf[near])]) if len(near) else -1
    seen = float(preds.conf[best]) if best >= 0 else 0.0
    if seen >= SPURIOUS_MAX_SUPPORT:
        return None
    nearest = float(preds.iou[:, g].max()) if len(preds.conf) else 0.0
    evidence = Evidence(preds.box(best), int(preds.cls[best]), float(preds.iou[best, g]), seen) if best >= 0 else None
    return Finding(SPURIOUS, (1.0 - seen) * (1.0 - nearest), g, int(truth.cls[g]), _box(truth.boxes[g]), evidence, Fix("delete_box"))


def missing(preds: Predictions, truth: ImageTruth, classes, confident: float, used: set) -> list[Finding]:
    """Confident predictions the labelled pass calls false positives that lie on no labelled box (of any class)
    and are no poor box's evidence; of two on one object, the more confident."""
    sure = np.where(preds.conf >= confident)[0]
    outcome = match(preds.xyxy[sure], preds.conf[sure], preds.cls[sure], truth, classes, MATCH_IOU)
    found: list[Finding] = []
    for p in sure[outcome.fp][np.argsort(-preds.conf[sure[outcome.fp]], kind="stable")]:
        if int(p) in used or (preds.iou[p] >= MATCH_IOU).any():
            continue
        box, k = preds.box(p), int(preds.cls[p])
        if any(f.cls == k and box_iou(np.array([box]), np.array([f.box]))[0, 0] >= MATCH_IOU for f in found):
            continue
        same = truth.cls == k
        nearest = float(preds.iou[p][same].max()) if same.any() else 0.0
        conf = float(preds.conf[p])
        found.append(Finding(MISSING, conf, -1, k, box, Evidence(box, k, nearest, conf),
                             Fix("add_box", cls=k, box=box)))
    return found


def duplicates(truth: ImageTruth) -> list[Finding]:
    """Each labelled box that overlaps an earlier box of its class by DUPLICATE_IOU or more (the later one is the
    one to delete)."""
    iou = box_iou(truth.boxes, truth.boxes)
    found = []
    for j in range(truth.objects):
        earlier = [i for i in range(j) if truth.cls[i] == truth.cls[j] and iou[i, j] >= DUPLICATE_IOU]
        if earlier:
            i = max(earlier, key=lambda i: iou[i, j])
            found.append(Finding(DUPLICATE, float(iou[i, j]), j, int(truth.cls[j]), _box(truth.boxes[j]),
                                 Evidence(_box(truth.boxes[i]), int(truth.cls[i]), float(iou[i, j]), annotation=i),
                                 Fix("delete_duplicate", annotation=i)))
    return found
