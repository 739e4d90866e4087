"""Turns a benchmark result (the JSON written by `python -m benchmarks`) into the summary, the console
table and docs/benchmarks.md. Pure functions of the result dict."""
import math

import numpy as np

P1_ALGORITHMS = ("entropy", "errors", "aldd")  # mining ÷ P0 (cald's is P2, its five forwards counted)
P1_JUDGED = ("entropy", "errors", "aldd")        # P1 >= 0.90, judged on P9 (the slope) where it was run
# issue 28: one run over the pool ÷ the best forward (CALD's times its 5 forwards an image), by algorithm
P1_RUN_TARGETS = {"entropy": ("", 0.90), "aldd": ("", 0.90), "cald": ("x5 ", 0.85)}
CALD_VIEWS = 4
TARGETS = {"P1": 0.90, "P2": 0.85, "P3": 1.2, "P4": 1.10, "P5": 5.0}
# Q2 (errors captured at an object budget) leads: labelling cost is mostly boxes, and at an image budget
# crowded images look better than they are (METHOD below says more)
QUALITY_KEYS = ("q2", "q1", "q3")


def _median(runs, key):
    return float(np.median([r[key] for r in runs])) if runs else float("nan")


def summarise(r: dict) -> dict:
    """The headline figures and, for each target, whether it is met."""
    s: dict = {"targets": {}}
    sp = r.get("speed", {})
    runs = sp.get("runs", {})
    s["P0"] = sp.get("p0", {}).get("images_per_s", float("nan"))
    slopes = sp.get("slope", {})
    for algo in P1_ALGORITHMS:
        if algo in runs:
            s[f"P1_{algo}"] = _median(runs[algo], "ratio_to_p0")
        if algo not in P1_JUDGED:
            continue
        # the target is judged on the yardstick, P9 (the slope: per-run costs cancel), where it was run
        if algo in slopes or algo in runs:
            s["targets"][p1_target(algo, slopes)] = (slopes[algo]["ratio"] if algo in slopes
                                                     else s[f"P1_{algo}"]) >= TARGETS["P1"]
    if sp.get("p0_best"):
        for algo, run in sp.get("run", {}).items():
            s[f"P1_run_{algo}"] = run["images_per_s"] / sp["p0_best"]["images_per_s"] * run_views(algo)
            if run_target(algo):
                s["targets"][run_target(algo)] = s[f"P1_run_{algo}"] >= P1_RUN_TARGETS[algo][1]
    if "cald" in runs:
        s["P2_cald"] = _median(runs["cald"], "ratio_to_p0") * (1 + CALD_VIEWS)
        s["targets"]["P2 cald x5 >= 0.85"] = s["P2_cald"] >= TARGETS["P2"]
    if "ultralytics" in runs:
        s["P3"] = _median(runs["ultralytics"], "entropy_ratio")
        s["P3_p0_normalised"] = _median(runs["ultralytics"], "entropy_ratio_p0_normalised")
        s["targets"]["P3 >= 1.2"] = s["P3"] >= TARGETS["P3"]
    if "p4" in r:
        s["P4"] = r["p4"]["ratio"]
        s["targets"]["P4 <= 1.10"] = s["P4"] <= TARGETS["P4"]
    if "p5" in r:
        s["P5"] = r["p5"]["seconds"]
        if "cuda" not in r.get("machine", {}).get("device", ""):
            s["targets"]["P5 <= 5 s (CPU)"] = s["P5"] <= TARGETS["P5"]
    if "p6" in r:
        s["P6"] = r["p6"]["ratio"]
    if "p7" in r:
        s["P7"] = r["p7"]["torchvision_cpu_ratio"]
        if "nvjpeg_cores" in r["p7"]:
            s["P7_nvjpeg_cores"] = r["p7"]["nvjpeg_cores"]
    if "p8" in r:
        s["P8"] = r["p8"]["ratio"]
    for algo, slope in r.get("speed", {}).get("slope", {}).items():
        s[f"P9_{algo}"] = slope["ratio"]
    for name, q in r.get("quality", {}).items():
        rows = q["rows"]
        rnd, det = rows["random"], rows["detections"]
        for algo in QUALITY_JUDGED:
            if algo in rows:
                beats = all(rows[algo][k] > rnd[k] for k in QUALITY_KEYS)
                s["targets"][f"{name}: {algo} beats random on Q2, Q1, Q3"] = beats
        good = [a for a in QUALITY_JUDGED if a in rows and rows[a]["q2"] > det["q2"] and rows[a]["q1"] > det["q1"]
                and rows[a]["q3"] >= 0.3]
        s[f"{name}_best_meeting_targets"] = good
        s["targets"][f"{name}: an algorithm beats detections on Q2, Q1 with Q3 >= 0.3"] = bool(good)
    return s


