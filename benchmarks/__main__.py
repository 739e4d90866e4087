"""Mining benchmarks: speed against the hardware limit (P0-P9, and P0 best: the model's best forward in a process
of its own, the yardstick of one mining run over the pool, P1 run) and quality against random (Q2, the headline,
Q1 and Q3) on coco-val, voc2007 and a fixed 300-image subset of highway.

    .venv/bin/python -m benchmarks            # full run on CPU (~10 min on 2 cores), writes JSON + docs
    .venv/bin/python -m benchmarks --quick    # smoke run: few images, one repetition (~2 min)
    .venv/bin/python -m benchmarks --device cuda --pool-repeat 8   # on a GPU

Writes benchmarks/results/latest.json and regenerates docs/benchmarks.md (see --json / --markdown).
"""
import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from executor.runtime import prepare_process_env  # noqa: E402

log = logging.getLogger("benchmarks")
ALGORITHMS = ("entropy", "errors", "aldd", "cald")
# the timed errors runs read the prior, as a platform run does without a fitted file beside the weights (a
# fitted model costs the same arithmetic); its quality row is named for that
TIMED_CONFIG = {"errors": {"errors_prior": True}}
ROW_OF = {"errors": "errors (prior)"}
RUN_ALGORITHMS = ("entropy", "errors", "aldd", "cald")  # P1 run: one mining run over the pool ÷ the best forward
ONNX_RUN = "entropy (onnx)"  # P1 run of entropy with the model's ONNX export on ONNX Runtime (CPU)
QUIET_LOAD = 2.5  # 1-minute load average under which the host counts as quiet (--wait-quiet)


def parse_args(argv=None):
    shared = os.path.join(os.path.dirname(REPO), "shared")
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 24 COCO / 16 VOC / 16 highway images, 1 rep, short P4/P5")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--weights", default=os.path.join(shared, "weights", "yolov8n.pt"))
    p.add_argument("--coco", default=os.path.join(shared, "data", "coco-val"))
    p.add_argument("--voc", default=os.path.join(shared, "data", "voc2007"))
    p.add_argument("--highway", default=os.path.join(shared, "data", "highway"),
                   help="quality set: a fixed 300-image draw of its valid+test (benchmarks/gt.py load_yolo)")
    p.add_argument("--images", type=int, help="use only the first N images of coco-val (2/3 of it, at least 8, of "
                                              "voc2007 and highway)")
    p.add_argument("--pool-repeat", type=int, default=1,
                   help="speed pool = the COCO images repeated K times (more images per timed segment: a GPU "
                        "mines 206 images in a fraction of a second)")
    p.add_argument("--reps", type=int, help="repetitions of the timed mining runs (default 1)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="MINUTES",
                   help="first wait up to this long for the 1-minute load average to drop under 2.5")
    p.add_argument("--segments", type=int, default=8,
                   help="timed runs go segment by segment, each next to a P0 run on the same images (default 8)")
    p.add_argument("--rss-pool", type=int, default=64, help="P4: images in the 1x pool (default 64)")
    p.add_argument("--rss-times", type=int, default=10, help="P4: the large pool is this many copies")
    p.add_argument("--rss-batch", type=int, default=1,
                   help="P4: batch_size_per_gpu of both runs (default 1: the loop then holds a few images, far "
                        "fewer than the 1x pool, so any growth with the pool shows; it holds ~4 batches + workers)")
    p.add_argument("--rss-algorithm", default="aldd")
    p.add_argument("--p5-reps", type=int, default=3)
    p.add_argument("--skip", default="",
                   help="comma-separated parts to skip: quality,voc,highway,p0best,p3,p4,p5,p6,p7,p8,p9")
    p.add_argument("--render", action="store_true",
                   help="run nothing: regenerate the markdown from the JSON results already written")
    p.add_argument("--profile", action="store_true",
                   help="also cProfile each algorithm's mining run (benchmarks/results/profile-<algo>.txt)")
    p.add_argument("--json", help="result file (default benchmarks/results/latest.json; latest-cuda.json with "
                                  "--device cuda)")
    p.add_argument("--markdown", default=os.path.join(REPO, "docs", "benchmarks.md"),
                   help="markdown to regenerate (with --update-docs, or for a full run)")
    p.add_argument("--update-docs", action="store_true",
                   help="with --quick: also rewrite --markdown (a quick run leaves the tracked docs alone)")
    args = p.parse_args(argv)
    if args.quick:
        if not args.update_docs:
            args.markdown = ""
        args.images = args.images or 24
        args.reps = args.reps or 1
        args.segments = min(args.segments, 2)
        args.rss_pool = min(args.rss_pool, 12)
        args.p5_reps = 1
    args.reps = args.reps or 1
    if not args.json:
        name = "latest.json" if args.device == "cpu" else f"latest-{args.device}.json"
        args.json = os.path.join(REPO, "benchmarks", "results", name)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


