"""Labelling cost: what a round's revealed images cost to label (cost = boxes + c · images, so that an empty image
is never free), the cost budget's cut of a ranking, and what correcting the previous model's pre-labels of them
would cost (its false positives + misses).
"""

from typing import Callable, Mapping, Sequence

from executor.shared import Sample
from mining.base import Detections

PRELABEL_IOU = 0.5   # a pre-label is right when it overlaps a box of its class this much


def image_cost(sample: Sample, per_image: float) -> float:
    return len(sample.boxes) + per_image


def take_by_cost(ranking: Sequence[str], costs: Mapping[str, float], budget: float) -> list[str]:
    """The top of `ranking` whose cost reaches `budget`: images are taken in order until the sum is >= budget, so
    the image that crosses it is included (a round costs at least `budget`, and overshoots by less than that one
    image). An error when the ranking runs out first: the round could not spend its budget."""
    taken, spent = [], 0.0
    for image in ranking:
        if spent >= budget:
            return taken
        taken.append(image)
        spent += costs[image]
    if spent < budget:
        raise RuntimeError(f"the pool ran out: its {len(ranking)} unlabelled images cost {spent:g}, less than the "
                           f"round's budget {budget:g}; use a smaller --budget-cost or fewer --rounds")
    return taken


def tally(images: Sequence[str], samples: Mapping[str, Sample], per_image: float) -> dict:
    """images, boxes and cost of a set of pool images."""
    boxes = sum(len(samples[p].boxes) for p in images)
    return {"images": len(images), "boxes": boxes, "cost": round(boxes + per_image * len(images), 6)}


def correction(samples: Sequence[Sample], predictions: Sequence[Detections], conf_thres: float) -> dict:
    """What pre-labelling costs to fix: the detections at `conf_thres` (each box with its best class) matched to
    the ground truth of their class at IoU 0.5; false positives are deleted, misses drawn."""
    from executor.engine.evaluation import count_matches, primary_labels

    _, fp, fn = count_matches(samples, [primary_labels(d) for d in predictions], PRELABEL_IOU, conf_thres)
    return {"fp": fp, "misses": fn, "cost": fp + fn}


Prelabeller = Callable[[str, Sequence[Sample], Mapping], list[Detections]]


def prelabel(weights: str, samples: Sequence[Sample], config: Mapping) -> list[Detections]:
    """The detections `weights` gives `samples` as Quarry's infer would (its template's img_size, conf_thres,
    iou_thres, max_det; each image letterboxed alone): the pre-labels a team would import."""
    from executor.engine.device import batch_size
    from executor.engine.images import read_image
    from executor.engine.loading import load_detector
    from executor.protocol.settings import build_settings

    settings = build_settings("infer", {k: v for k, v in config.items() if k != "class_names"})
    detector = load_detector(weights, "torch", settings.gpu_id.split(",")[0], settings.img_size,
                             conf_thres=settings.conf_thres, iou_thres=settings.iou_thres, max_det=settings.max_det,
                             threads=settings.cpu_threads)
    batch = batch_size(settings.batch_size_per_gpu, detector.device.type == "cuda")
    found: list[Detections] = []
    for start in range(0, len(samples), batch):  # (decoded a batch at a time: memory stays flat)
        found += detector.predict_views([read_image(s.image) for s in samples[start:start + batch]], batch)
    return found


def conf_thres(config: Mapping) -> float:
    """The infer template's conf_thres after the run's settings: where pre-labels are cut."""
    from executor.protocol.settings import build_settings

    return float(build_settings("infer", {k: v for k, v in config.items() if k != "class_names"}).conf_thres)
