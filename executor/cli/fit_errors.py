"""start.py fit-errors: fit the error model of weights trained elsewhere (mining/errors.py) on a labelled set it did
not train on, and write it where `mine --algorithm errors` finds it: `<stem>.errors.json` beside the weights.

The labelled set is read by executor/protocol/labelled.py (data.yaml split, YOLO folder, COCO json or ymir index,
classes matched to the model's by name); executor/pipeline/error_fit.py fits and writes the file.
"""

import argparse
import logging
import os

from executor.cli.flags import UsageError, add_config_flags

log = logging.getLogger("quarry")

DESCRIPTION = """\
Fit the error model that `mine --algorithm errors` reads: where this detector makes false positives and misses
objects, learnt from labelled images. It is written beside the weights as <stem>.errors.json (best.pt →
best.errors.json), where mining finds it; without one, errors mining uses its prior (1 - confidence).

Fit it on labelled images the model did NOT train on: its val or test split, or newly labelled images. Never on
its training images: there the model makes few errors, and an error model fitted on them underestimates its
errors everywhere else. Fit at the --imgsz you will mine with; the file keeps --conf (and max_det,
errors_conf_thres), and mining reads the boxes at those.

--data takes a data.yaml (the --split key: val by default, or test), a YOLO folder (images/ and labels/ side by
side, or images with their .txt labels beside them; class names from a classes.txt/names.txt in it, else the
label ids are the model's class indices), a COCO json (its images in an images/ folder beside it, or beside it),
or a ymir index .tsv (image<TAB>annotation). The data's classes are matched to the model's by name (case-insensitive),
after --class-map renames them (without it, a coco_names.txt beside the data is read when the names alone do not
match); a class the model lacks is an error. Images without labels count as negatives: nothing there.

example:
  start.py fit-errors --data data.yaml --split val --model runs/detect/train/weights/best.pt --imgsz 640
  start.py mine --model runs/detect/train/weights/best.pt --algorithm errors --source new/ --out ranked.tsv
"""


def add_parser(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`fit-errors` and its flags; the defaults in the help are those of the active mining template."""
    from executor.protocol.labelled import SPLITS
    from executor.protocol.templates import load_template

    cmd = sub.add_parser("fit-errors", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                         help="fit a model's error model (for mine --algorithm errors) on labelled images it did "
                              "not train on", description=DESCRIPTION)
    cmd.add_argument("--data", required=True,
                     help="labelled images the model did not train on: a data.yaml, a YOLO folder, a COCO .json or "
                          "a ymir index .tsv")
    cmd.add_argument("--model", "--weights", dest="weights", required=True,
                     help="the model's Ultralytics .pt checkpoint")
    cmd.add_argument("--split", choices=SPLITS,
                     help="with a data.yaml: the split to fit on (default val; never the one the model trained on)")
    cmd.add_argument("--out", help="where to write the error model (default: <model stem>.errors.json beside the "
                                   "model, the only place mining looks; an existing file is replaced)")
    add_class_map_flag(cmd)
    add_config_flags(cmd, "fit-errors", load_template("mining"))
    cmd.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="any other mining template key, e.g. --set errors_conf_thres=0.005 --set max_det=300")
    return cmd


def out_path(args) -> str:
    from mining.errors import errors_file

    return args.out or errors_file(args.weights)


def check(args) -> None:
    """What can be checked before the model is loaded: the files, --split, --out."""
    from executor.protocol.labelled import YAML_SUFFIXES

    if not os.path.isfile(args.weights):
        raise UsageError(f"--model {args.weights}: no such file (weights are never downloaded)")
    if not args.weights.lower().endswith((".pt", ".pth")):
        raise UsageError(f"--model {args.weights}: fit-errors needs the Ultralytics .pt checkpoint (mining an ONNX "
                         "export of it reads the same <stem>.errors.json when the two lie side by side)")
    if not os.path.exists(args.data):
        raise UsageError(f"--data {args.data}: no such file or folder")
    check_class_map(args)
    if args.split and not args.data.lower().endswith(YAML_SUFFIXES):
        raise UsageError(f"--split {args.split}: only a data.yaml has splits; --data {args.data} is read whole")
    out = out_path(args)
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a folder; give a file name, e.g. {os.path.join(out, 'best.errors.json')}")
    if out.lower().endswith((".pt", ".pth", ".onnx", ".yaml", ".yml")) or \
            os.path.realpath(out) == os.path.realpath(args.weights):
        raise UsageError(f"--out {out}: the error model is a .json file (it would replace a model or dataset file)")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"--out {out}: the folder {folder} does not exist or is not writable")


def add_class_map_flag(cmd: argparse.ArgumentParser) -> None:
    """--class-map, shared by the commands that read a labelled set (fit-errors, audit)."""
    cmd.add_argument("--class-map", metavar="FILE",
                     help="rename the data's classes to the model's first: 'data_class<TAB>model_class' per line, "
                          "the data class a name or an index (as the shared sets' coco_names.txt); default: a "
                          "coco_names.txt beside the data when the names alone do not match")


def check_class_map(args) -> None:
    if args.class_map and not os.path.isfile(args.class_map):
        raise UsageError(f"--class-map {args.class_map}: no such file")


def model_class_names(weights: str) -> list[str]:
    """The class names of an Ultralytics checkpoint, in class-index order."""
    return model_facts(weights)[0]


def model_facts(weights: str) -> tuple[list[str], int]:
    """The class names of an Ultralytics checkpoint, in class-index order, and its largest stride (its input
    sizes are multiples of it)."""
    from executor.engine.torch_detector import load_torch_model

    _, names, strides, _, _ = load_torch_model(weights)
    return names, max(strides)


def fit_errors(args, config: dict, progress) -> int:
    """Read the labelled set in the model's classes, fit, write, print what the model learnt; returns 0."""
    from executor.pipeline.error_fit import fit_weights
    from executor.protocol.labelled import read_labelled
    from mining.errors import errors_file, read_error_model

    names = model_class_names(args.weights)
    samples, source = read_labelled(args.data, names, args.split or "val", args.class_map)
    out = out_path(args)
    if os.path.exists(out):
        log.info("%s exists: it is replaced (atomically) by the new fit", out)
    progress = progress(len(samples))
    try:
        path = fit_weights(args.weights, samples, source, config, progress, out=out)
    finally:
        progress.close()
    model = read_error_model(path)
    print(summary(model, args.weights, path, errors_file(args.weights)))
    return 0


def summary(model, weights: str, path: str, beside: str) -> str:
    on = model.fitted_on
    own = [model.class_names[k] if k < len(model.class_names) else str(k) for k in sorted(model.box_per_class)]
    rest = len(model.class_names) - len(own)
    lines = [f"error model of {weights}: fitted on {on.get('images')} images of {on.get('source')}",
             f"  kept boxes (conf > {model.conf_thres:g}, at most {model.max_det} per image): {on.get('boxes')}, "
             f"false positives {on.get('false_positives')}, missed objects {on.get('misses')}",
             ("  own false-positive model: " + ", ".join(own) + f"; the other {rest} classes share one")
             if own else f"  one false-positive model shared by all {len(model.class_names)} classes (no class had "
                         "enough right and wrong boxes for its own)",
             f"  written to {path}"]
    if os.path.abspath(path) == os.path.abspath(beside):
        lines.append(f"  mine --model {weights} --algorithm errors reads it")
    else:
        lines.append(f"  mining reads only {beside} (beside the model): copy it there to use it")
    return "\n".join(lines)