def p1_target(algo: str, slopes: dict) -> str:
    return f"P1 {algo} >= 0.90" + (" (P9 slope)" if algo in slopes else "")


def fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def ratio_cell(ratio, detail: str, segment_ratios, pooled) -> str:
    """A paired figure: the headline ratio (median over segments), then its detail, range and pooled ratio."""
    spread = f"segments {fmt(min(segment_ratios), 2)}-{fmt(max(segment_ratios), 2)}" if segment_ratios else ""
    return f"**{fmt(ratio)}** ({detail}; {spread}; pooled {fmt(pooled)})"


def run_views(algo: str) -> int:
    """Forwards per image of a P1 run: CALD forwards each image and its views."""
    return 1 + CALD_VIEWS if algo == "cald" else 1


def run_bound(algo: str) -> str | None:
    """What a P1 run must reach ("x5 >= 0.85"), None for one that is only reported."""
    if algo not in P1_RUN_TARGETS:
        return None
    times, bound = P1_RUN_TARGETS[algo]
    return f"{times}>= {bound:.2f}"


def run_target(algo: str) -> str | None:
    """The key of summary["targets"] that judges a P1 run."""
    return f"P1 run {algo} {run_bound(algo)} (P0 best)" if run_bound(algo) else None


def speed_rows(r: dict) -> list[list[str]]:
    s = r["summary"]
    sp = r.get("speed", {})
    runs = sp.get("runs", {})
    p0 = sp.get("p0", {})
    rows = [("P0", "raw batched forward (model only)", f"{fmt(s['P0'], 2)} img/s (batch {p0.get('batch')}, "
             f"{p0.get('measurements')} paired runs of ~{p0.get('images_each')} images, range {fmt(p0.get('min'), 2)}-"
             f"{fmt(p0.get('max'), 2)})", "limit", None)]  # (label, what, measured, target, key of s["targets"])
    best = sp.get("p0_best")
    if best:
        by_batch = ", ".join(f"{b}: {fmt(v, 2)}" for b, v in best["by_batch"].items())
        rows.append(("P0 best", "the model's best forward: a fresh process, canvases decoded first, fused, "
                     "channels_last, the best batch size (issue 28's yardstick)",
                     f"{fmt(best['images_per_s'], 2)} img/s (batch {best['batch']}; img/s by batch {by_batch}; "
                     f"{best['images']} images in {best['shapes']} shapes, {best['threads']} threads)", "limit", None))
        for algo, run in sp.get("run", {}).items():
            views = " x 5 (its forwards: the image and 4 views)" if algo == "cald" else ""
            rows.append((f"P1 run {algo}", f"one mining run of {algo} over the {run['images']}-image pool (per-run "
                         f"costs included, what a user sees) ÷ P0 best{views}",
                         f"**{fmt(s[f'P1_run_{algo}'])}** ({fmt(run['images_per_s'], 2)} img/s)",
                         run_bound(algo) or "(report)",
                         run_target(algo)))
    slopes = sp.get("slope", {})
    for algo in P1_ALGORITHMS:
        if algo in runs:
            run = runs[algo][0]
            judged = algo in P1_JUDGED and algo not in slopes  # else P9 carries the target, or there is none
            what = f"mining {algo}" + (" (the prior)" if algo == "errors" else "") + " ÷ P0"
            rows.append((f"P1 {algo}", what + ("" if judged else ", per-run costs included"),
                         ratio_cell(s[f"P1_{algo}"], f"{fmt(run['images_per_s'], 2)} img/s",
                                    run.get("segment_ratios"), run.get("ratio_pooled")),
                         ">= 0.90" if judged else "(report; see P9)" if algo in slopes else "(report)",
                         p1_target(algo, slopes) if judged else None))
    if "cald" in runs:
        run, passes = runs["cald"][0], 1 + CALD_VIEWS
        rows.append(("P2 cald", "mining cald × 5 ÷ P0", ratio_cell(
            s["P2_cald"], f"{fmt(run['images_per_s'], 2)} img/s", [passes * v for v in run.get("segment_ratios", [])],
            passes * run.get("ratio_pooled", float("nan"))), ">= 0.85", "P2 cald x5 >= 0.85"))
    if "P3" in s:
        u = runs["ultralytics"][0]
        rows.append(("P3", "mining entropy ÷ Ultralytics predict(stream=True)", ratio_cell(
            s["P3"], f"Ultralytics {fmt(u['images_per_s'], 2)} img/s = {fmt(u['ratio_to_p0'])} × P0, "
            f"{u['torch_threads']} torch threads", u.get("segment_entropy_ratios"), u.get("entropy_ratio_pooled")),
            ">= 1.2", "P3 >= 1.2"))
    if "P4" in s:
        p4 = r["p4"]
        big = p4[f"x{p4['times']}"]
        rows.append(("P4", f"peak RSS, {p4['times']}× pool ÷ 1× ({p4['algorithm']})",
                     f"{fmt(s['P4'])} ({fmt(big['peak_rss_mb'], 0)} MB for {big['images']} images vs "
                     f"{fmt(p4['x1']['peak_rss_mb'], 0)} MB for {p4['x1']['images']}, batch {p4['batch']}; "
                     f"peak while mining, sampled after the first progress: "
                     f"{fmt(big.get('mining_peak_rss_mb'), 0)} vs {fmt(p4['x1'].get('mining_peak_rss_mb'), 0)} MB, "
                     f"ratio {fmt(p4.get('mining_ratio'))})", "<= 1.10", "P4 <= 1.10"))
    if "P5" in s:
        p5 = r["p5"]
        rows.append(("P5", "process start → first progress > 0 (platform mode)",
                     f"{fmt(s['P5'], 2)} s (median of {p5['reps']}; first monitor write "
                     f"{fmt(p5['first_monitor_write_s'], 2)} s; import torch+ultralytics alone "
                     f"{fmt(p5.get('import_torch_ultralytics_s'), 2)} s)", "<= 5 s (CPU)", "P5 <= 5 s (CPU)"))
    if "P6" in s:
        p6 = r["p6"]
        rows.append(("P6", "ONNX Runtime ÷ PyTorch inference (executor.pipeline.tasks.infer, CPU)", ratio_cell(
            s["P6"], f"{fmt(p6['onnx']['images_per_s'], 2)} vs {fmt(p6['torch']['images_per_s'], 2)} img/s",
            p6.get("segment_ratios", [s["P6"]]), p6.get("ratio_pooled")), "(report)", None))
    if "P7" in s:
        p7 = r["p7"]
        detail = (f"OpenCV {fmt(p7['opencv']['images_per_s'], 0)} vs torchvision "
                  f"{fmt(p7['torchvision_cpu']['images_per_s'], 0)} img/s on one core")
        if "nvjpeg" in p7:
            detail += (f"; nvJPEG, {p7['chunk']} images a call: {fmt(p7['nvjpeg']['images_per_s'], 0)} img/s = "
                       f"{fmt(p7['nvjpeg_cores'], 1)} CPU cores of OpenCV, copying the originals back "
                       f"{fmt(100 * p7['originals_copy_share'], 0)}% of it")
        rows.append(("P7", "decode + letterbox: torchvision decode_jpeg + letterbox_tensor ÷ OpenCV, one thread",
                     f"**{fmt(s['P7'])}** ({detail})", "(report)", None))
    if "P8" in s:
        p8 = r["p8"]
        one, two = p8["workers"]["1"], p8["workers"]["2"]
        rows.append(("P8", "mining, 2 CPU workers ÷ 1 worker (1 thread each, result.tsv identical)",
                     f"**{fmt(s['P8'])}** end to end ({fmt(two['images_per_s'], 2)} vs {fmt(one['images_per_s'], 2)} "
                     f"img/s on {one['images']} images, model loads and worker starts included); from the first "
                     f"image scored: {fmt(p8.get('steady_ratio'))}", "(report)", None))
    for algo, slope in r.get("speed", {}).get("slope", {}).items():
        rows.append((f"P9 {algo}", f"P1 as a slope: mining {algo} between {slope['small']} and {slope['large']} images "
                     "÷ P0 on the extra images",
                     f"**{fmt(slope['ratio'])}** ({fmt(slope['images_per_s'], 2)} vs {fmt(slope['p0_paired'], 2)} "
                     f"img/s; pairs {', '.join(fmt(x, 2) for x in slope['pair_ratios'])}"
                     + (f"; ÷ its own network, the class branch alone at {fmt(slope['p0_classes'], 2)} img/s: "
                        f"{fmt(slope['own_network_ratio'])}" if "own_network_ratio" in slope else "") + ")",
                     ">= 0.90" if algo in ("entropy", "aldd") else "(report)",
                     p1_target(algo, slopes) if algo in P1_JUDGED else None))
    return [[label, what, measured, target, _met(s["targets"], key)] for label, what, measured, target, key in rows]


