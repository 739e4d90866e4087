"""Does mining pay? An active-learning loop on a labelled pool, with Quarry's own training, evaluation and mining.

    python start.py simulate --data DATA --weights W.pt --algorithms random,entropy,entropy[entropy_aggregation=max] \\
        --initial 100 --budget-cost 500 --rounds 3 --seeds 3 --epochs 5 --img-size 320 --out DIR

Per seed, N0 pool images are drawn at random (the same N0 for every algorithm of that seed) and a model is
trained on them from the starting weights (round 0, shared by the algorithms of the seed). Then, per algorithm,
`rounds` times: mine the rest of the pool with the model of the previous round, reveal the labels of the top
`budget` images (or, with --budget-cost, of the top images whose labelling cost reaches it: cost = boxes +
c x images, the crossing image included), train again from the starting weights on everything labelled so far,
and evaluate mAP50 and mAP50-95 on the fixed val split. So the curve of an algorithm has rounds + 1 points; each
is compared with random's at equal labelling cost too (executor/simulate/compare.py).

Everything Quarry ships is used as it is: `executor.pipeline.training.run_training` trains and measures with its
`Evaluator` (our pycocotools evaluation, batched like Ultralytics' validator), asked for less than the platform asks
(no Ultralytics validation: the last epoch is the model; no ONNX export; its val predictions handed back for the
bootstrap), `executor.pipeline.tasks.run(make_plan(["mining"], …))` ranks.
The baseline `detections` (most boxes at conf_thres first) counts the boxes of Quarry's own infer task.

Outputs in --out: simulation.json (plan + every round), simulation.csv (one row per round), simulation.md (the
tables), simulation.png (mAP against labelled images and against labelling cost), and runs/ (per round: the
train index, best.pt, the mining ranking). Every finished round is written atomically; a rerun with the same plan
continues where a kill stopped it (rounds, seeds and algorithms may change between runs; the data, weights, N0,
the budget, c and training settings may not).
"""

import argparse
import logging
import os

from executor.errors import ConfigError, QuarryError, one_line
from executor.simulate.plan import Plan, algorithm_names, parse_seeds, parse_sets, split_arms
from executor.simulate.state import Simulation
from executor.simulate.summary import regime_line, table

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- command line

