"""Planted label mistakes for the audit benchmark (benchmarks/audit.py): plant them, match the audit's findings to
them, and score a ranking at K = the number planted.

Boxes are float xyxy in the frame the labelled readers give (executor/protocol/dataset.py: VOC's inclusive corners
become [xmin, ymin, xmax + 1, ymax + 1]; YOLO's normalised boxes are scaled by the image size). Per type, about
`rate` of the set's boxes, drawn with one seeded generator, each labelled box touched at most once:

- missing: a box deleted (its location is the planted mistake);
- wrong_class: a box's class swapped to another class present in the set;
- poor_box: a box shifted and scaled until its IoU with the original is 0.2-0.5 (clipped to the image);
- spurious: a box of a present class added on background: it intersects no labelled box;
- duplicate: a copy of a box jittered by a few percent (IoU with it > 0.8), written after the image's boxes.

A finding HITS a planted mistake when it is of the same type in the same image and: missing, its predicted box
overlaps the deleted box by IoU >= MISSING_IOU; wrong_class, poor_box and spurious, the labelled box it accuses is
the planted box (IoU >= SAME_BOX_IOU); duplicate, either box of its pair is the planted copy. Each planted mistake
is hit at most once (the best-ranked finding on it); the rest are false alarms.
"""
import math
from dataclasses import dataclass, field, replace

import numpy as np

from mining.boxes import box_iou

MISSING, WRONG_CLASS, POOR_BOX, SPURIOUS, DUPLICATE = "missing", "wrong_class", "poor_box", "spurious", "duplicate"
TYPES = (MISSING, WRONG_CLASS, POOR_BOX, SPURIOUS, DUPLICATE)
BOX_TYPES = (WRONG_CLASS, POOR_BOX, SPURIOUS, DUPLICATE)  # found on a labelled box: the IoU baseline ranks those
RATE = 0.04            # planted per type, a fraction of the set's boxes
POOR_IOU = (0.2, 0.5)  # a poor box's IoU with the original
DUPLICATE_MIN_IOU = 0.8
MISSING_IOU = 0.5      # a missing finding on the deleted box (the labelled pass's match)
SAME_BOX_IOU = 0.9     # a finding's labelled box is the planted one (the readers round and clip)
MIN_SIDE = 4.0         # pixels: no planted box is thinner
TRIES = 200


@dataclass
class Box:
    cls: str     # the data's class as written: a VOC name, a YOLO class id
    xyxy: tuple  # float, the readers' frame


@dataclass
class Image:
    key: str     # the image's file name: unique in a set
    path: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)


@dataclass(frozen=True)
class Planted:
    kind: str
    key: str
    xyxy: tuple  # the deleted box, the swapped, moved, added or copied box as written


def iou(a, b) -> float:
    return float(box_iou(np.array([a], float), np.array([b], float))[0, 0])


def plant(images: list[Image], seed: int, rate: float = RATE) -> tuple[list[Image], list[Planted]]:
    """Copies of `images` with about `rate` of their boxes per type turned into mistakes, and the mistakes."""
    rng = np.random.default_rng(seed)
    out = [replace(image, boxes=list(image.boxes)) for image in images]
    where = [(i, j) for i, image in enumerate(out) for j in range(len(image.boxes))]
    count = max(1, round(rate * len(where)))
    chosen = [where[k] for k in rng.permutation(len(where))]
    classes = sorted({box.cls for image in out for box in image.boxes})
    planted, touched, deleted = [], set(), []
    for kind in (WRONG_CLASS, POOR_BOX, DUPLICATE, MISSING):
        done = 0
        for i, j in chosen:
            if done == count:
                break
            if (i, j) in touched:
                continue  # each labelled box is touched once
            made = PLANTERS[kind](out[i], j, classes, rng)
            if made is not None:
                planted.append(Planted(kind, out[i].key, made))
                touched.add((i, j))
                done += 1
                if kind == MISSING:
                    deleted.append((i, j))
    for _ in range(count):  # before the deletions: a deleted box's object is no background
        made = add_spurious(out, classes, rng)
        if made is not None:
            planted.append(made)
    for i, j in sorted(deleted, reverse=True):  # the boxes added above come after every original box
        del out[i].boxes[j]
    return out, planted