def machine_info(device) -> dict:
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": str(device)}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import ultralytics
        import onnxruntime

        info["ultralytics"], info["onnxruntime"] = ultralytics.__version__, onnxruntime.__version__
    except ImportError:
        pass
    return info


def load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def split(pool: list, parts: int) -> list[list]:
    """`pool` in `parts` contiguous segments of near-equal size (at least one image each)."""
    parts = max(1, min(parts, len(pool)))
    edges = [round(i * len(pool) / parts) for i in range(parts + 1)]
    return [pool[a:b] for a, b in zip(edges, edges[1:])]


def pooled_rate(runs) -> float:
    return sum(r["images"] for r in runs) / sum(r["seconds"] for r in runs)


ANALYSIS_CONF = 0.01  # the detection pass keeps boxes down to this score for the analysis variants
ENTROPY_TOPK = 3      # the template's entropy_topk, for the entropy_topk_mean variant


def detect_pass(keys, detector, settings) -> dict:
    """Post-NMS detections per key through the real loop (detector.predict) down to ANALYSIS_CONF.

    Greedy class-aware NMS visits boxes by falling score, so a box under conf_thres never suppresses one
    above it: the boxes >= conf_thres are exactly those a run at conf_thres keeps (max_det is raised so the
    cut at 100 boxes cannot differ either). evaluate_quality splits them at conf_thres."""
    from executor.engine.loop import Unreadable, batches

    detector = detector.with_postprocess(ANALYSIS_CONF, detector.iou_thres, 1000)
    found = {}
    for batch in batches(keys, detector.letterbox, settings.batch_size_per_gpu, settings.num_workers_per_gpu):
        if not isinstance(batch, Unreadable):
            found.update(zip(batch.keys, detector.predict(batch)))
    return found


