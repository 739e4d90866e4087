"""The simulation's results: runs as CSV, the summary (area under the curve, spread over seeds), markdown tables
and the learning-curve plot.
"""

import csv
import io
import math
from typing import Sequence

from executor.protocol.writers import atomic_writer


# ---------------------------------------------------------------- results

CSV_FIELDS = ("algorithm", "seed", "round", "labelled", "mAP50", "mAP50_95", "mAR50", "train_s", "eval_s", "mine_s",
              "added_count", "added")


def csv_text(runs: Sequence[dict]) -> str:
    """One row per algorithm, seed and round; `added` = the images revealed in that round (';'-separated,
    relative to the pool root of simulation.json; round 0: the random N0 shared by every algorithm)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for run in runs:
        for r in run["rounds"]:
            writer.writerow([run["algorithm"], run["seed"], r["round"], r["labelled"], r["mAP50"], r["mAP50_95"],
                             r["mAR50"], r["train_s"], r["eval_s"], r["mine_s"], len(r["added"]), ";".join(r["added"])])
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
    """Per algorithm: curves (labelled → mAP per seed) of the runs with every round finished, the last-round
    mAP, the area under the mAP50 curve, and both as paired differences to random (same seed, same N0)."""
    complete = {}
    for run in runs:
        if len(run["rounds"]) >= rounds + 1:  # (an earlier run may have gone further)
            complete.setdefault(run["algorithm"], {})[run["seed"]] = run["rounds"][:rounds + 1]
    summary = {"algorithms": {}, "rounds": rounds}
    for algorithm, by_seed in complete.items():
        per_seed = {}
        for seed, rs in by_seed.items():
            xs = [r["labelled"] for r in rs]
            per_seed[seed] = {"labelled": xs, "mAP50": [r["mAP50"] for r in rs],
                              "mAP50_95": [r["mAP50_95"] for r in rs],
                              "last50": rs[-1]["mAP50"], "last50_95": rs[-1]["mAP50_95"],
                              "auc50": area(xs, [r["mAP50"] for r in rs]),
                              "auc50_95": area(xs, [r["mAP50_95"] for r in rs]),
                              "mine_s": sum(r["mine_s"] for r in rs[1:]) / max(1, len(rs) - 1),
                              "train_s": sum(r["train_s"] for r in rs) / len(rs)}
        summary["algorithms"][algorithm] = {"seeds": per_seed, **{
            key: spread([v[key] for v in per_seed.values()])
            for key in ("last50", "last50_95", "auc50", "auc50_95", "mine_s", "train_s")}}
    random_runs = summary["algorithms"].get("random")
    for algorithm, entry in summary["algorithms"].items():
        if random_runs is None or algorithm == "random":
            continue
        paired = [s for s in entry["seeds"] if s in random_runs["seeds"]]
        if paired:
            for key in ("last50", "last50_95", "auc50", "auc50_95"):
                diffs = [entry["seeds"][s][key] - random_runs["seeds"][s][key] for s in paired]
                entry[f"vs_random_{key}"] = {**spread(diffs), "wins": sum(d > 0 for d in diffs)}
    return summary


def _value(s: dict) -> str:
    return f"{s['mean']:.3f}" + (f" [{s['min']:.3f}, {s['max']:.3f}]" if s["n"] > 1 else "")


def _delta(s: dict | None) -> str:
    if s is None:
        return "—"
    text = f"{s['mean']:+.3f}"
    if s["n"] > 1:
        text += f" [{s['min']:+.3f}, {s['max']:+.3f}] ({s['wins']}/{s['n']} seeds > 0)"
    return text


def table(summary: dict) -> str:
    """The markdown table of the terminal and of simulation.md."""
    head = ("| algorithm | seeds | mAP50 last | mAP50-95 last | AUC mAP50 | Δ mAP50 last vs random | "
            "Δ AUC mAP50 vs random | Δ mAP50-95 last vs random | mining s/round |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for algorithm, e in summary["algorithms"].items():
        lines.append(f"| {algorithm} | {e['last50']['n']} | {_value(e['last50'])} | {_value(e['last50_95'])} | "
                     f"{_value(e['auc50'])} | {_delta(e.get('vs_random_last50'))} | {_delta(e.get('vs_random_auc50'))} "
                     f"| {_delta(e.get('vs_random_last50_95'))} | {e['mine_s']['mean']:.0f} |")
    return "\n".join(lines) + "\n"


def curve_table(summary: dict) -> str:
    """Mean mAP50 (mAP50-95) over seeds at every labelled count."""
    algos = summary["algorithms"]
    if not algos:
        return ""
    counts = next(iter(next(iter(algos.values()))["seeds"].values()))["labelled"]
    lines = ["| labelled | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
    for i, count in enumerate(counts):
        cells = []
        for e in algos.values():
            m50 = [s["mAP50"][i] for s in e["seeds"].values()]
            m95 = [s["mAP50_95"][i] for s in e["seeds"].values()]
            cells.append(f"{sum(m50) / len(m50):.3f} ({sum(m95) / len(m95):.3f})")
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str, title: str, start: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, name in ((axes[0], "mAP50", "mAP50"), (axes[1], "mAP50_95", "mAP50-95")):
        for algorithm, e in summary["algorithms"].items():
            seeds = list(e["seeds"].values())
            xs = seeds[0]["labelled"]
            columns = list(zip(*[s[key] for s in seeds]))
            mean = [sum(c) / len(c) for c in columns]
            line, = ax.plot(xs, mean, marker="o", label=f"{algorithm} ({len(seeds)} seed{'s' * (len(seeds) > 1)})")
            if len(seeds) > 1:
                ax.fill_between(xs, [min(c) for c in columns], [max(c) for c in columns], color=line.get_color(),
                                alpha=0.15, linewidth=0)
        if start:
            ax.axhline(start[key], color="grey", linestyle="--", linewidth=1, label="start weights, no training")
        ax.set_xlabel("labelled images")
        ax.set_ylabel(f"{name} on the val split")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(title + " — line: mean over seeds, band: min–max", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    with atomic_writer(path, binary=True) as handle:
        handle.write(buffer.getvalue())