def swap_class(image: Image, j: int, classes: list[str], rng) -> tuple | None:
    box = image.boxes[j]
    others = [c for c in classes if c != box.cls]
    if not others:
        return None
    image.boxes[j] = Box(others[int(rng.integers(len(others)))], box.xyxy)
    return box.xyxy


def clipped(xyxy, image: Image) -> tuple:
    x1, y1, x2, y2 = xyxy
    return (float(np.clip(x1, 0, image.width)), float(np.clip(y1, 0, image.height)),
            float(np.clip(x2, 0, image.width)), float(np.clip(y2, 0, image.height)))


def thick(xyxy) -> bool:
    return xyxy[2] - xyxy[0] >= MIN_SIDE and xyxy[3] - xyxy[1] >= MIN_SIDE


def whole(xyxy) -> tuple:
    """Integer corners: what a VOC file can hold (and a YOLO file reads back the same)."""
    return tuple(float(round(v)) for v in xyxy)


def move_box(image: Image, j: int, classes, rng) -> tuple | None:
    """Shift and scale box j until its IoU with where it was is in POOR_IOU."""
    box = image.boxes[j]
    x1, y1, x2, y2 = box.xyxy
    w, h = x2 - x1, y2 - y1
    for _ in range(TRIES):
        sw, sh = np.exp(rng.uniform(-0.7, 0.7, 2))
        dx, dy = rng.uniform(-0.6, 0.6, 2) * (w, h)
        cx, cy = (x1 + x2) / 2 + dx, (y1 + y2) / 2 + dy
        moved = whole(clipped((cx - w * sw / 2, cy - h * sh / 2, cx + w * sw / 2, cy + h * sh / 2), image))
        if thick(moved) and POOR_IOU[0] <= iou(moved, box.xyxy) <= POOR_IOU[1]:
            image.boxes[j] = Box(box.cls, moved)
            return moved
    return None


def copy_box(image: Image, j: int, classes, rng) -> tuple | None:
    """A jittered copy of box j (IoU > DUPLICATE_MIN_IOU), appended to the image's boxes."""
    box = image.boxes[j]
    x1, y1, x2, y2 = box.xyxy
    w, h = x2 - x1, y2 - y1
    for _ in range(TRIES):
        jitter = rng.uniform(-0.04, 0.04, 4) * (w, h, w, h)
        copy = whole(clipped((x1 + jitter[0], y1 + jitter[1], x2 + jitter[2], y2 + jitter[3]), image))
        if thick(copy) and iou(copy, box.xyxy) > DUPLICATE_MIN_IOU:
            image.boxes.append(Box(box.cls, copy))
            return copy
    return None


def delete_box(image: Image, j: int, classes, rng) -> tuple:
    return image.boxes[j].xyxy  # deleted by plant() once every pick is made (the indices stay put until then)


PLANTERS = {WRONG_CLASS: swap_class, POOR_BOX: move_box, DUPLICATE: copy_box, MISSING: delete_box}


def add_spurious(images: list[Image], classes: list[str], rng) -> Planted | None:
    """A box of a present class, the size of a random labelled box, where it intersects no labelled box."""
    sizes = [(b.xyxy[2] - b.xyxy[0], b.xyxy[3] - b.xyxy[1]) for image in images for b in image.boxes]
    for _ in range(TRIES):
        image = images[int(rng.integers(len(images)))]
        w, h = sizes[int(rng.integers(len(sizes)))]
        if w >= image.width or h >= image.height:
            continue
        x, y = rng.uniform(0, image.width - w), rng.uniform(0, image.height - h)
        box = whole((x, y, x + w, y + h))
        if thick(box) and box[2] <= image.width and box[3] <= image.height and \
                not any(intersects(box, b.xyxy) for b in image.boxes):
            image.boxes.append(Box(classes[int(rng.integers(len(classes)))], box))
            return Planted(SPURIOUS, image.key, box)
    return None