def _met(targets, key) -> str:
    if key not in targets:
        return ""
    return "met" if targets[key] else "**missed**"


ERRORS_ROWS = ("errors (prior)", "errors (prior, per cost)", "errors (cross-fitted)",
               "errors (cross-fitted, per cost)")
QUALITY_ORDER = ("random", "detections", "entropy", *ERRORS_ROWS, "aldd", "cald")
QUALITY_JUDGED = QUALITY_ORDER[2:]  # the rankings a mining run can ship (the baselines are not judged)


def quality_rows(q: dict) -> list[list[str]]:
    rows = []
    for name in QUALITY_ORDER:
        if name in q["rows"]:
            m = q["rows"][name]
            label = f"{name} (mean of 10 seeds)" if name == "random" else name
            if name == "random":
                cells = [f"{fmt(m[k])} ± {fmt(m[k + '_std'])}" for k in QUALITY_KEYS]
            else:
                cells = [fmt(m[k]) for k in QUALITY_KEYS]
            rows.append([label, *cells])
    return rows


def variant_rows(q: dict) -> list[list[str]]:
    return [[name, *(fmt(m[k]) for k in QUALITY_KEYS)] for name, m in q.get("variants", {}).items()]


def calibration_rows(q: dict) -> list[list[str]]:
    """Predicted ÷ observed errors of each reading of the error model (benchmarks/quality.py calibration)."""
    rows = []
    for name, c in q.get("calibration", {}).items():
        rows.append([name, f"{fmt(c['predicted'], 1)} / {fmt(c['observed'], 0)}", f"**{fmt(c['ratio'], 2)}**",
                     fmt(c["fp"]["ratio"], 2), fmt(c["fn"]["ratio"], 2), fmt(c["spearman"]),
                     " ".join(fmt(b["ratio"], 2) for b in c["bins"])])
    return rows


