"""The simulation's results: runs as CSV, the summary (area under the curve, spread over seeds, the comparison at
equal labelling cost of executor/simulate/compare.py), markdown tables and the learning-curve plot.
"""

import csv
import io
import math
from typing import Sequence

from executor.protocol.writers import atomic_writer
from executor.simulate.compare import cost_share, gap


# ---------------------------------------------------------------- results

CSV_FIELDS = ("algorithm", "seed", "round", "labelled", "boxes", "cost", "round_images", "round_boxes", "round_cost",
              "correction_fp", "correction_misses", "correction_cost", "mAP50", "mAP50_95", "mAR50", "train_s",
              "eval_s", "mine_s", "prelabel_s", "added_count", "added")


def csv_text(runs: Sequence[dict]) -> str:
    """One row per algorithm, seed and round; `added` = the images revealed in that round (';'-separated,
    relative to the pool root of simulation.json; round 0: the random N0 shared by every algorithm); the correction
    columns are empty in round 0 (no model pre-labelled its images)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for run in runs:
        for r in run["rounds"]:
            fixes = r["correction"] or {}
            writer.writerow([run["algorithm"], run["seed"], r["round"], r["labelled"], r["boxes"], r["cost"],
                             r["round_images"], r["round_boxes"], r["round_cost"], fixes.get("fp", ""),
                             fixes.get("misses", ""), fixes.get("cost", ""), r["mAP50"], r["mAP50_95"], r["mAR50"],
                             r["train_s"], r["eval_s"], r["mine_s"], r["prelabel_s"], len(r["added"]),
                             ";".join(r["added"])])
    return buffer.getvalue()


def area(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Area under the curve (trapezoids) divided by its width: the mean mAP over the labelled range."""
    if len(xs) < 2 or xs[-1] == xs[0]:
        return float(ys[-1])
    total = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return total / (xs[-1] - xs[0])


