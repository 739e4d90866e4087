"""The paired bootstrap over val images: how much the Δ mAP at equal cost owes to which val images were drawn.

mAP is not a sum over images, so each round's model keeps a match table of its val predictions (per detection: the
image, class, score and whether it is a true positive at each IoU of 0.5:0.95, matched as pycocotools matches) in
`val-matches.npz` beside its weights. A bootstrap draw resamples the val images with replacement (an image drawn k
times counts k times: its detections repeated, its boxes counted k times) and recomputes every model's mAP50 and
mAP50-95 from the tables, COCO's 101-point AP; the same draw serves every model (paired), and the Δ of each
algorithm is recomputed as summary.py computes it (compare.gap per seed, mean over seeds). The interval is the
2.5-97.5 percentiles of the draws.

What it does not cover: training noise. The seeds' [min, max] shows that; the interval says whether the val split
is large enough to tell the curves apart with these trained models.
"""

from typing import Mapping, Sequence

import numpy as np

from executor.shared import Sample
from mining.base import Detections
from mining.boxes import box_iou, greedy_match

IOUS = np.linspace(0.5, 0.95, 10)   # COCO's thresholds; column 0 is mAP50
RECALLS = np.linspace(0.0, 1.0, 101)


def match_table(samples: Sequence[Sample], predictions: Sequence[Detections], num_classes: int) -> dict:
    """Per detection its image, class, score and true-positive flag at each IoU (pycocotools' matching: per image
    and class, by score, each to the unmatched box of largest IoU), and the boxes per image and class."""
    image, cls, score, tp = [], [], [], []
    for i, (sample, det) in enumerate(zip(samples, predictions)):
        for c in np.unique(det.cls):
            mine = np.flatnonzero(det.cls == c)
            mine = mine[np.argsort(-det.conf[mine], kind="stable")]
            iou = box_iou(det.xyxy[mine], sample.boxes[sample.classes == c])
            tp.append(np.stack([greedy_match(iou, t) >= 0 for t in IOUS], 1))
            image += [i] * len(mine)
            cls += [int(c)] * len(mine)
            score.append(det.conf[mine])
    gt = np.zeros((len(samples), num_classes), np.int32)
    for i, sample in enumerate(samples):
        np.add.at(gt[i], sample.classes, 1)
    return {"image": np.array(image, np.int32), "cls": np.array(cls, np.int32),
            "score": np.concatenate(score).astype(np.float32) if score else np.zeros(0, np.float32),
            "tp": np.concatenate(tp) if tp else np.zeros((0, len(IOUS)), bool), "gt": gt}


def save(path: str, table: Mapping) -> None:
    np.savez_compressed(path, **table)


def load(path: str) -> dict:
    with np.load(path) as data:
        table = {key: data[key] for key in data.files}
    order = np.lexsort((table["image"], -table["score"]))  # by score, ties in image order (as pycocotools)
    table = {**{k: table[k][order] for k in ("image", "cls", "score", "tp")}, "gt": table["gt"]}
    # a class's detections below its last true positive (at any IoU: matches differ between IoUs) change no AP,
    # whatever the draw (the precision envelope only looks down to the recall reached): most of a 0.001-conf tail
    keep = np.zeros(len(order), bool)
    for c in np.unique(table["cls"]):
        hits = np.flatnonzero((table["cls"] == c) & table["tp"].any(1))
        keep[(table["cls"] == c) & (np.arange(len(order)) <= (hits[-1] if len(hits) else -1))] = True
    return {**{k: table[k][keep] for k in ("image", "cls", "score", "tp")}, "gt": table["gt"]}


def mean_ap(table: Mapping, counts: np.ndarray | None = None) -> tuple[float, float]:
    """(mAP50, mAP50-95) of the val set in which image i appears counts[i] times (None: once each), over the
    classes with boxes; `table` as `load` returns it."""
    counts = np.ones(len(table["gt"]), np.int64) if counts is None else counts
    boxes = counts @ table["gt"]
    per_class = []
    for c in np.flatnonzero(boxes):
        weight = counts[table["image"]] * (table["cls"] == c)
        drawn = weight > 0
        weight, tp = weight[drawn], table["tp"][drawn]
        if not len(tp):
            per_class.append(np.zeros(len(IOUS)))
            continue
        # k copies of a detection are k adjacent points of the curve; only the last of them can change the AP
        # (precision moves monotonically within a run of copies, and the envelope reaches back over the run)
        hits = np.cumsum(tp * weight[:, None], 0)
        recall = hits / boxes[c]
        precision = hits / np.cumsum(weight)[:, None]
        precision = np.maximum.accumulate(precision[::-1], 0)[::-1]  # the envelope
        ap = []
        for t in range(len(IOUS)):
            at = np.searchsorted(recall[:, t], RECALLS, side="left")
            ap.append(np.where(at < len(tp), precision[np.minimum(at, len(tp) - 1), t], 0.0).mean())
        per_class.append(np.array(ap))
    if not per_class:
        return 0.0, 0.0
    per_class = np.array(per_class)
    return float(per_class[:, 0].mean()), float(per_class.mean())


def intervals(curves: Mapping, reference: str, draws: int, seed: int = 0) -> dict:
    """Per algorithm (not the reference): the 95 % intervals of its Δ mAP50 and Δ mAP50-95 at equal cost against
    `reference`, the mean over the seeds both have. `curves`: algorithm → seed → (costs, tables per round)."""
    from executor.simulate.compare import gap

    ref = curves[reference]
    rng = np.random.default_rng(seed)
    n = len(next(iter(ref.values()))[1][0]["gt"])
    found: dict[str, list] = {a: [] for a in curves if a != reference}
    for _ in range(draws):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        cache: dict[int, tuple] = {}  # (the shared round 0 is one table object: computed once per draw)

        def maps(tables):
            for table in tables:
                if id(table) not in cache:
                    cache[id(table)] = mean_ap(table, counts)
            return [cache[id(t)] for t in tables]

        for algorithm in found:
            deltas = []
            for s, (costs, tables) in curves[algorithm].items():
                if s in ref:
                    mine, theirs = maps(tables), maps(ref[s][1])
                    deltas.append([gap(costs, [m[k] for m in mine], ref[s][0], [m[k] for m in theirs])
                                   for k in (0, 1)])
            found[algorithm].append(np.mean(deltas, 0))
    return {a: {key: [float(v) for v in np.percentile(np.array(d)[:, k], [2.5, 97.5])]
                for k, key in enumerate(("cost50", "cost50_95"))} for a, d in found.items() if d}
