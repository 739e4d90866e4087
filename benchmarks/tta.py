"""Test-time augmentation (infer's `augment: true`): what it buys in mAP and what it costs in speed.

    python -m benchmarks.tta [--img-size 640] [--images N] [--reps 2]

On coco-val and voc2007, with the shared yolov8n: mAP50 and mAP50-95 by training's evaluation code
(executor.engine.evaluation.evaluate: Ultralytics' validation batches, conf 0.001, multi-label NMS at 0.7) with
the plain and with the augmented forward; then the speed of infer's own path (one image per forward on its
letterboxed canvas, at the infer template's thresholds), plain and augmented interleaved image by image, the order
swapped each repetition, so both arms share whatever else the machine runs: the ratio is what to quote. Ground
truth from benchmarks/gt.py; its ignore regions (COCO crowds, VOC difficult objects) are left out of the truth, as
the platform's readers leave crowds out, the same for both arms. Prints one JSON object per dataset.
"""
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

DATASETS = {"coco-val": "load_coco", "voc2007": "load_voc"}


def parse_args(argv=None):
    from benchmarks import SHARED as shared, benchmark_parser

    p = benchmark_parser("tta", __doc__)
    p.add_argument("--data", default=os.path.join(shared, "data"), help="the folder of coco-val and voc2007")
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--images", type=int, default=None, help="the first N images of each dataset (default all)")
    p.add_argument("--reps", type=int, default=2, help="timed passes of each arm over the images")
    p.add_argument("--batch", type=int, default=8, help="evaluation batch size")
    return p.parse_args(argv)


def samples_of(dataset):
    """The benchmark's ground truth as the evaluation's samples (ignore regions left out)."""
    from benchmarks.gt import image_size
    from executor.shared import Sample

    found = []
    for truth in dataset.images:
        height, width = image_size(truth.path)
        suffix = os.path.splitext(truth.path)[1].lstrip(".").lower()
        found.append(Sample(truth.path, width, height, suffix, truth.boxes.astype(np.float32), truth.cls))
    return found


def paired_seconds(arms: dict, images: list, reps: int) -> dict:
    """Seconds each arm (name → detector) spends predicting every image on its own canvas, `reps` times, the arms
    interleaved image by image (their order swapped each repetition) after an untimed warm-up pass."""
    from executor.engine.images import letterbox, read_image

    prepared = []
    for path in images:
        canvas, box = letterbox(read_image(path), next(iter(arms.values())).img_size, 32)
        prepared.append((canvas[None], [box]))
    spent = dict.fromkeys(arms, 0.0)
    names = list(arms)
    for rep in range(-1, reps):  # -1: the warm-up (the first forward of each canvas shape sets oneDNN up)
        for canvases, boxes in prepared:
            for name in names if rep % 2 == 0 else names[::-1]:
                started = time.perf_counter()
                arms[name].predict_canvases(canvases, boxes)
                if rep >= 0:
                    spent[name] += time.perf_counter() - started
    return spent


def main(argv=None) -> int:
    args = parse_args(argv)
    import benchmarks.gt as gt
    from executor.engine.evaluation import evaluate
    from executor.engine.loading import load_detector
    from executor.protocol.settings import build_settings

    infer = build_settings("infer", {"img_size": args.img_size})
    plain = load_detector(args.weights, "torch", "", infer.img_size, conf_thres=infer.conf_thres,
                          iou_thres=infer.iou_thres, max_det=infer.max_det)
    arms = {"plain": plain, "augment": plain.augmented()}
    evaluate_config = build_settings("training", {}).evaluate_config
    for name, loader in DATASETS.items():
        dataset = getattr(gt, loader)(os.path.join(args.data, name), plain.names, args.images)
        samples = samples_of(dataset)
        row = {"dataset": name, "images": len(samples), "img_size": plain.img_size, "threads": plain_threads()}
        for arm, detector in arms.items():
            started = time.perf_counter()
            metrics = evaluate(detector, samples, evaluate_config["iou_thr"], evaluate_config["conf_thr"],
                               args.batch)
            row[arm] = {"mAP50": round(float(metrics.mAP), 4), "mAP50_95": round(float(metrics.mAP50_95), 4),
                        "eval_s": round(time.perf_counter() - started, 1)}
        spent = paired_seconds(arms, dataset.paths, args.reps)
        row["infer_ms_per_image"] = {arm: round(1000 * s / (len(samples) * args.reps), 1) for arm, s in spent.items()}
        row["speed_ratio"] = round(spent["augment"] / spent["plain"], 2)  # augmented time ÷ plain time
        print(json.dumps(row), flush=True)
    return 0


def plain_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