CALIBRATION_HEADER = ["error model", "predicted / observed errors", "ratio", "FP ratio", "FN ratio",
                      "Spearman ρ per image", "ratio by decile of the prediction (lowest first)"]


def breakdown_rows(r: dict) -> list[list[str]]:
    rows = []
    for label, runs in r.get("speed", {}).get("runs", {}).items():
        run = runs[0]
        b = run.get("breakdown")
        if not b:
            continue
        total = run["seconds"]
        cells = [f"{fmt(100 * b[k] / total, 0)}%" for k in
                 ("network", "input_and_postprocess", "cald_views", "score_math", "scorer_other",
                  "loop_and_decode_wait")]
        rows.append([label, fmt(total, 1), str(b["forward_passes"]), *cells])
    return rows


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def table(r: dict) -> str:
    """Plain-text summary for the console."""
    out = ["", f"== speed ({r['machine'].get('device')}, pool {r['speed']['pool']} images, "
               f"batch {r['speed']['batch']}) =="]
    for row in speed_rows(r):
        out.append(f"{row[0]:<10} {row[2]:<90} target {row[3]:<12} {row[4]}")
    for name, q in r.get("quality", {}).items():
        t = q["totals"]
        out.append(f"== quality {name}: {t['images']} images, {t['objects']} objects, {t['errors']} errors "
                   f"(FP {t['fp']}, FN {t['fn']}) ==")
        out.append(f"{'ranking':<46} {'Q2 (headline)':>16} {'Q1':>16} {'Q3':>16}")
        for row in quality_rows(q) + [["~ " + v[0], *v[1:]] for v in variant_rows(q)]:
            out.append(f"{row[0]:<46} {row[1]:>16} {row[2]:>16} {row[3]:>16}")
        for row in calibration_rows(q):
            out.append(f"calibration {row[0]:<12} pred/obs {row[1]} = {row[2].strip('*')} (FP {row[3]}, FN "
                       f"{row[4]}), rho {row[5]}, by decile {row[6]}")
    out.append("== targets ==")
    for key, ok in r["summary"]["targets"].items():
        out.append(f"{'met   ' if ok else 'MISSED'} {key}")
    return "\n".join(out)


