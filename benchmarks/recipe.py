"""Training recipes for small labelled sets: the round-0 model of the simulator (N0 random pool images, the same
draw as `start.py simulate`) trained with each recipe and evaluated on the whole val split, against the untrained
start weights at the same image size. Prints one table; --json keeps it.

    .venv/bin/python -m benchmarks.recipe --data ../shared/data/highway/data.yaml \\
        --set class_names=bus,car,motorcycle,person,truck --initial 100 --img-size 320 \\
        --recipe template:epochs=5 --recipe "sgd-frozen:epochs=5,optimizer=SGD,lr0=0.002,freeze=10" --out /tmp/recipes

A recipe is NAME:KEY=VALUE,... over the training template (args_options takes Ultralytics' own keys, with
spaces: args_options=val=False warmup_epochs=0). Each recipe's model is evaluated once by the simulator's own
evaluation (executor.simulate.rounds.QuarryTrainer), so the numbers are those a simulation's round 0 shows.
"""
import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from executor.runtime import prepare_process_env  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a data.yaml or a ymir data folder, as for start.py simulate")
    p.add_argument("--weights", default=os.path.join(REPO, "..", "shared", "weights", "yolov8n.pt"))
    p.add_argument("--initial", type=int, default=100, help="N0: random pool images to train on")
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of every recipe")
    p.add_argument("--recipe", action="append", required=True, metavar="NAME:KEY=VALUE,...")
    p.add_argument("--out", required=True, help="a work folder (one subfolder per recipe)")
    p.add_argument("--json", help="write the table here as JSON")
    return p.parse_args(argv)


def recipe_settings(spec: str) -> tuple[str, dict]:
    """'name:k=v,k=v' → (name, {k: v}) with values read as YAML (args_options keeps its spaces)."""
    import yaml

    name, _, body = spec.partition(":")
    settings = {}
    for item in (part for part in body.split(",") if part.strip()):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--recipe {spec!r}: {item!r} is not KEY=VALUE")
        settings[key.strip()] = value if key.strip() == "args_options" else yaml.safe_load(value)
    return name.strip(), settings


def main(argv=None) -> int:
    args = parse_args(argv)
    prepare_process_env()
    from executor.simulate.plan import parse_sets, prepare_data
    from executor.simulate.rounds import QuarryTrainer, evaluate_start, initial_draw

    base = {"img_size": args.img_size, **parse_sets(args.set)}
    os.makedirs(args.out, exist_ok=True)
    data = prepare_data(args.data, args.out, base)
    images = initial_draw(data, args.seed, args.initial)
    start = evaluate_start(args.weights, data, base)
    rows = [{"recipe": "start weights (no training)", "mAP50": start and start["mAP50"],
             "mAP50_95": start and start["mAP50_95"], "train_s": 0.0}]
    for spec in args.recipe:
        name, settings = recipe_settings(spec)
        folder = os.path.join(args.out, name)
        os.makedirs(folder, exist_ok=True)
        started = time.monotonic()
        trained = QuarryTrainer(data, {**base, **settings}, args.weights)(folder, images, args.seed, lambda f: None)
        rows.append({"recipe": name, "settings": settings, "mAP50": round(trained.mAP50, 4),
                     "mAP50_95": round(trained.mAP50_95, 4), "train_s": round(trained.train_s, 1),
                     "round_s": round(time.monotonic() - started, 1)})
        print(f"{name:24s} mAP50 {trained.mAP50:.4f}  mAP50-95 {trained.mAP50_95:.4f}  train {trained.train_s:.0f} s",
              flush=True)
    print(f"\n{len(images)} images of {args.data} (seed {args.seed}), img_size {args.img_size}")
    print(f"{'recipe':28s} {'mAP50':>7s} {'mAP50-95':>9s} {'train s':>8s}")
    for row in rows:
        value = lambda key: "-" if row[key] is None else f"{row[key]:.4f}"
        print(f"{row['recipe']:28s} {value('mAP50'):>7s} {value('mAP50_95'):>9s} {row['train_s']:>8.0f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"data": args.data, "initial": args.initial, "img_size": args.img_size, "seed": args.seed,
                       "images": len(images), "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