def spread(values: Sequence[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "min": min(values), "max": max(values), "sd": sd, "n": n}


def summarize(runs: Sequence[dict], rounds: int) -> dict:
    """Per algorithm: curves (per seed: labelled images and cost → mAP) of the runs with every round finished, the
    last-round mAP, the area under the mAP50 curve, and against random (same seed, same N0, same round-0 model):
    the paired differences of those, the mean difference at equal cost (compare.gap) and the label savings
    (compare.cost_share; random's own share says whether its curve peaked before its last round)."""
    complete = {}
    for run in runs:
        if len(run["rounds"]) >= rounds + 1:  # (an earlier run may have gone further)
            complete.setdefault(run["algorithm"], {})[run["seed"]] = run["rounds"][:rounds + 1]
    summary = {"algorithms": {}, "rounds": rounds}
    for algorithm, by_seed in complete.items():
        per_seed = {seed: seed_curve(rs) for seed, rs in by_seed.items()}
        summary["algorithms"][algorithm] = {"seeds": per_seed, **{
            key: spread([v[key] for v in per_seed.values()])
            for key in ("last50", "last50_95", "auc50", "auc50_95", "mine_s", "train_s", "last_cost",
                        "boxes_per_image")}}
    random_runs = summary["algorithms"].get("random")
    for algorithm, entry in summary["algorithms"].items():
        paired = [s for s in entry["seeds"] if random_runs and s in random_runs["seeds"]]
        if not paired:
            continue
        mine, ref = entry["seeds"], random_runs["seeds"]
        entry["savings"] = shares({s: cost_share(mine[s]["cost"], mine[s]["mAP50"], ref[s]["cost"], ref[s]["mAP50"])
                                   for s in paired})
        if algorithm == "random":
            continue
        for key in ("last50", "last50_95", "auc50", "auc50_95"):
            entry[f"vs_random_{key}"] = wins([mine[s][key] - ref[s][key] for s in paired])
        for key, metric in (("cost50", "mAP50"), ("cost50_95", "mAP50_95")):
            entry[f"vs_random_{key}"] = wins([gap(mine[s]["cost"], mine[s][metric], ref[s]["cost"], ref[s][metric])
                                              for s in paired])
    return summary


def regime(summary: dict, start: dict | None) -> str:
    """What the rounds measure: 'fine-tuning' when the round-0 model (mean over seeds) beats the untrained start
    weights on the val split, 'forgetting' when it does not (the training loses more than the labels add: the curves
    say how fast fine-tuning forgets, not which images teach most), 'cold start' without a start reference (the
    start weights lack the data's classes)."""
    if not start:
        return "cold start"
    first = [c["mAP50"][0] for e in summary["algorithms"].values() for c in e["seeds"].values()]
    return "fine-tuning" if first and sum(first) / len(first) > start["mAP50"] else "forgetting"


def regime_line(summary: dict, start: dict | None) -> str:
    """One line saying the regime, with the numbers behind it."""
    if regime(summary, start) == "cold start":
        return ("Regime: cold start. The start weights lack the data's classes, so there is no untrained reference: "
                "read the curves against random only.\n")
    first = [c["mAP50"][0] for e in summary["algorithms"].values() for c in e["seeds"].values()]
    mean_first = sum(first) / max(1, len(first))
    if regime(summary, start) == "fine-tuning":
        return (f"Regime: fine-tuning. The round-0 model (mAP50 {mean_first:.3f}) beats the untrained start weights "
                f"({start['mAP50']:.3f}): the labels add more than the training loses.\n")
    return (f"**Regime: forgetting.** The round-0 model (mAP50 {mean_first:.3f}) is below the untrained start weights "
            f"({start['mAP50']:.3f}): the training loses more than the labels add, so these curves measure how fast "
            "fine-tuning forgets, not which images teach most. Fix the recipe first (docs/simulation.md, Training "
            "recipe).\n")


def seed_curve(rs: Sequence[dict]) -> dict:
    """One seed's curve and the numbers the table reads from it."""
    xs, mined = [r["labelled"] for r in rs], rs[1:]
    fixes = [r["correction"]["cost"] for r in mined if r.get("correction")]
    boxes = sum(r["round_boxes"] for r in mined)
    return {"labelled": xs, "cost": [r["cost"] for r in rs], "val_matches": [r.get("val_matches") for r in rs],
            "mAP50": [r["mAP50"] for r in rs],
            "mAP50_95": [r["mAP50_95"] for r in rs], "last50": rs[-1]["mAP50"], "last50_95": rs[-1]["mAP50_95"],
            "auc50": area(xs, [r["mAP50"] for r in rs]), "auc50_95": area(xs, [r["mAP50_95"] for r in rs]),
            "last_cost": rs[-1]["cost"], "boxes_per_image": boxes / max(1, sum(r["round_images"] for r in mined)),
            # pre-label corrections (false positives + misses) per revealed box: 0 = the pre-labels were right
            "fixes_per_box": sum(fixes) / boxes if len(fixes) == len(mined) and boxes else None,
            "mine_s": sum(r["mine_s"] for r in mined) / max(1, len(mined)),
            "train_s": sum(r["train_s"] for r in rs) / len(rs)}


def wins(diffs: Sequence[float]) -> dict:
    return {**spread(diffs), "wins": sum(d > 0 for d in diffs)}


def shares(per_seed: dict) -> dict:
    """Label savings over seeds: the spread of the seeds that reached random's final mAP50, and how many did."""
    reached = [v for v in per_seed.values() if v is not None]
    return {"per_seed": per_seed, "reached": len(reached), "n": len(per_seed),
            **({"spread": spread(reached)} if reached else {})}


def _value(s: dict, digits: int = 3) -> str:
    return f"{s['mean']:.{digits}f}" + (f" [{s['min']:.{digits}f}, {s['max']:.{digits}f}]" if s["n"] > 1 else "")


def _delta(s: dict | None) -> str:
    if s is None:
        return "—"
    text = f"{s['mean']:+.3f}"
    if s["n"] > 1:
        text += f" [{s['min']:+.3f}, {s['max']:+.3f}] ({s['wins']}/{s['n']} seeds > 0)"
    if s.get("interval"):
        text += " CI [{:+.3f}, {:+.3f}]".format(*s["interval"])
    return text


def _share(s: dict | None) -> str:
    if s is None:
        return "—"
    if not s["reached"]:
        return "not reached" + (f" (0/{s['n']} seeds)" if s["n"] > 1 else "")
    value = s["spread"]
    text = f"{value['mean']:.2f}" + (f" [{value['min']:.2f}, {value['max']:.2f}]" if value["n"] > 1 else "")
    return text + (f" (reached {s['reached']}/{s['n']} seeds)" if s["n"] > 1 else "")


def fixes_per_box(entry: dict) -> float | None:
    """Pre-label corrections per revealed box, mean over seeds (None: a round had no pre-label count)."""
    values = [v["fixes_per_box"] for v in entry["seeds"].values()]
    return None if None in values else sum(values) / len(values)


def _fixes(entry: dict) -> str:
    value = fixes_per_box(entry)
    return "—" if value is None else f"{value:.2f}"


def table(summary: dict) -> str:
    """The markdown tables of the terminal and of simulation.md: at equal images, then at equal labelling cost."""
    head = ("| algorithm | seeds | mAP50 last | mAP50-95 last | AUC mAP50 | Δ mAP50 last vs random | "
            "Δ AUC mAP50 vs random | Δ mAP50-95 last vs random | mining s/round |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for algorithm, e in summary["algorithms"].items():
        lines.append(f"| {algorithm} | {e['last50']['n']} | {_value(e['last50'])} | {_value(e['last50_95'])} | "
                     f"{_value(e['auc50'])} | {_delta(e.get('vs_random_last50'))} | {_delta(e.get('vs_random_auc50'))} "
                     f"| {_delta(e.get('vs_random_last50_95'))} | {e['mine_s']['mean']:.0f} |")
    head = ("| algorithm | cost last | boxes per mined image | Δ mAP50 at equal cost vs random | "
            "Δ mAP50-95 at equal cost vs random | cost to reach random's last mAP50 (share of random's) | "
            "pre-label fixes per box |")
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    for algorithm, e in summary["algorithms"].items():
        lines.append(f"| {algorithm} | {_value(e['last_cost'], 0)} | {_value(e['boxes_per_image'], 1)} | "
                     f"{_delta(e.get('vs_random_cost50'))} | {_delta(e.get('vs_random_cost50_95'))} | "
                     f"{_share(e.get('savings'))} | {_fixes(e)} |")
    return "\n".join(lines) + "\n"


SUMMARY_FIELDS = ("algorithm", "seeds", "mAP50_last", "mAP50_95_last", "cost_last", "boxes_per_mined_image",
                  *(f"d_{m}_equal_cost_{k}" for m in ("mAP50", "mAP50_95")
                    for k in ("mean", "min", "max", "wins", "ci_low", "ci_high")),
                  "cost_share_to_reach_random", "cost_share_min", "cost_share_max", "seeds_reached",
                  "prelabel_fixes_per_box")


def summary_csv(summary: dict) -> str:
    """simulation-summary.csv: one row per algorithm, the numbers of the equal-cost table (empty: not defined,
    e.g. Δ for random itself, or a share no seed reached)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_FIELDS)
    for algorithm, e in summary["algorithms"].items():
        row = [algorithm, e["last50"]["n"], e["last50"]["mean"], e["last50_95"]["mean"], e["last_cost"]["mean"],
               e["boxes_per_image"]["mean"]]
        for key in ("vs_random_cost50", "vs_random_cost50_95"):
            d = e.get(key) or {}
            row += [d.get("mean", ""), d.get("min", ""), d.get("max", ""), d.get("wins", ""),
                    *(d.get("interval") or ["", ""])]
        savings = e.get("savings") or {}
        reached = savings.get("spread") or {}
        row += [reached.get("mean", ""), reached.get("min", ""), reached.get("max", ""), savings.get("reached", ""),
                "" if fixes_per_box(e) is None else fixes_per_box(e)]
        writer.writerow(row)
    return buffer.getvalue()


def curve_table(summary: dict) -> str:
    """Per round, over seeds: mean labelled images, mean cost, mean mAP50 (mAP50-95)."""
    algos = summary["algorithms"]
    if not algos:
        return ""
    lines = ["| round | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
    for i in range(summary["rounds"] + 1):
        cells = []
        for e in algos.values():
            seeds = e["seeds"].values()
            images, costs, m50, m95 = (mean([s[key][i] for s in seeds]) for key in ("labelled", "cost", "mAP50",
                                                                                      "mAP50_95"))
            cells.append(f"{images:.0f} img, cost {costs:.0f}: {m50:.3f} ({m95:.3f})")
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def equal_cost_label(entry: dict, key: str) -> str:
    """The legend's numbers on the cost axes: Δ vs random at equal cost (and its interval), and for mAP50 the label
    savings."""
    delta = entry.get("vs_random_cost50" if key == "mAP50" else "vs_random_cost50_95")
    parts = [f"Δ {delta['mean']:+.3f}" + (" [{:+.3f}, {:+.3f}]".format(*delta["interval"])
                                          if delta.get("interval") else "")] if delta else []
    savings = entry.get("savings") if key == "mAP50" else None
    if savings:
        parts.append(f"cost share {savings['spread']['mean']:.2f} ({savings['reached']}/{savings['n']})"
                     if savings["reached"] else "not reached")
    return (": " + ", ".join(parts)) if parts else ""


def plot(summary: dict, path: str, title: str, start: dict | None = None) -> None:
    """mAP50 and mAP50-95 (columns) against labelled images and against labelling cost (rows): per algorithm the
    mean over seeds at each round (x: the mean images or cost of that round), band = min–max of the mAP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 9))
    for row, (x_key, x_name) in enumerate((("labelled", "labelled images"), ("cost", "labelling cost (boxes + "
                                                                                      "c · images)"))):
        for ax, key, name in ((axes[row][0], "mAP50", "mAP50"), (axes[row][1], "mAP50_95", "mAP50-95")):
            for algorithm, e in summary["algorithms"].items():
                seeds = list(e["seeds"].values())
                xs = [mean(c) for c in zip(*[s[x_key] for s in seeds])]
                columns = list(zip(*[s[key] for s in seeds]))
                label = f"{algorithm} ({len(seeds)} seed{'s' * (len(seeds) > 1)})"
                line, = ax.plot(xs, [mean(c) for c in columns], marker="o",
                                label=label + (equal_cost_label(e, key) if x_key == "cost" else ""))
                if len(seeds) > 1:
                    ax.fill_between(xs, [min(c) for c in columns], [max(c) for c in columns],
                                    color=line.get_color(), alpha=0.15, linewidth=0)
            if start:
                ax.axhline(start[key], color="grey", linestyle="--", linewidth=1, label="start weights, no training")
            ax.set_xlabel(x_name)
            ax.set_ylabel(f"{name} on the val split")
            ax.grid(alpha=0.3)
            if x_key == "cost":  # (below the axes: the numbers make long labels)
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7)
    axes[0][0].legend(loc="best", fontsize=8)
    warning = " — FORGETTING REGIME: round 0 is below the start weights" if regime(summary, start) == "forgetting" else ""
    fig.suptitle(title + warning + " — line: mean over seeds, band: min–max\nbelow the cost axes: Δ vs random at equal cost "
                 "[95 % val bootstrap], cost share to reach random's last mAP50 (seeds that reached it)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    with atomic_writer(path, binary=True) as handle:
        handle.write(buffer.getvalue())