def machine_lines(r: dict) -> list[str]:
    m = r["machine"]
    return [
        f"- {m.get('cpu')} ({m.get('cpu_count')} logical CPUs), device `{m.get('device')}`"
        + (f" ({m['gpu']})" if m.get("gpu") else "") + f"; {m.get('platform')}",
        f"- Python {m.get('python')}, torch {m.get('torch')} ({m.get('torch_threads')} threads), "
        f"ultralytics {m.get('ultralytics')}, onnxruntime {m.get('onnxruntime')}",
        f"- Load average (1 min) before / after: {fmt(r.get('load_before'), 2)} / {fmt(r.get('load_after'), 2)}.",
        f"- Model `{r['settings']['weights']}`, img_size {r['settings']['img_size']}, conf_thres "
        f"{r['settings']['conf_thres']}, iou_thres {r['settings']['iou_thres']}, template batch_size_per_gpu "
        f"{r['settings']['batch_size_per_gpu']} and num_workers_per_gpu {r['settings']['num_workers_per_gpu']}.",
    ]


def run_block(r: dict, level: str = "##", with_quality: bool = True) -> list[str]:
    s = r["summary"]
    met = sum(s["targets"].values())
    parts = [
        f"{level} Run of {r['date']} on {r['machine'].get('device')}"
        + (" (**quick smoke run**)" if r.get("quick") else ""),
        "",
        f"`{r['command']}`: {fmt(r['wall_seconds'] / 60, 1)} min, {met} of {len(s['targets'])} targets met.",
        "",
        *machine_lines(r),
        *([f"- Note: {r['note']}"] if r.get("note") else []),
        "",
        f"{level}# Speed (COCO val pool of {r['speed']['pool']} images, batch {r['speed']['batch']})",
        "",
        md_table(["", "what", "measured", "target", ""], speed_rows(r)),
        "",
        "Where the wall time of each timed run went (the stages add up to 100%; 'network' is `detector.net` "
        "alone, 'input + NMS + maps' the rest of the detector's predictions, its `forward`, `detections` and "
        "`maps`):",
        "",
        md_table(["run", "seconds", "forward passes", "network", "input + NMS + maps", "CALD views",
                  "score math", "scorer glue", "loop / decode wait"], breakdown_rows(r)),
        "",
    ]
    for name, q in r.get("quality", {}).items() if with_quality else ():
        t = q["totals"]
        parts += [
            f"{level}# Quality: {name}",
            "",
            f"{t['images']} images, {t['objects']} ground-truth objects ({t['images_without_objects']} images "
            f"without any); model errors at conf_thres 0.25: {t['errors']} = {t['fp']} FP + {t['fn']} FN "
            f"(TP {t['tp']}; {t['ignored']} detections ignored: on crowd/difficult regions or of classes the "
            f"dataset does not label); {t['images_without_detections']} images without any detection.",
            "",
            md_table(["ranking", "**Q2 error capture, 20% of objects** (headline)", "Q1 error capture, 20% of images",
                      "Q3 Spearman ρ (score, error rate)"], quality_rows(q)),
            "",
            "Not shipped, for reading the table (other image scores over the same detections):",
            "",
            md_table(["ranking", "Q2", "Q1", "Q3"], variant_rows(q)),
            "",
        ]
        if q.get("calibration"):
            parts += [
                "Calibration of the errors scorer's E[FP] + E[misses] against the errors counted (sums over the "
                "images, then within tenths of the images sorted by the prediction; n/a: no error counted there):",
                "",
                md_table(CALIBRATION_HEADER, calibration_rows(q)),
                "",
            ]
    parts += [f"{level}# Targets", ""]
    parts += [f"- {'met' if ok else '**missed**'}: {key}" for key, ok in s["targets"].items()]
    return parts + [""]


