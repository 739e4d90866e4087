"""The simulation's loop and its state: every (algorithm, seed, round) as a record in state.json, resumed where a
run stopped, with progress bars; its summary as markdown.
"""

import json
import logging
import os
import shutil
import sys
import time
from typing import Callable, Sequence

from executor.errors import ConfigError
from executor.pipeline.shards import file_sha256
from executor.protocol.writers import atomic_write_text
from executor.simulate import bootstrap, cost
from executor.simulate.plan import Plan, prepare_data
from executor.simulate.rounds import QuarryTrainer, SharedForwards, ensure_error_model, evaluate_start, initial_draw, \
    mine
from executor.simulate.summary import csv_text, curve_table, plot, regime, regime_line, summarize, summary_csv, table

log = logging.getLogger(__name__)


SHARED_ROUND = "initial"       # round 0's training belongs to every algorithm of a seed
FORMAT_VERSION = 3             # 2: labelling cost and pre-label corrections per round; 3: last-epoch models
# each round's model (in the identity: format 2 kept Ultralytics' best epoch by mAP on the reported split)
ROUND_MODEL = "the last epoch's weights: Ultralytics validates nothing during training"


# ---------------------------------------------------------------- the loop

class Bars:
    """tqdm: one bar of rounds, one below it for the training or mining inside."""

    def __init__(self, total: int, done: int, enabled: bool):
        from tqdm import tqdm

        self.tqdm, self.enabled = tqdm, enabled
        self.outer = tqdm(total=total, initial=done, unit="round", desc="simulation", position=0,
                          dynamic_ncols=True, disable=not enabled, file=sys.stderr)

    def step(self, desc: str):
        self.outer.set_description(desc)
        bar = self.tqdm(total=100, desc="  " + desc.split(": ")[-1], position=1, leave=False, unit="%",
                        dynamic_ncols=True, disable=not self.enabled, file=sys.stderr,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

        def progress(fraction: float) -> None:
            bar.update(max(0.0, min(100.0, 100.0 * fraction) - bar.n))

        return bar, progress

    def close(self) -> None:
        self.outer.close()


class Simulation:
    """Runs a Plan; `trainer`, `miner` and `prelabeller` (cost.prelabel) can be replaced (tests), `after_round(record)`
    is called after each round is written (a test raises there to simulate a kill)."""

    def __init__(self, plan: Plan, trainer=None, miner=None, after_round: Callable[[dict], None] | None = None,
                 progress: bool = True, clock: Callable[[], float] = time.monotonic, reference: bool = True,
                 prelabeller: cost.Prelabeller | None = None):
        plan.check()
        self.plan = plan
        self.out = os.path.abspath(plan.out)
        self.state_file = os.path.join(self.out, "simulation.json")
        self.after_round, self.show_progress, self.clock = after_round, progress, clock
        self.check_config()
        self.check_out()
        self.data = prepare_data(plan.data, self.out, plan.config)
        self.costs = {p: cost.image_cost(s, plan.image_cost) for p, s in self.data.pool_samples.items()}
        self.check_pool_size()
        self.config = {k: v for k, v in plan.config.items() if k != "class_names"}
        self.arms = {arm.spec: arm for arm in plan.arms()}
        self.prelabeller = prelabeller or cost.prelabel
        self.trainer = trainer or QuarryTrainer(self.data, self.config, os.path.abspath(plan.weights),
                                                self.train_val_index())
        self.miner = miner or mine
        self.shared = SharedForwards()  # round 1's arms of a seed mine with one model: one forward between them
        self.identity = {"data": os.path.abspath(plan.data), "dataset": self.data.fingerprint,
                         "weights_sha256": file_sha256(plan.weights), "initial": plan.initial,
                         "budget": plan.budget, "budget_cost": plan.budget_cost, "image_cost": plan.image_cost,
                         "config": dict(sorted(self.config.items())),
                         "train_val": plan.train_val if 0 < plan.train_val < len(self.data.val_samples) else 0,
                         "round_model": ROUND_MODEL,
                         "class_names": self.data.class_names}
        self.records: dict[tuple[str, int, int], dict] = {}  # (algorithm or SHARED_ROUND, seed, round) → record
        self.start: dict | None = None   # the start weights evaluated without training (None: not comparable)
        self.summary: dict | None = None  # the last report's (simulation.json keeps it)
        self.want_start = reference
        self.load()

    def check_pool_size(self) -> None:
        """The pool must hold what the plan reveals (for a cost budget: at least; a round may overshoot, and the
        run then stops at the round whose budget the rest of the pool cannot pay)."""
        p, pool = self.plan, len(self.data.pool)
        if p.budget is not None and p.initial + p.rounds * p.budget > pool:
            raise ConfigError(f"--initial {p.initial} + --rounds {p.rounds} x --budget {p.budget} = "
                              f"{p.initial + p.rounds * p.budget} images, more than the pool of {pool} usable "
                              f"images in {p.data}")
        if p.budget_cost is not None:
            least = p.initial * p.image_cost + p.rounds * p.budget_cost
            total = sum(self.costs.values())
            if p.initial > pool or least > total:
                raise ConfigError(f"--initial {p.initial} (cost >= {p.initial * p.image_cost:g}) + --rounds "
                                  f"{p.rounds} x --budget-cost {p.budget_cost:g} cost at least {least:g}, more than "
                                  f"the pool of {pool} usable images costs ({total:g}: boxes + {p.image_cost:g} x "
                                  f"images) in {p.data}")

    def check_out(self) -> None:
        """--out: new, empty, or a simulation's folder (never someone's folder with other files in it)."""
        ours = {"dataset", "runs", "simulation.json", "simulation.csv", "simulation-summary.csv", "simulation.md",
                "simulation.png"}
        if os.path.isdir(self.out) and not os.path.isfile(self.state_file):
            other = sorted(set(os.listdir(self.out)) - ours)
            if other:
                raise ConfigError(f"--out {self.out}: the folder holds other files ({', '.join(other[:3])}) and no "
                                  "simulation.json; use a new or empty folder")
            shutil.rmtree(os.path.join(self.out, "runs"), ignore_errors=True)  # a first round a kill interrupted
        elif os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ConfigError(f"--out {self.out}: not a folder")
        os.makedirs(self.out, exist_ok=True)

    def train_val_index(self) -> str:
        """The val index the training sees: the first --train-val usable val images (sorted), or all of them."""
        from executor.protocol.index import read_training_index

        count = self.plan.train_val
        if not count or count >= len(self.data.val_samples):
            return self.data.val_index
        usable = sorted(s.image for s in self.data.val_samples)[:count]
        rows = {asset: ann for asset, ann, _ in read_training_index(self.data.val_index, "val")}
        path = os.path.join(self.out, "dataset", f"train-val-{count}-index.tsv")
        atomic_write_text(path, "".join(f"{p}\t{rows[p]}\n" for p in usable))
        return path

    def check_config(self) -> None:
        """Every setting checked before anything runs (build_settings and Ultralytics' argument checker)."""
        from executor.engine import trainer
        from executor.pipeline.training import parse_args_options
        from executor.protocol.settings import build_settings
        from mining import SCORERS

        config = {k: v for k, v in self.plan.config.items() if k != "class_names"}
        settings = build_settings("training", config)
        trainer.check_train_args(parse_args_options(settings.args_options))
        trainer.train_device(settings.gpu_id)
        for arm in self.plan.arms():
            try:
                if arm.name in SCORERS:
                    build_settings("mining", {**config, **arm.params, "mining_algorithm": arm.name})
                else:
                    build_settings("infer", {**config, **arm.params})
            except ConfigError as exc:
                raise ConfigError(f"--algorithms {arm.spec!r}: {exc}") from None

    # ------------------------------------------------------------ state

    def load(self) -> None:
        if not os.path.isfile(self.state_file):
            return
        try:
            with open(self.state_file, encoding="utf-8") as handle:
                state = json.load(handle)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--out {self.out}: {self.state_file} cannot be read ({exc}); delete it to start "
                              "over") from None
        if state.get("identity") != self.identity:
            old = state.get("identity") or {}
            differ = sorted(k for k in set(old) | set(self.identity) if old.get(k) != self.identity.get(k))
            raise ConfigError(f"--out {self.out} holds a simulation of another plan ({', '.join(differ)} differ); "
                              f"use another --out, or delete {self.state_file} to start over")
        self.start = state.get("start_weights")
        for run in state.get("runs", []):
            for record in run["rounds"]:
                key = (SHARED_ROUND if record["round"] == 0 else run["algorithm"], run["seed"], record["round"])
                self.records[key] = {k: v for k, v in record.items() if k != "shared"}
        if self.records:
            log.info("%s: %d finished rounds kept from an earlier run", self.state_file, len(self.records))

    def record(self, algorithm: str, seed: int, round_: int) -> dict | None:
        return self.records.get((SHARED_ROUND if round_ == 0 else algorithm, seed, round_))

    def runs(self, algorithms: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> list[dict]:
        """Per algorithm and seed, its finished rounds in order (round 0 is the shared one)."""
        algorithms = algorithms or sorted({a for a, _, r in self.records if a != SHARED_ROUND} |
                                          set(self.plan.algorithms), key=self.order)
        seeds = seeds or sorted({s for _, s, _ in self.records} | set(self.plan.seeds))
        runs = []
        for algorithm in algorithms:
            for seed in seeds:
                rounds = []
                for number in range(0, 1 + max([r for _, _, r in self.records] + [self.plan.rounds])):
                    record = self.record(algorithm, seed, number)
                    if record is None:
                        break
                    rounds.append({**record, "shared": True} if number == 0 else record)
                if rounds:
                    runs.append({"algorithm": algorithm, "seed": seed, "rounds": rounds})
        return runs

    def order(self, algorithm: str):
        names = list(self.plan.algorithms)
        return (names.index(algorithm) if algorithm in names else len(names), algorithm)

    def where(self, path: str) -> str:
        """A path as simulation.json records it: relative to --out when inside it (so the file does not depend
        on where --out is)."""
        rel = os.path.relpath(path, self.out)
        return path if rel.startswith("..") else rel

    def save(self) -> None:
        plan = self.plan
        state = {"version": FORMAT_VERSION, "identity": self.identity,
                 "plan": {"data": os.path.abspath(plan.data), "weights": os.path.abspath(plan.weights),
                          "algorithms": list(plan.algorithms), "initial": plan.initial, "budget": plan.budget,
                          "budget_cost": plan.budget_cost, "image_cost": plan.image_cost,
                          "rounds": plan.rounds, "seeds": list(plan.seeds), "config": dict(self.config),
                          "train_val": plan.train_val},
                 "pool": {"root": self.data.root, "size": len(self.data.pool), "left_out": self.data.left_out},
                 "val": {"index": self.where(self.data.val_index), "size": len(self.data.val_samples)},
                 "class_names": self.data.class_names,
                 "start_weights": self.start,
                 "summary": self.summary,
                 "runs": self.runs()}
        atomic_write_text(self.state_file, json.dumps(state, indent=1) + "\n")
        atomic_write_text(os.path.join(self.out, "simulation.csv"), csv_text(self.runs()))

    # ------------------------------------------------------------ running

    def folder(self, algorithm: str, seed: int, round_: int) -> str:
        owner = SHARED_ROUND if round_ == 0 else self.arms[algorithm].folder
        return os.path.join(self.out, "runs", f"seed_{seed}", owner, f"round_{round_}")

    def steps(self) -> list[tuple[str, int, int]]:
        steps = []
        for seed in self.plan.seeds:
            steps.append((SHARED_ROUND, seed, 0))
            steps += [(a, seed, r) for r in range(1, self.plan.rounds + 1) for a in self.plan.algorithms]
        return steps

    def run(self) -> dict:
        """Every round of the plan not finished yet; returns the summary (see `summarize`)."""
        steps = self.steps()
        todo = [s for s in steps if self.record(*s) is None]
        bars = Bars(len(steps), len(steps) - len(todo), self.show_progress)
        try:
            if self.want_start and self.start is None:
                self.start = evaluate_start(os.path.abspath(self.plan.weights), self.data, self.config) or {}
                if self.start:
                    log.info("start weights without training: mAP50 %.4f, mAP50-95 %.4f on the val split",
                             self.start["mAP50"], self.start["mAP50_95"])
            for algorithm, seed, round_ in todo:
                self.run_round(algorithm, seed, round_, bars)
        finally:
            bars.close()
            if self.records or self.start:
                self.report()
        return self.summary or summarize([], self.plan.rounds)

    def run_round(self, algorithm: str, seed: int, round_: int, bars: Bars) -> None:
        folder = self.folder(algorithm, seed, round_)
        for name in os.listdir(folder) if os.path.isdir(folder) else ():  # a round a kill interrupted
            if name not in ("mining.tsv", "shards"):  # (the same model mined them: kept, as mining resumes)
                path = os.path.join(folder, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        os.makedirs(folder, exist_ok=True)
        label = f"seed {seed} {'round 0 (all algorithms)' if round_ == 0 else f'{algorithm} round {round_}'}"
        if round_ == 0:
            labelled, added, mine_s = [], initial_draw(self.data, seed, self.plan.initial), 0.0
            fixes, prelabel_s = None, 0.0  # (no model yet to pre-label with)
        else:
            previous = self.record(algorithm, seed, round_ - 1)
            labelled = [self.data.abs(p) for r in range(round_) for p in self.record(algorithm, seed, r)["added"]]
            taken = set(labelled)
            candidates = [p for p in self.data.pool if p not in taken]
            if len(candidates) != len(self.data.pool) - len(taken) or len(taken) != len(labelled):
                raise RuntimeError(f"{algorithm} seed {seed}: the labelled images of rounds 0..{round_ - 1} are not "
                                   "distinct images of the pool")
            bar, progress = bars.step(f"{label}: mining {len(candidates)} images ({algorithm})")
            started = self.clock()
            arm, weights = self.arms[algorithm], os.path.join(self.out, previous["weights"])
            models = self.shared.models(weights if round_ == 1 else None)  # (later rounds: a model per arm)
            try:
                ensure_error_model(arm.name, weights, self.data, {**self.config, **arm.params}, progress)
                ranking = self.miner(arm.name, weights, candidates, folder, self.data,
                                     {**self.config, **arm.params}, seed, progress, labelled=labelled, models=models)
            finally:
                bar.close()
            mine_s = self.clock() - started
            if sorted(ranking) != sorted(candidates):
                raise RuntimeError(f"{algorithm}: the ranking in {folder} does not list the remaining pool exactly")
            added = self.reveal(ranking)
            started = self.clock()
            fixes = self.corrections(weights, added)
            prelabel_s = self.clock() - started
        images = sorted(labelled + added)
        bar, progress = bars.step(f"{label}: training on {len(images)} images")
        try:
            trained = self.trainer(folder, images, seed, progress)
        finally:
            bar.close()
        total, this = (cost.tally(part, self.data.pool_samples, self.plan.image_cost) for part in (images, added))
        record = {"round": round_, "labelled": len(images), "added": [self.data.rel(p) for p in added],
                  "boxes": total["boxes"], "cost": total["cost"], "round_images": this["images"],
                  "round_boxes": this["boxes"], "round_cost": this["cost"], "correction": fixes,
                  "mAP50": round(trained.mAP50, 6), "mAP50_95": round(trained.mAP50_95, 6),
                  "mAR50": round(trained.mAR50, 6), "train_s": round(trained.train_s, 2),
                  "eval_s": round(trained.eval_s, 2), "mine_s": round(mine_s, 2), "prelabel_s": round(prelabel_s, 2),
                  "weights": os.path.relpath(trained.weights, self.out),
                  "val_matches": os.path.relpath(trained.matches, self.out) if trained.matches else None}
        self.records[(SHARED_ROUND if round_ == 0 else algorithm, seed, round_)] = record
        self.save()
        bars.outer.update(1)
        log.info("%s: %d labelled, mAP50 %.4f, mAP50-95 %.4f (training %.0f s, mining %.0f s)", label,
                 len(images), trained.mAP50, trained.mAP50_95, trained.train_s, mine_s)
        if self.after_round:
            self.after_round({"algorithm": algorithm, "seed": seed, **record})

    def reveal(self, ranking: Sequence[str]) -> list[str]:
        """The round's images: the top --budget of the ranking, or its top whose cost reaches --budget-cost."""
        if self.plan.budget is not None:
            return list(ranking[:self.plan.budget])
        return cost.take_by_cost(ranking, self.costs, self.plan.budget_cost)

    def corrections(self, weights: str, images: Sequence[str]) -> dict:
        """What fixing the pre-labels of `images` made by `weights` (the model that mined them) costs."""
        samples = [self.data.pool_samples[p] for p in images]
        return cost.correction(samples, self.prelabeller(weights, samples, self.config), cost.conf_thres(self.config))

    def report(self) -> dict:
        """The summary of the finished rounds (with the bootstrap's intervals) into simulation.json,
        simulation-summary.csv, simulation.md and simulation.png; returns it."""
        runs = self.runs(list(self.plan.algorithms), list(self.plan.seeds))
        summary = summarize(runs, self.plan.rounds)
        self.add_intervals(summary)
        summary["regime"] = regime(summary, self.start)
        self.summary = summary
        self.save()
        atomic_write_text(os.path.join(self.out, "simulation-summary.csv"), summary_csv(summary))
        atomic_write_text(os.path.join(self.out, "simulation.md"), markdown(self, summary))
        try:
            if summary["algorithms"]:  # (no run has every round yet: no curve to draw)
                plot(summary, os.path.join(self.out, "simulation.png"), self.title(), self.start)
        except Exception:  # the numbers are written; a missing plot must not lose them
            log.exception("simulation.png could not be drawn")
        return summary

    def add_intervals(self, summary: dict) -> None:
        """The paired bootstrap over val images (executor/simulate/bootstrap.py) for every Δ at equal cost, when
        every round of the summary kept its val match table (a stand-in trainer keeps none)."""
        algos = summary["algorithms"]
        paths = [p for e in algos.values() for c in e["seeds"].values() for p in c["val_matches"]]
        if not self.plan.bootstrap or "random" not in algos or len(algos) < 2 or None in paths:
            return
        started = self.clock()
        tables = {p: bootstrap.load(os.path.join(self.out, p)) for p in set(paths)}
        curves = {a: {s: (c["cost"], [tables[p] for p in c["val_matches"]]) for s, c in e["seeds"].items()}
                  for a, e in algos.items()}
        for algorithm, found in bootstrap.intervals(curves, "random", self.plan.bootstrap).items():
            for key, interval in found.items():
                algos[algorithm][f"vs_random_{key}"]["interval"] = interval
        log.info("bootstrap over val images: %d draws in %.0f s", self.plan.bootstrap, self.clock() - started)

    def title(self) -> str:
        p = self.plan
        data = os.path.abspath(p.data)
        name = os.path.basename(os.path.dirname(data) if os.path.isfile(data) else data)
        settings = self.trainer.settings(0) if isinstance(self.trainer, QuarryTrainer) else self.config
        seeds = f"{len(p.seeds)} seed{'s' * (len(p.seeds) > 1)}"
        return (f"{name}: N0 {p.initial}, {p.budget_text} per round, {p.rounds} rounds, {seeds}, "
                f"{settings.get('epochs', '?')} epoch{'s' * (settings.get('epochs') != 1)}, "
                f"img {settings.get('img_size', '?')}")


def markdown(sim: Simulation, summary: dict) -> str:
    p, d = sim.plan, sim.data
    config = ", ".join(f"{k} {v}" for k, v in sorted(sim.config.items())) or "the template defaults"
    finished = sum(1 for _ in sim.records)
    total = len(sim.steps())
    parts = [
        "# Active-learning simulation\n",
        f"{sim.title()}.\n",
        regime_line(summary, sim.start),
        f"- data: `{os.path.abspath(p.data)}`: pool {len(d.pool)} images"
        + (f" ({len(d.left_out)} left out: byte-identical to val images)" if d.left_out else "")
        + f", fixed val split {len(d.val_samples)} images; classes {', '.join(d.class_names)}",
        f"- start weights: `{p.weights}` (every round trains from them); training and mining settings: {config}; "
        + (f"the training validates on the first {sim.identity['train_val']} val images"
           if sim.identity["train_val"] else "the training validates on the whole val split"),
        f"- model selection on the reported split: none ({ROUND_MODEL}; the val split only measures)",
        f"- plan: N0 {p.initial} at random per seed (shared by the algorithms), then {p.rounds} rounds of mine → "
        + (f"reveal the top {p.budget} images" if p.budget is not None else
           f"reveal the top images until their cost reaches {p.budget_cost:g} (the crossing image included)")
        + f" → retrain → evaluate; seeds {', '.join(map(str, p.seeds))}; labelling cost = boxes + "
          f"{p.image_cost:g} × images",
        f"- rounds finished: {min(finished, total)} of {total}" + ("" if finished >= total else " (the table has "
                                                                   "only the runs with every round finished)"),
        "",
        table(summary),
        "mAP50 and mAP50-95 are Quarry's evaluation of each round's best.pt on the val split; values are the mean "
        "over seeds with [min, max]. AUC = area under the mAP50 curve over the labelled range divided by its width "
        "(the mean mAP50 from N0 to the last round). Δ = paired difference to random (same seed, same N0), mean "
        "[min, max] over seeds, and in how many seeds it is above 0. With few seeds and small pools the spread "
        "is as large as the effects: read the wins and the band, not the mean alone (docs/simulation.md).\n",
        "Second table: cost = boxes + c × images labelled. Δ at equal cost = per seed, the mean difference to "
        "random's curve over the cost range both cover (each curve linear between its rounds), then mean [min, max] "
        "over seeds. Cost to reach = the cost at which the curve first reaches random's last mAP50, as a share of "
        "random's last cost (below 1: labels saved; \"not reached\" = never within its rounds, nothing "
        "extrapolated). Pre-label fixes per box = false positives + misses of the previous round's model on the "
        "revealed images (IoU 0.5, the infer conf_thres) per revealed box.\n",
        (f"The start weights without any training (their classes {', '.join(sim.start['classes'])} matched by name) "
         f"score mAP50 {sim.start['mAP50']:.3f}, mAP50-95 {sim.start['mAP50_95']:.3f} on the same val split (the "
         "dashed line in the plot).\n" if sim.start else ""),
        "Per round, mean over seeds: labelled images, cost, mAP50 (mAP50-95):\n",
        curve_table(summary),
        "![mAP against labelled images and against labelling cost](simulation.png)\n",
    ]
    return "\n".join(parts)