def evaluate_quality(dataset, low_detections, scores_by_name: dict, conf_thres: float, max_det: int,
                     class_names=()) -> dict:
    """Per-image errors from the detections at conf_thres, then Q1-Q3 per ranking and for the baselines.

    The errors rows other than the mined one (the prior) are read off the same detection pass with
    mining/errors.py's own features and models: the prior per cost, and the error model cross-fitted on this
    set (quality.error_rankings), plain and per cost; the calibration of the prior and the cross-fitted model
    goes beside them."""
    import numpy as np

    from benchmarks import gt, quality
    from mining.base import Detections
    from mining.entropy import box_entropy, image_entropy
    from mining.errors import ErrorModel, fit_error_model, labelled_example

    keys = dataset.paths

    def above(det):
        keep = np.where(det.conf > conf_thres)[0][:max_det]
        return Detections(det.xyxy[keep], det.conf[keep], det.cls[keep], det.probs[keep])

    detections = {k: above(low_detections[k]) for k in keys}
    counts = [quality.count_errors(detections[k].xyxy, detections[k].conf, detections[k].cls, truth,
                                   dataset.classes) for k, truth in zip(keys, dataset.images)]
    errors = np.array([c.errors for c in counts])
    objects = np.array([t.objects for t in dataset.images])
    # the errors scorer: one labelled example per image (its kept boxes matched as `counts` were), its
    # (height, width) from the file's header
    examples = [labelled_example(low_detections[k], gt.image_size(k), truth, conf_thres, max_det, dataset.classes)
                for k, truth in zip(keys, dataset.images)]
    if [int(np.nansum(e.false_positive)) + e.misses for e in examples] != errors.tolist():
        log.warning("%s: the error model's labels do not count the errors the rows count", dataset.name)
    read = quality.error_rankings(
        examples, [os.path.basename(k) for k in keys], ErrorModel(conf_thres, max_det, ANALYSIS_CONF),
        lambda chosen: fit_error_model(chosen, class_names, conf_thres, max_det, ANALYSIS_CONF, dataset.name),
        [c.fp for c in counts], [c.fn for c in counts])
    mined = {ROW_OF.get(name, name): np.asarray(scores, float) for name, scores in scores_by_name.items()}
    if "errors (prior)" in mined:  # the shipped run and the pass read the same boxes the same way
        read["calibration"]["prior"]["mined_max_abs_diff"] = float(
            np.max(np.abs(mined["errors (prior)"] - read["scores"]["errors (prior)"]), initial=0.0))
    rows = {"random": quality.random_baseline(keys, errors, objects),
            "detections": quality.metrics(np.array([len(detections[k]) for k in keys], float), errors, objects)}
    for name, scores in {**read["scores"], **mined}.items():
        rows[name] = quality.metrics(scores, errors, objects)
    # not shipped, for reading the table: other image scores over the same boxes, and the oracle ceiling
    def expected_errors(det):
        """E[FP] + E[FN] of the thresholded detector if its scores were calibrated: a kept box is wrong
        with probability 1 - conf, a candidate under conf_thres is a missed object with probability conf."""
        kept = det.conf > conf_thres
        return float((1 - det.conf[kept]).sum() + det.conf[~kept].sum())

    variants = {
        "entropy_mean": [image_entropy(detections[k].probs, "mean") for k in keys],
        "entropy_max": [image_entropy(detections[k].probs, "max") for k in keys],
        # as `entropy_aggregation: topk_mean` ships: over every candidate down to entropy_conf_thres (0.01)
        f"entropy_topk_mean (k={ENTROPY_TOPK}, candidates >= {ANALYSIS_CONF})": [
            image_entropy(low_detections[k].probs, "topk_mean", ENTROPY_TOPK) for k in keys],
        "least_confidence_mean": [float(np.mean(1 - detections[k].conf)) if len(detections[k]) else 0.0
                                  for k in keys],
        f"expected_errors (candidates >= {ANALYSIS_CONF})": [expected_errors(low_detections[k]) for k in keys],
        "oracle_errors": errors.astype(float),
    }
    extra = {name: quality.metrics(np.asarray(s, float), errors, objects) for name, s in variants.items()}
    totals = {"images": len(keys), "objects": int(objects.sum()), "tp": sum(c.tp for c in counts),
              "fp": sum(c.fp for c in counts), "fn": sum(c.fn for c in counts),
              "ignored": sum(c.ignored for c in counts), "errors": int(errors.sum()),
              "images_without_objects": int((objects == 0).sum()),
              "images_without_detections": int(sum(len(detections[k]) == 0 for k in keys))}
    per_image = {"key": [os.path.basename(k) for k in keys], "errors": errors.tolist(), "objects": objects.tolist(),
                 "fp": [c.fp for c in counts], "fn": [c.fn for c in counts],
                 "detections": [len(detections[k]) for k in keys],
                 "box_conf": [[round(float(c), 5) for c in low_detections[k].conf] for k in keys],
                 "box_entropy": [[round(float(h), 5) for h in box_entropy(low_detections[k].probs)] for k in keys],
                 **{name: [float(s) for s in scores] for name, scores in scores_by_name.items()},
                 **{name: scores.tolist() for name, scores in read["scores"].items() if name not in mined},
                 "errors_fold": read["folds"].tolist()}
    return {"totals": totals, "rows": rows, "variants": extra, "calibration": read["calibration"],
            "per_image": per_image}


