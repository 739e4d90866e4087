"""The int8 export (training's export_int8, executor/engine/quantize.py) against its float ONNX, on coco-val with the
COCO model: the float export (dynamic batch and size, as training quantises it) is quantised on the first
--calibration images (sorted by file name; coco-val read by executor.protocol.labelled), and the rest of coco-val, images the calibration never saw, measures

- mAP@0.5 and mAP@[.5:.95] of each (executor.engine.evaluation.evaluate: training's evaluation code);
- speed on CPU: int8 ÷ float seconds of one forward (ONNX Runtime, --threads threads each), paired per image and
  interleaved (the order alternates image by image), on the same letterboxed canvases; the median of the per-image
  ratios and the ratio of the sums;
- mining agreement: entropy mining (executor.api.mine) with each model, Spearman of the two score lists and the
  overlap of their top 20 %.

A report, no target.

    .venv/bin/python -m benchmarks.int8                        # 640 px, 100 calibration images (~4 min, 2 cores)
    .venv/bin/python -m benchmarks.int8 --img-size 320 --calibration 30 --speed-images 20   # smoke run
"""
import json
import logging
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from executor.runtime import prepare_process_env  # noqa: E402

log = logging.getLogger("benchmarks.int8")
TOP_FRACTION = 0.2


def parse_args(argv=None):
    from benchmarks import SHARED as shared, benchmark_parser

    p = benchmark_parser("int8", __doc__)
    p.add_argument("--coco", default=os.path.join(shared, "data", "coco-val"))
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--calibration", type=int, default=100, help="coco-val images that calibrate (the first ones)")
    p.add_argument("--speed-images", type=int, default=40, help="held-out images timed, each model once per image")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of each model")
    p.add_argument("--json", help="also write the numbers to this file")
    return p.parse_args(argv)


def paired_speed(float_detector, int8_detector, paths) -> dict:
    """Seconds of one forward of each model on each image's canvas, the two in alternating order image by image."""
    import numpy as np

    from executor.engine.images import read_image

    canvases = [float_detector.letterbox(read_image(p))[0][None] for p in paths]
    for detector in (float_detector, int8_detector):  # warm-up: session set-up and first allocations
        detector.head(canvases[0])
    times = {"float": [], "int8": []}
    for n, canvas in enumerate(canvases):
        pair = [("float", float_detector), ("int8", int8_detector)]
        for name, detector in pair if n % 2 == 0 else pair[::-1]:
            started = time.perf_counter()
            detector.head(canvas)
            times[name].append(time.perf_counter() - started)
    f, i = np.array(times["float"]), np.array(times["int8"])
    return {"images": len(canvases), "float_ms_median": round(1000 * float(np.median(f)), 1),
            "int8_ms_median": round(1000 * float(np.median(i)), 1),
            "int8_over_float_median_of_ratios": round(float(np.median(i / f)), 3),
            "int8_over_float_sum": round(float(i.sum() / f.sum()), 3)}


def mining_agreement(float_onnx: str, int8_onnx: str, paths, img_size: int, threads: int) -> dict:
    """Entropy mining with each model: Spearman of the scores, overlap of the top TOP_FRACTION."""
    from scipy.stats import spearmanr

    from executor.api import mine

    scores = {}
    for name, weights in (("float", float_onnx), ("int8", int8_onnx)):
        scores[name] = dict(mine(list(paths), weights, "entropy", img_size=img_size, cpu_threads=threads))
    keys = sorted(scores["float"])
    k = max(1, round(TOP_FRACTION * len(keys)))
    top = {name: set(sorted(keys, key=lambda key: -s[key])[:k]) for name, s in scores.items()}
    rho = spearmanr([scores["float"][key] for key in keys], [scores["int8"][key] for key in keys]).statistic
    return {"images": len(keys), "spearman": round(float(rho), 3), "top": k,
            "top_overlap": round(len(top["float"] & top["int8"]) / k, 3)}


def main(argv=None) -> int:
    from benchmarks import log_to_stderr

    args = parse_args(argv)
    prepare_process_env()
    log_to_stderr()
    from executor.engine.evaluation import evaluate
    from executor.engine.loading import export_onnx, load_detector
    from executor.engine.quantize import quantize_int8
    from executor.protocol.labelled import read_labelled

    names = load_detector(args.weights, "torch", "", args.img_size, conf_thres=0.25, iou_thres=0.7, max_det=300).names
    samples = sorted(read_labelled(os.path.join(args.coco, "annotations.json"), names)[0], key=lambda s: s.image)
    calibration, held_out = samples[:args.calibration], samples[args.calibration:]
    result = {"weights": os.path.basename(args.weights), "img_size": args.img_size, "threads": args.threads,
              "calibration_images": len(calibration), "held_out_images": len(held_out)}
    with tempfile.TemporaryDirectory(prefix="quarry-int8-") as scratch:
        float_onnx, int8_onnx = os.path.join(scratch, "best.onnx"), os.path.join(scratch, "best-int8.onnx")
        export_onnx(args.weights, float_onnx, args.img_size, 13, dynamic=True)
        started = time.perf_counter()
        quantize_int8(float_onnx, int8_onnx, [s.image for s in calibration], args.img_size, args.threads)
        result["quantise_s"] = round(time.perf_counter() - started, 1)
        result["size_mb"] = {name: round(os.path.getsize(path) / 2**20, 2)
                             for name, path in (("float", float_onnx), ("int8", int8_onnx))}
        detectors = {name: load_detector(path, "onnx", "", args.img_size, conf_thres=0.005, iou_thres=0.7,
                                         max_det=300, threads=args.threads)
                     for name, path in (("float", float_onnx), ("int8", int8_onnx))}
        for name, detector in detectors.items():
            metrics = evaluate(detector, held_out, 0.5, 0.005, 8)
            result[f"mAP50_{name}"], result[f"mAP50_95_{name}"] = round(metrics.mAP, 4), round(metrics.mAP50_95, 4)
        result["mAP50_drop"] = round(result["mAP50_float"] - result["mAP50_int8"], 4)
        result["speed"] = paired_speed(detectors["float"], detectors["int8"],
                                       [s.image for s in held_out[:args.speed_images]])
        result["mining_entropy"] = mining_agreement(float_onnx, int8_onnx, [s.image for s in held_out],
                                                    args.img_size, args.threads)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