def intersects(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


# ---------------------------------------------------------------- findings against the planted mistakes

@dataclass(frozen=True)
class Found:
    """A finding as the matching reads it: `other` is a duplicate's other labelled box (else None)."""
    kind: str
    key: str
    score: float
    xyxy: tuple
    other: tuple | None = None


def on_planted(found: Found, mistake: Planted) -> bool:
    if found.kind != mistake.kind or found.key != mistake.key:
        return False
    if found.kind == MISSING:
        return iou(found.xyxy, mistake.xyxy) >= MISSING_IOU
    boxes = [found.xyxy] + ([found.other] if found.kind == DUPLICATE and found.other is not None else [])
    return any(iou(box, mistake.xyxy) >= SAME_BOX_IOU for box in boxes)


def hits(ranked: list[Found], planted: list[Planted]) -> list[bool]:
    """Per finding (best first), whether it hits a planted mistake no better-ranked finding hit."""
    free = list(planted)
    out = []
    for found in ranked:
        k = next((k for k, mistake in enumerate(free) if on_planted(found, mistake)), -1)
        out.append(k >= 0)
        if k >= 0:
            del free[k]
    return out


def expected_hits_at_k(scores, hit, k: int) -> float:
    """The hits among the `k` highest scores, ties broken at random (the expectation, exact): all of those above
    the score at rank k, and a share of the tied group across it."""
    scores, hit = np.asarray(scores, float), np.asarray(hit, bool)
    if k <= 0 or not len(scores):
        return 0.0
    if k >= len(scores):
        return float(hit.sum())
    cut = np.sort(scores)[::-1][k - 1]
    above, tied = scores > cut, scores == cut
    return float(hit[above].sum() + (k - above.sum()) * hit[tied].sum() / tied.sum())


def at_k(scores, hit, planted: int) -> dict:
    """precision@K (hits ÷ the findings looked at: K, or all of them when fewer) and recall@K (hits ÷ K), K the
    number planted."""
    if planted == 0:
        return {"k": 0, "findings": len(scores), "hits": 0.0, "precision": math.nan, "recall": math.nan}
    found = expected_hits_at_k(scores, hit, planted)
    looked = min(planted, len(scores))
    return {"k": planted, "findings": len(scores), "hits": found, "precision": found / looked if looked else 0.0,
            "recall": found / planted}


def iou_baseline(boxes: list[tuple[str, tuple]], best_iou, planted: list[Planted], kind: str) -> dict:
    """Labelled boxes (key, xyxy) ranked by 1 - their best IoU with any prediction, scored for `kind`."""
    ranked = [Found(kind, key, 1.0 - float(b), xyxy) for (key, xyxy), b in zip(boxes, best_iou)]
    own = [p for p in planted if p.kind == kind]
    hit = one_to_one(ranked, own)
    return at_k([f.score for f in ranked], hit, len(own))


def one_to_one(candidates: list[Found], planted: list[Planted]) -> list[bool]:
    """Whether each candidate is the one labelled box a planted mistake names (order-free: a box hits when it is
    the planted box, the best-overlapping candidate box of its image)."""
    hit = [False] * len(candidates)
    for mistake in planted:
        best, best_iou = -1, SAME_BOX_IOU
        for n, found in enumerate(candidates):
            if found.key == mistake.key and not hit[n]:
                overlap = iou(found.xyxy, mistake.xyxy)
                if overlap >= best_iou:
                    best, best_iou = n, overlap
        if best >= 0:
            hit[best] = True
    return hit