def markdown(r: dict, json_path: str, others=(), findings: str = "") -> str:
    parts = [
        "# Benchmarks: mining speed and mining quality",
        "",
        "<!-- Generated by `python -m benchmarks` (benchmarks/report.py, benchmarks/FINDINGS.md). "
        "Edit those, not this file. -->",
        "",
        "## How to reproduce",
        "",
        "```bash",
        ".venv/bin/python -m benchmarks            # CPU, about 6 minutes on 2 quiet cores",
        ".venv/bin/python -m benchmarks --quick    # smoke run, a few minutes",
        ".venv/bin/python -m benchmarks --device cuda --pool-repeat 8   # GPU",
        "```",
        "",
        "Other options: `--reps N`, `--profile` (cProfile of each algorithm's mining run into "
        "benchmarks/results/), `--skip quality,voc,highway,p3,p4,p5,p6,p7,p8,p9`, `--images N`. A run writes `"
        + json_path + "` (every figure, per-image errors, scores and box confidences) and regenerates this "
        "file, with a section for the latest run on the other device if its JSON is there. The host is "
        "shared with other jobs: absolute images/s move with its load, which is why every speed figure is a "
        "ratio of measurements taken next to each other in the same process.",
        "",
    ]
    parts += run_block(r)
    for other in others:
        parts += run_block(other, with_quality=False)
        parts += ["(Quality on that device: " + "; ".join(
            f"{name} " + ", ".join(f"{a} " + "/".join(fmt(q["rows"][a][k]) for k in QUALITY_KEYS)
                                   for a in QUALITY_ORDER if a in q["rows"])
            for name, q in other.get("quality", {}).items()) + " as Q2/Q1/Q3.)", ""]
    if findings:
        parts += [findings.strip(), ""]
    parts += [METHOD]
    return "\n".join(parts) + "\n"