def add_parser(subparsers, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """`simulate` and its flags on an argparse subparsers object (start.py calls this); `common`: a parent parser
    of flags every subcommand takes."""
    from executor.cli.flags import help_default
    from executor.protocol.templates import load_template

    template = load_template("training")  # the defaults the --epochs, --img-size and --batch help names
    cmd = subparsers.add_parser(
        "simulate", parents=[common] if common else [],
        help="active-learning loop on a labelled pool: does mining beat random on your data?",
        description="Per algorithm and seed: N0 random images, then ROUNDS x (mine the rest of the pool with the "
                    "last model, reveal the top BUDGET images or the top images whose labelling cost reaches "
                    "BUDGET_COST, retrain from --weights, evaluate on the val split); each algorithm compared with "
                    "random at equal labelling cost. Writes simulation.{json,csv,md,png} and "
                    "simulation-summary.csv to --out; a rerun continues a killed one.")
    cmd.add_argument("--data", required=True, help="an Ultralytics data.yaml (train = the pool, val = the fixed val "
                                                   "split, YOLO labels) or a folder with train-index.tsv and "
                                                   "val-index.tsv (ymir index files) and names.txt")
    cmd.add_argument("--weights", "--model", dest="weights", required=True,
                     help="starting weights (.pt) of every training round")
    cmd.add_argument("--algorithms", default="random,entropy",
                     help=f"comma-separated arms, of {', '.join(algorithm_names())}; a mining algorithm may name a "
                          "selection mode, entropy:diverse, and any arm its own template keys, "
                          "entropy[entropy_aggregation=max,conf_thres=0.1] (mining template; infer template for "
                          "detections) (default %(default)s)")
    cmd.add_argument("--initial", type=int, required=True, help="N0: images labelled at random before round 1")
    budget = cmd.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", type=int, help="B: images revealed per round")
    budget.add_argument("--budget-cost", type=float, metavar="C",
                        help="C: labelling cost revealed per round, cost = boxes + c x images (c: --image-cost): "
                             "images are revealed in ranking order until the round's cost reaches C, the image that "
                             "crosses C included")
    cmd.add_argument("--image-cost", type=float, default=1.0, metavar="c",
                     help="the cost of labelling one image besides its boxes, in boxes (> 0: an empty image is never "
                          "free; default %(default)s)")
    cmd.add_argument("--rounds", type=int, default=3, help="mining rounds after round 0 (default %(default)s)")
    cmd.add_argument("--seeds", default="3", help="a count (3 = seeds 0,1,2) or a list such as 0,7 (default 3)")
    cmd.add_argument("--epochs", type=int, help="training epochs per round" + help_default(template, "epochs"))
    cmd.add_argument("--img-size", "--imgsz", dest="img_size", type=int,
                     help="training, evaluation and mining size" + help_default(template, "img_size"))
    cmd.add_argument("--batch", type=int,
                     help="training batch, also the mining batch" + help_default(template, "batch_size_per_gpu"))
    cmd.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="any training/mining template key, e.g. --set lr0=0.005 --set gpu_id=0 "
                          "--set class_names=bus,car,motorcycle,person,truck (renames the data's classes)")
    cmd.add_argument("--train-val", type=int, default=0, metavar="N",
                     help="val images run_training's own evaluation of the round's model uses (its result.yaml): "
                          "the first N, default all. The reported mAP always uses the whole val split, so N below "
                          "all adds a second evaluation per round (the training itself validates on nothing)")
    cmd.add_argument("--bootstrap", type=int, default=500, metavar="N",
                     help="draws of the paired bootstrap over val images that gives each Δ at equal cost its 95%% "
                          "interval (0: none; default %(default)s)")
    cmd.add_argument("--out", required=True, help="output folder (a rerun with the same plan continues)")
    cmd.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return cmd


def plan_from_args(args) -> Plan:
    config = parse_sets(getattr(args, "set", None) or [])
    for key, value in (("epochs", args.epochs), ("img_size", args.img_size), ("batch_size_per_gpu", args.batch)):
        if value is not None:
            config[key] = value
    return Plan(data=args.data, weights=args.weights, out=args.out, algorithms=split_arms(args.algorithms),
                initial=args.initial, budget=args.budget, budget_cost=getattr(args, "budget_cost", None),
                image_cost=getattr(args, "image_cost", 1.0), rounds=args.rounds, seeds=parse_seeds(args.seeds),
                config=config, train_val=getattr(args, "train_val", 0) or 0,
                bootstrap=getattr(args, "bootstrap", 500))


def run_cli(args) -> int:
    """start.py simulate: run the plan, print the table. Exit status 0, 2 for a bad flag or --set value (the
    message names it), 1 for any other failure (bad data, weights, training), 130 when interrupted."""
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        plan = plan_from_args(args)
        with logging_redirect_tqdm():
            simulation = Simulation(plan, progress=not getattr(args, "no_progress", False))
            summary = simulation.run()
        print(regime_line(summary, simulation.start) + table(summary), end="")
        print(f"\nwrote {os.path.join(simulation.out, 'simulation.md')} (and .json, .csv, .png)")
        return 0
    except KeyboardInterrupt:
        log.error("interrupted; the finished rounds are kept: rerun the same command to continue")
        return 130
    except ConfigError as exc:  # a flag or --set value (checked before anything runs): a usage error
        log.error("%s", one_line(exc))
        return 2
    except Exception as exc:
        log.error("%s", one_line(exc))
        if not isinstance(exc, QuarryError):
            log.debug("traceback", exc_info=True)
        return 1