def mined_quality(dataset, detector, settings, config) -> dict:
    """Quality of a set the speed runs did not mine: each algorithm mines it (timed, as reported), then Q1-Q3."""
    from benchmarks import speed

    found = detect_pass(dataset.paths, detector, settings)
    scores, timings = {}, {}
    for algo in ALGORITHMS:
        run = speed.mine_timed(dataset.paths, detector, config(algo))
        scores[algo] = run.pop("scores")
        timings[algo] = run
    return {**evaluate_quality(dataset, found, scores, settings.conf_thres, settings.max_det, detector.names),
            "speed": timings}


def main(argv=None) -> int:
    from benchmarks import log_to_stderr

    args = parse_args(argv)
    prepare_process_env()
    log_to_stderr()

    import numpy as np
    import torch

    from benchmarks import gt, report, speed
    from executor.engine.device import batch_size
    from executor.pipeline.passes import Models
    from executor.pipeline.plan import weights_for
    from executor.protocol.settings import build_settings

    if args.render:
        with open(args.json, encoding="utf-8") as handle:
            results = json.load(handle)
        results["summary"] = report.summarise(results)
        write_markdown(args, results)
        return 0
    deadline = time.time() + 60 * args.wait_quiet
    while load() > QUIET_LOAD and time.time() < deadline:
        log.info("load average %.2f > %.1f: waiting for a quieter host", load(), QUIET_LOAD)
        time.sleep(30)
    if load() > QUIET_LOAD:
        log.warning("load average %.2f > %.1f: other jobs share the cores; speed ratios will be noisy",
                    load(), QUIET_LOAD)
    started = time.time()
    gpu_id = "0" if args.device == "cuda" else ""

    def config(algorithm: str, **extra) -> dict:
        return speed.mining_config(args.weights, algorithm, gpu_id, **{**TIMED_CONFIG.get(algorithm, {}), **extra})

    base = build_settings("mining", config("entropy"))
    detector = Models().detector(base, weights_for(base, ""))
    base = base.replace(batch_size_per_gpu=batch_size(base.batch_size_per_gpu, detector.device.type == "cuda"))
    results = {"command": ("python -m benchmarks " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))).strip(),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine_info(detector.device), "load_before": load(), "settings": {
                   "img_size": detector.img_size, "conf_thres": base.conf_thres, "iou_thres": base.iou_thres,
                   "batch_size_per_gpu": base.batch_size_per_gpu, "num_workers_per_gpu": base.num_workers_per_gpu,
                   "weights": os.path.relpath(args.weights, REPO)}, "quick": args.quick}

    coco = gt.load_coco(args.coco, detector.names, args.images)
    pool = coco.paths * args.pool_repeat
    batch = base.batch_size_per_gpu  # what executor.engine.loop batches any pool with
    log.info("speed pool: %d images (%d distinct), batch %d", len(pool), len(coco.paths), batch)
    canvas_of = dict(zip(coco.paths, speed.decoded_canvases(coco.paths, detector)))
    speed.warm_up(detector, list(canvas_of.values()), batch)
    segments = split(pool, args.segments)
    sp = {"pool": len(pool), "distinct_images": len(coco.paths), "batch": batch, "segments": len(segments),
          "runs": {}}
    ultra = None
    if "p3" not in args.skip:
        ultra = speed.UltralyticsPredict(args.weights, coco.paths[0], detector.img_size, batch,
                                         "cpu" if args.device == "cpu" else 0)
        folders = [speed.link_pool(seg, tmp_dir(f"p3-{i}")) for i, seg in enumerate(segments)]
    for algo in ALGORITHMS:  # warm-up, untimed: first calls of every code path (allocations, oneDNN kernels)
        speed.mine_timed(coco.paths[:2 * batch], detector, config(algo))
    speed.warm_up(detector, list(canvas_of.values()), batch)
    p0_all = []
    scores = {}
    for rep in range(args.reps):
        for algo in ALGORITHMS:
            parts = {"p0": [], algo: []}
            if algo == "entropy" and ultra:
                parts["ultralytics"] = []
            algo_scores = []
            for i, seg in enumerate(segments):
                steps = {
                    "p0": lambda: speed.forward_throughput(detector, [canvas_of[k] for k in seg], batch, len(seg)),
                    algo: lambda: speed.mine_timed(seg, detector, config(algo)),
                    "ultralytics": lambda: ultra.run(folders[i], len(seg)),
                }
                names = list(parts)
                names = names[i % len(names):] + names[:i % len(names)]  # rotate who goes first
                for name in names:
                    parts[name].append(steps[name]())
                algo_scores += parts[algo][-1].pop("scores")
            scores.setdefault(algo, algo_scores[:len(coco.paths)])
            p0_all += parts["p0"]
            p0_rate = pooled_rate(parts["p0"])
            for name in parts:
                if name == "p0":
                    continue
                run = {"images": sum(r["images"] for r in parts[name]),
                       "seconds": sum(r["seconds"] for r in parts[name])}
                run["images_per_s"] = run["images"] / run["seconds"]
                run["p0_paired"] = p0_rate
                run["segment_ratios"] = [r["images_per_s"] / p["images_per_s"] for r, p in zip(parts[name], parts["p0"])]
                run["ratio_pooled"] = run["images_per_s"] / p0_rate
                # headline: the median over segments, robust to a load burst that hits one side of one pair
                run["ratio_to_p0"] = float(np.median(run["segment_ratios"]))
                if "breakdown" in parts[name][0]:
                    run["breakdown"] = {k: sum(r["breakdown"][k] for r in parts[name]) for k in parts[name][0]["breakdown"]}
                    run["progress_updates"] = sum(r["progress_updates"] for r in parts[name])
                if name == "ultralytics":
                    run["torch_threads"] = parts[name][0]["torch_threads"]
                    run["threads_ultralytics_left"] = parts[name][0]["threads_ultralytics_left"]
                sp["runs"].setdefault(name, []).append(run)
                log.info("%-11s %7.2f img/s, P0 paired %7.2f, ratio %.3f (segments %s)", name, run["images_per_s"],
                         p0_rate, run["ratio_to_p0"], " ".join(f"{x:.2f}" for x in run["segment_ratios"]))
            if "ultralytics" in parts:
                ent, u = sp["runs"]["entropy"][-1], sp["runs"]["ultralytics"][-1]
                u["segment_entropy_ratios"] = [e["images_per_s"] / x["images_per_s"]
                                               for e, x in zip(parts["entropy"], parts["ultralytics"])]
                u["entropy_ratio_pooled"] = ent["images_per_s"] / u["images_per_s"]
                u["entropy_ratio"] = float(np.median(u["segment_entropy_ratios"]))
                u["entropy_ratio_p0_normalised"] = ent["ratio_to_p0"] / u["ratio_to_p0"]
    if args.profile:
        for algo in ALGORITHMS:
            path = os.path.join(os.path.dirname(args.json), f"profile-{algo}.txt")
            speed.profile_mining(coco.paths, detector, config(algo), path)
            log.info("profile of %s: %s", algo, path)
    if "p9" not in args.skip:  # P1 again as a slope: the per-run costs of small segments cancel
        # the small pool above what the report shows (top 24 + 12 samples: its thumbnails then cost the same in
        # both runs), the large one all of coco-val
        large = min(200, len(pool))
        small = min(40, large // 2)
        # aldd-no-report: without the report's boxes ALDD's maps come from the head's class branch alone
        variants = {"entropy": config("entropy"), "errors": config("errors", errors_prior=True), "aldd": config("aldd"),
                    "aldd-no-report": config("aldd", report=False)}
        sp["slope"] = {name: speed.marginal_ratio(pool, detector, conf, small, large, 1 if args.quick else 3, batch)
                       for name, conf in variants.items()}
        for algo, slope in sp["slope"].items():
            log.info("P9 %-7s slope %d→%d images: %.2f img/s, P0 paired %.2f, ratio %.3f", algo, small, large,
                     slope["images_per_s"], slope["p0_paired"], slope["ratio"])
    if "p0best" not in args.skip:  # issue 28's yardstick, and P1 as a user sees it: one run over the whole pool
        from benchmarks import yardstick

        sp["p0_best"] = yardstick.measure(args.weights, coco.paths, detector.img_size, reps=1 if args.quick else 2,
                                          gpu_id=gpu_id)
        sp["run"] = {algo: speed.mine_timed(pool, detector, config(algo, **TIMED_CONFIG.get(algo, {})))
                     for algo in RUN_ALGORITHMS}
        if args.device == "cpu":  # the same run on ONNX Runtime, against the same (torch) yardstick
            onnx = speed.export_onnx(args.weights, tmp_dir("p1-onnx"), detector.img_size)
            onnx_config = config("entropy", model_params_path=[onnx], backend="onnx")
            onnx_settings = build_settings("mining", onnx_config)
            onnx_detector = Models().detector(onnx_settings, weights_for(onnx_settings, ""))
            speed.mine_timed(pool[:32], onnx_detector, onnx_config)  # warm-up
            sp["run"][ONNX_RUN] = speed.mine_timed(pool, onnx_detector, onnx_config)
        for algo, run in sp["run"].items():
            run.pop("scores", None)
            log.info("P1 run %-7s %d images at %.2f img/s = %.3f of the best forward (%.2f img/s, batch %d)%s",
                     algo, run["images"], run["images_per_s"], run["images_per_s"] / sp["p0_best"]["images_per_s"],
                     sp["p0_best"]["images_per_s"], sp["p0_best"]["batch"], " (x5 views)" if algo == "cald" else "")
    rates = [r["images_per_s"] for r in p0_all]
    sp["p0"] = {"images_per_s": pooled_rate(p0_all), "batch": batch, "measurements": len(p0_all),
                "images_each": len(segments[0]), "min": min(rates), "max": max(rates)}
    results["speed"] = sp

    # ---- quality on COCO (scores from the timed runs above), VOC and highway (mined here)
    if "quality" not in args.skip:
        post = (base.conf_thres, base.max_det)
        results["quality"] = {"coco-val": evaluate_quality(coco, detect_pass(coco.paths, detector, base),
                                                           scores, *post, detector.names)}
        small = args.images and max(8, args.images * 2 // 3)
        loaders = {"voc": lambda: gt.load_voc(args.voc, detector.names, small),
                   "highway": lambda: gt.load_yolo(args.highway, detector.names, small)}
        for part, load_set in loaders.items():
            if part not in args.skip:
                dataset = load_set()
                results["quality"][dataset.name] = mined_quality(dataset, detector, base, config)
        for name, q in results["quality"].items():
            log.info("%s quality: %s", name, json.dumps(q["rows"], default=float)[:300])

    # ---- P6, P4, P5
    if "p6" not in args.skip and args.device == "cpu":
        results["p6"] = speed.onnx_vs_torch(args.weights, split(coco.paths, args.segments), detector, tmp_dir("p6"))
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        log.info("P6 onnx/torch %.3f", results["p6"]["ratio"])
    if "p7" not in args.skip:
        results["p7"] = speed.decode_throughput(coco.paths, detector.img_size, detector.rect_stride,
                                                detector.device, batch)
        log.info("P7 decode, torchvision CPU / OpenCV %.3f", results["p7"]["torchvision_cpu_ratio"])
    if "p8" not in args.skip and args.device == "cpu":
        keys = speed.repeated_pool(coco.paths, -(-96 // len(coco.paths)), tmp_dir("p8"))
        results["p8"] = speed.cpu_workers_ratio(args.weights, keys)
        log.info("P8 2 CPU workers / 1: %.3f", results["p8"]["ratio"])
    if "p4" not in args.skip:
        images = coco.paths[:args.rss_pool]
        results["p4"] = speed.peak_rss_ratio(args.weights, images, args.rss_times, args.rss_algorithm,
                                             args.rss_batch, gpu_id, tmp_dir("p4"))
        log.info("P4 peak RSS ratio %.3f", results["p4"]["ratio"])
    if "p5" not in args.skip:
        results["p5"] = speed.first_progress(args.weights, coco.paths, "entropy", gpu_id, tmp_dir("p5"), args.p5_reps)
        results["p5"]["import_torch_ultralytics_s"] = speed.python_import_seconds()
        log.info("P5 first progress after %.2f s", results["p5"]["seconds"])

    results["load_after"] = load()
    results["wall_seconds"] = time.time() - started
    results["summary"] = report.summarise(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1, default=float)
    print(report.table(results))
    write_markdown(args, results)
    return 0


def write_markdown(args, results) -> None:
    from benchmarks import report

    if args.markdown:
        others = []  # the latest run on the other device, if there is one, gets its own section
        for name in ("latest.json", "latest-cuda.json"):
            path = os.path.join(os.path.dirname(os.path.abspath(args.json)), name)
            if os.path.abspath(path) != os.path.abspath(args.json) and os.path.isfile(path):
                with open(path, encoding="utf-8") as handle:
                    other = json.load(handle)
                other["summary"] = report.summarise(other)
                others.append(other)
        findings_path = os.path.join(REPO, "benchmarks", "FINDINGS.md")
        findings = open(findings_path, encoding="utf-8").read() if os.path.isfile(findings_path) else ""
        text = report.markdown(results, os.path.relpath(args.json, REPO), others, findings)
        if not others and os.path.isfile(args.markdown):  # results/ is not tracked: keep the other device's run
            with open(args.markdown, encoding="utf-8") as handle:
                text = keep_other_runs(handle.read(), text)
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(text)
        log.info("wrote %s", args.markdown)


def run_sections(text: str) -> dict[str, str]:
    """The '## Run of <date> on <device>' sections of a benchmarks markdown, by device kind (cpu, cuda)."""
    import re

    found = {}
    for match in re.finditer(r"^## Run of [^\n]* on ([a-z]+)[^\n]*\n.*?(?=^## |\Z)", text, flags=re.M | re.S):
        found.setdefault(match.group(1), match.group(0))
    return found


def keep_other_runs(old: str, new: str) -> str:
    """`new` with the run sections of `old` for devices `new` has no run of, before its findings (a run on the
    lent GPU survives the next CPU run, whose JSON of the GPU run is not on this machine)."""
    kept = [section for device, section in run_sections(old).items() if device not in run_sections(new)]
    if not kept:
        return new
    at = new.find("\n## Findings")
    at = len(new) if at < 0 else at + 1
    return new[:at] + "".join(kept) + new[at:]


_TMP = {}


def tmp_dir(name: str) -> str:
    import tempfile

    if "root" not in _TMP:
        _TMP["root"] = tempfile.mkdtemp(prefix="quarry-bench-")
    path = os.path.join(_TMP["root"], name)
    os.makedirs(path, exist_ok=True)
    return path


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        if "root" in _TMP:
            import shutil

            shutil.rmtree(_TMP["root"], ignore_errors=True)