METHOD = """## What is measured

**Speed.** All figures come from one process (P4 and P5 from child processes it starts) with the same
model, images, `img_size` and batch size: the template's `batch_size_per_gpu` (0, auto: 4 on CPU, 16 on a GPU;
16 before issue 28), which `executor/engine/loop.py` uses for a pool of any size; P0, P1, P2, P3, P5 and P6 all
use it.

- **Pairing.** The pool is cut into 8 contiguous segments. For each algorithm, segment after segment,
  the timed run and a P0 run on the *same* segment images go back to back (which goes first rotates), so
  both sides of every ratio see the same host load. A figure is the median over the segments of
  (run images/s ÷ paired P0 images/s), which a load burst on one side of one pair cannot move much; the
  table also gives the range over segments and the pooled ratio (all images ÷ all seconds). A segment is
  mined with the batch the whole pool would get (the loop's batch does not depend on the pool size).
- **P0 best**, issue 28's yardstick (benchmarks/yardstick.py): a child process where nothing else runs
  decodes and letterboxes the pool first, loads the model as mining does (fused, channels_last) and forwards
  every canvas at batch 1, 2, 4, 8 and 16 (batched by shape); the best batch size is the yardstick. **P1 run**:
  one mining run over the whole pool, per-run costs included (what a user sees), ÷ P0 best (CALD's times 5,
  its forwards per image; `entropy (onnx)`: the model's ONNX export on ONNX Runtime, against the same torch
  yardstick); not paired, so read it on a quiet host.
- **P0**, the limit: `detector.net` alone on images decoded, letterboxed, converted to float and put in
  the model's memory layout beforehand; only the forward is timed. The P0 in the table is pooled over all
  paired P0 runs (its range is over segments).
- **P1**: `executor.pipeline.tasks.mine` (decode and letterbox in worker threads, batching, the scorer, progress,
  writing result.tsv and the report) with the model already loaded, wall time ÷ images. Each segment is a
  whole run of ~26 images, so P1 includes per-run costs (settings, shard files, the merge, the report's
  thumbnails) that a real pool spreads over far more images; the P1 target is judged on P9, the slope. P1
  errors is reported without a target: errors with `errors_prior: true` (one forward with every box down to
  0.01, then the features and the prior's arithmetic; a fitted model's costs the same). **P2**: the same for
  CALD, times 5 (the reference pass and four views), ÷ P0: the share of the hardware CALD's five forwards per
  image get.
- **P3**: entropy mining ÷ `YOLO(weights).predict(source=<folder>, stream=True, batch, imgsz, conf=0.25)`
  on the same images, interleaved segment by segment with the entropy runs and their P0 runs. Note that
  Both sides letterbox to rectangles: Ultralytics a batch whose images share one original size to the
  smallest stride-multiple rectangle (else the square), our loop every image to its own smallest
  rectangle (640×480 for most COCO images), batching images of one canvas shape together (P0 uses the
  same canvases and batches). Ultralytics' CPU device set-up leaves torch 1 thread on 2 cores; after a warm-up
  call its torch is given all cores again (as our detector does), so both sides use the same cores. The
  table also gives the ratio with each side divided by the P0 measured around it.
- **P4**: `start.py` in platform mode on a pool of N images and on 10 copies of it (distinct paths,
  symlinks), same algorithm and batch (`--rss-batch`, default 1, so that what the loop holds, about 4
  batches plus the decode threads' images, stays far below N); peak RSS of the child from `wait4`. That
  peak is reached while the model loads, so the table also gives the largest RSS sampled
  (`/proc/<pid>/status`, every 50 ms) once mining has started, which is what would grow if images or
  scores were held.
- **P5**: `start.py` in platform mode on the COCO pool (template defaults: entropy): seconds from spawning
  the process to the first `monitor.txt` line with state 2 and progress > 0 (polled every 5 ms).
- **P6**: `executor.pipeline.tasks.infer` with `backend: onnx` (an Ultralytics ONNX export, dynamic batch, made
  in a temp dir) ÷ with `backend: torch`, CPU, same images and batch, paired segment by segment like P1.
- **P7**: decode + letterbox of the COCO pool in one thread (torch and OpenCV limited to one): OpenCV
  (`read_image` + `letterbox`, the CPU path) against torchvision's CPU `decode_jpeg` + `letterbox_tensor`
  (executor/engine/gpu_decode.py), in 4 segments, who goes first rotating; on CUDA also the batched nvJPEG path
  (`decode_batch`, a batch of images a call), with and without copying the originals back to the host.
- **P9**: P1 measured as the issue's yardstick does: the slope of `executor.pipeline.tasks.mine`'s wall time between a
  40- and a 200-image pool (per-run costs such as settings, shard and result files cancel; 40 is above the
  36 images whose thumbnails the report draws, so those cost the same in both), ÷ P0 on the 160 extra
  images' canvases; 3 pairs (1 with `--quick`, on the smaller quick pool), the median. With the template defaults (the report on,
  which needs every image's boxes) for entropy and aldd, and for `aldd-no-report` (report off: ALDD's maps
  then come from the network up to the head plus the head's class branch, `executor.engine.torch_detector.ClassMapsNet`,
  without the box branch), which is also given ÷ that network's own rate on the same canvases.
- **P8**: `executor.pipeline.tasks.mine` (entropy, report off) on at least 96 images (the pool repeated as symlinks)
  with `cpu_processes: 2` ÷ `cpu_processes: 1`, `cpu_threads` set so each worker has 1 thread (the scores
  are then bit-identical, and result.tsv is checked to be the same bytes); each run loads its own model,
  and 2 workers start their processes. Also given from the first scored image on (the steady state).

**Quality.** Three sets, each against its own ground truth (`benchmarks/gt.py`):

- **coco-val**: the 206 COCO val2017 images of `shared/data/coco-val` and their COCO annotations;
  scored by the timed speed runs above.
- **voc2007**: the 100 Pascal VOC 2007 images of `shared/data/voc2007`, VOC names renamed to COCO
  names by its `coco_names.txt`.
- **highway**: a fixed 300-image subset of `shared/data/highway` valid+test (738 road photos, 416×416,
  YOLO labels; 199 valid and 101 test images, 605 objects): the 300 whose relative paths
  (`valid/images/<file>`) have the smallest sha256, a seeded draw that needs no seed and depends neither on
  file-system order nor on where the data lives (`--images` takes the start of the same draw). Class ids
  are renamed by `highway/coco_names.txt` (0 bus, 1 car, 2 motorcycle, which the data calls motorbike,
  3 person, 4 truck). One domain and five classes, like a pool a team mines, where coco-val and voc2007
  are broad; it holds no file of the train split, the simulator's pool (docs/simulation.md).

voc2007 and highway are mined by each algorithm in a timed run of their own (its timings are in the JSON).

Per image, the model's errors at `conf_thres` 0.25 (`benchmarks/quality.py`): false
negatives + false positives at IoU ≥ 0.5, class-aware, detections matched greedily by confidence to the
unmatched ground-truth box of their class with the largest IoU. COCO `iscrowd` boxes and VOC
`difficult` objects are ignored (missing them is no error; a detection on one is neither TP nor FP; crowd
regions match by intersection over the detection's area, as COCO does), and so are detections of classes
a dataset never labels (a COCO model's "bench" in a VOC image). Classes are mapped by name. Rankings: the scores of
`executor.pipeline.tasks.mine` for each algorithm (errors with `errors_prior: true`: the row `errors (prior)`);
`random` = the project's random scorer, mean over seeds 0-9; `detections` = number of boxes the model keeps.
Tied scores are broken at random (Q1/Q2 are averaged over 200 tie-breaks).

The other errors rows are read off the benchmark's own detection pass (every box down to 0.01) with
mining/errors.py's features and models, as the scorer reads them: `per cost` divides by the image's expected
labelling cost (`errors_per_cost`); `cross-fitted` reads an error model fitted on the same set (conf_thres
0.25, max_det 100; labels from the one labelled pass, so a box on a crowd or difficult region or of a class the
set does not label is no example), cross-fitted: the images fall into 5 folds by a hash of their file name and
each is scored by the model fitted on the other 4, never by one that saw its labels. It stands for weights whose
error model was fitted on labelled images of the same kind (training's val split), from 4/5 of a small set.
Because the errors scorer predicts the very count the benchmark makes, E[FP] + E[misses], each set also gives
its calibration, for the prior and the cross-fitted model: predicted ÷ observed errors summed over the images
(and for FP and misses apart), the same within tenths of the images sorted by the prediction, and Spearman ρ
between predicted and observed errors per image. Both count every kept box as a possible false positive,
including the boxes the benchmark ignores (classes the set does not label), which raises the predicted FP on
voc2007 and highway.

- **Q2** (the headline): share of all errors in the images taken in score order until their ground-truth
  objects reach 20% of all objects (the image that crosses the budget is taken).
- **Q1**: share of all errors in the top 20% of images (round(0.2 N) images).
- **Q3**: Spearman ρ between the score and the per-image error rate errors ÷ max(1, objects).

Why Q2 leads: labelling cost is mostly boxes (an image of twenty cars costs about twenty times an image of
one), and at an image budget crowded images look better than they are: they hold more errors because they
hold more objects. Counting the detections captures twice random's share of the errors at 20% of the
images (Q1 0.41 on both coco-val and voc2007 in the CPU run of 2026-12-01) but no more than random at
20% of the objects (Q2 0.19 on both; random 0.20 and 0.19). Q2 is what a team that pays per box gets for
its budget; Q1 stays beside it because budgets are also counted in images, and the gap between the two
shows how much of a ranking's capture is only crowding. The targets read Q2 first: "beats random on Q2,
Q1, Q3" (all three above random's mean) and "beats detections on Q2, Q1 with Q3 ≥ 0.3".

The "not shipped" rows are other image scores over the same boxes (entropy averaged or maxed instead of
summed over the kept boxes, mean least-confidence `1 − conf`; `entropy_topk_mean`, the mean of the 3 largest
box entropies over every candidate, as `entropy_aggregation: topk_mean` ships; `expected_errors`, the errors
prior without the max_det cut) and the oracle (score = the image's true error count), which bounds Q1 from
above.
"""
