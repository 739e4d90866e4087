"""start.py audit: the likely mistakes of a labelled set (missing, spurious and duplicate boxes, wrong classes, poor
boxes), found by a model's predictions and ranked worst first, written to audit.json and audit.csv.

The labelled set is read by executor/protocol/labelled.py (as fit-errors reads it); executor/pipeline/label_audit.py
runs the one forward and writes the files; mining/audit.py decides what is a finding.
"""

import argparse
import logging
import os

from executor.cli.flags import UsageError, add_config_flags

log = logging.getLogger(__name__)
DEFAULT_OUT = "audit.json"
SHOWN = 5  # the worst findings printed

DESCRIPTION = """\
Find the likely mistakes in a labelled set before a model is trained on them, ranked most likely wrong first:
  missing     a confident prediction that no labelled box of its class covers (fix: add the box)
  wrong_class a labelled box a confident prediction of another class lies on, its own class unsupported
              (fix: change the class)
  poor_box    a labelled box the model does not back where it is drawn, a confident prediction of its class
              overlapping it only partly (fix: replace the box with the prediction's)
  spurious    a labelled box the model sees nothing on: no prediction of any class overlapping it reaches {spurious}
              (fix: delete the box)
  duplicate   two boxes of one class on one object (fix: delete the second)
Each finding has a score in [0, 1], the evidence (the prediction, its confidence, the IoU) and where the box is
written (file and line). A model audits best the images it did NOT train on: its val or test split, or newly
labelled images; on its training images it repeats the labels' mistakes.

--data takes what fit-errors takes: a data.yaml (the --split key, val by default), a YOLO folder, a COCO json or a
ymir index .tsv; the data's classes are matched to the model's by name, after --class-map renames them (without
it, a coco_names.txt beside the data is read when the names alone do not match); a class the model lacks is an
error.
Predictions of classes no box in the set has (a COCO model's benches on a VOC set) accuse no label.
Written: --out (audit.json: every finding, counts per type and class, the model, the data, the settings) and
audit.csv beside it (one row per finding), both or neither; then the page (--html, default audit.html beside
--out: the worst findings of each type as thumbnails, labelled boxes solid green, the prediction dashed orange,
the box a finding is about bold; --no-html: none), whose failure is only a warning. --export-fixes DIR writes the
fixes of the findings of --fix-types (all but spurious unless told) scoring at least --fix-min-score into a new
folder: a corrected copy of the YOLO label files or of the COCO json (the originals are never touched, images are
not copied), fixes.csv and README.txt.
The pass runs as mining's does: in shards (--shards, removed once the audit is written unless --keep-shards), on
every GPU of --gpu-id (or --set cpu_processes=N CPU workers), and a rerun of the same command after a kill or
Ctrl-C audits only the shards not finished (a shard whose model, settings or labels changed is audited again).
--folds K cross-fits: K models trained from --model with the training template (each on all folds but one, in the
model's classes), each fold audited by the model that did not train on it; the findings say their fold, the
audit.json the folds' models and held-out mAP50. A rerun reuses the folds' finished models (--fold-dir).

example:
  start.py audit --data data.yaml --split val --model runs/detect/train/weights/best.pt --out audit.json
  start.py audit --data data.yaml --model best.pt --export-fixes fixes --fix-min-score 0.7
  start.py audit --data data.yaml --split train --model yolov8n.pt --folds 5 --set epochs=30 --out audit.json
"""


def add_parser(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`audit` and its flags; the model's settings default to those of the active mining template."""
    from executor.cli.fit_errors import add_class_map_flag
    from executor.pipeline.fix_export import FIX_MIN_SCORE, FIX_TYPES
    from executor.protocol.labelled import SPLITS
    from executor.protocol.templates import load_template
    from mining.audit import CONFIDENT_CONF, SPURIOUS_MAX_SUPPORT, SUPPORT_CONF

    cmd = sub.add_parser("audit", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                         help="find the likely mistakes in a labelled set (missing, wrong, sloppy, spurious, "
                              "duplicate boxes)", description=DESCRIPTION.format(spurious=SPURIOUS_MAX_SUPPORT))
    cmd.add_argument("--data", required=True,
                     help="the labelled set: a data.yaml, a YOLO folder, a COCO .json or a ymir index .tsv")
    cmd.add_argument("--model", "--weights", dest="weights", required=True,
                     help="the model's Ultralytics .pt checkpoint")
    cmd.add_argument("--split", choices=SPLITS, help="with a data.yaml: the split to audit (default val)")
    cmd.add_argument("--out", default=DEFAULT_OUT,
                     help=f"the audit's .json (default {DEFAULT_OUT}); the .csv is written beside it")
    cmd.add_argument("--html", help="the audit's page (default: --out with .html)")
    cmd.add_argument("--no-html", action="store_true", help="write no page")
    cmd.add_argument("--export-fixes", metavar="DIR",
                     help="write the suggested fixes into this new folder: corrected copies of the YOLO label files "
                          "or of the COCO json (originals untouched), fixes.csv, README.txt")
    cmd.add_argument("--fix-types", default=",".join(FIX_TYPES), metavar="TYPE,...",
                     help="--export-fixes applies the fixes of these finding types (default %(default)s: spurious "
                          "boxes are often real objects the model cannot see; add it to delete them too)")
    cmd.add_argument("--fix-min-score", type=float, default=FIX_MIN_SCORE,
                     help="--export-fixes applies the fixes of findings scoring at least this; the others are only "
                          f"listed in fixes.csv (default {FIX_MIN_SCORE})")
    cmd.add_argument("--shards", metavar="DIR",
                     help="where the audit's shards are kept while it runs (default: --out without .json, plus "
                          ".shards): a rerun of the same command after a kill audits only the shards not finished")
    cmd.add_argument("--keep-shards", action="store_true",
                     help="keep the shards after the audit is written (by default they are removed)")
    cmd.add_argument("--folds", type=int, default=0, metavar="K",
                     help="cross-fit: train K models from --model, each on all but one K-th of the images (the "
                          "training template, --set epochs=..., the training keys), and audit each K-th with the "
                          "model that never saw it (K trainings; 0: audit with --model itself, the default)")
    cmd.add_argument("--fold-seed", type=int, default=0, help="--folds: the seed of the folds' shuffle (default 0)")
    cmd.add_argument("--fold-dir", metavar="DIR",
                     help="--folds: where the folds' labels and models are kept (default: --out without .json, plus "
                          ".folds); a rerun retrains only the folds whose images, labels or settings changed")
    cmd.add_argument("--conf", type=float, default=CONFIDENT_CONF,
                     help="a prediction at least this confident is evidence of a mistake (missing, wrong class, poor "
                          f"box) (default {CONFIDENT_CONF})")
    cmd.add_argument("--low-conf", type=float, default=SUPPORT_CONF,
                     help="predictions down to this confidence are read: what the model sees on each labelled box "
                          f"(default {SUPPORT_CONF})")
    add_class_map_flag(cmd)
    add_config_flags(cmd, "audit", load_template("mining"))
    cmd.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="any other mining template key, e.g. --set iou_thres=0.6; with --folds, training template "
                          "keys too, e.g. --set epochs=30")
    return cmd


def csv_path(json_path: str) -> str:
    return os.path.splitext(json_path)[0] + ".csv"


def shards_folder(args) -> str:
    return args.shards or os.path.splitext(args.out)[0] + ".shards"


def html_path(args) -> str:
    """The page's path ('' with --no-html)."""
    return "" if args.no_html else (args.html or os.path.splitext(args.out)[0] + ".html")


def check(args) -> None:
    """What can be checked before the model is loaded: the files, --split, --out, the confidences."""
    from executor.cli.fit_errors import check_class_map
    from executor.protocol.labelled import YAML_SUFFIXES

    if not os.path.isfile(args.weights):
        raise UsageError(f"--model {args.weights}: no such file (weights are never downloaded)")
    if not args.weights.lower().endswith((".pt", ".pth")):
        raise UsageError(f"--model {args.weights}: audit needs the Ultralytics .pt checkpoint")
    if not os.path.exists(args.data):
        raise UsageError(f"--data {args.data}: no such file or folder")
    check_class_map(args)
    if args.split and not args.data.lower().endswith(YAML_SUFFIXES):
        raise UsageError(f"--split {args.split}: only a data.yaml has splits; --data {args.data} is read whole")
    if not 0 < args.low_conf <= args.conf < 1:
        raise UsageError(f"--low-conf {args.low_conf:g} and --conf {args.conf:g}: need 0 < --low-conf <= --conf < 1")
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a folder; give a file name, e.g. {os.path.join(args.out, DEFAULT_OUT)}")
    if not args.out.lower().endswith(".json"):
        raise UsageError(f"--out {args.out}: the audit is a .json file (its .csv is written beside it)")
    for path in (args.out, csv_path(args.out), html_path(args)):
        if path and os.path.realpath(path) in (os.path.realpath(args.data), os.path.realpath(args.weights)):
            raise UsageError(f"--out {args.out}: {path} would replace the data or the model")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"--out {args.out}: the folder {folder} does not exist or is not writable")
    check_html(args)
    if args.folds and args.folds < 2:
        raise UsageError(f"--folds {args.folds}: at least 2 (or 0 for no cross-fitting)")
    if args.export_fixes:
        check_export(args)


def check_html(args) -> None:
    from executor.cli.flags import check_output_file

    if args.html and args.no_html:
        raise UsageError("--html and --no-html contradict each other")
    if args.html:
        check_output_file("--html", args.html)
        if os.path.realpath(args.html) in (os.path.realpath(args.out), os.path.realpath(csv_path(args.out))):
            raise UsageError(f"--html {args.html}: that is the audit's .json or .csv")


def check_export(args) -> None:
    """--export-fixes: a new (or empty) folder outside the data's, of YOLO labels or a COCO json."""
    from executor.protocol.labelled import INDEX_SUFFIXES
    from mining.audit import TYPES

    target = os.path.abspath(args.export_fixes)
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise UsageError(f"--export-fixes {args.export_fixes} exists and is not an empty folder; give a new one")
    if not 0 <= args.fix_min_score <= 1:
        raise UsageError(f"--fix-min-score {args.fix_min_score:g}: a score in [0, 1]")
    unknown = [kind for kind in fix_types(args) if kind not in TYPES]
    if unknown or not fix_types(args):
        raise UsageError(f"--fix-types {args.fix_types}: a comma-separated list of {', '.join(TYPES)}")
    if os.path.isfile(args.data) and args.data.lower().endswith(INDEX_SUFFIXES):
        raise UsageError(f"--export-fixes: writes YOLO label files or a COCO json; --data {args.data} is a ymir index")
    data = args.data if os.path.isdir(args.data) else os.path.dirname(os.path.abspath(args.data))
    check_outside("--export-fixes", target, os.path.realpath(data))
    parent = os.path.dirname(target)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UsageError(f"--export-fixes {args.export_fixes}: the folder {parent} does not exist or is not writable")


def fix_types(args) -> list[str]:
    return [kind.strip() for kind in args.fix_types.split(",") if kind.strip()]


def check_outside(flag: str, target: str, data_folder: str) -> None:
    real = os.path.realpath(target)
    if real == data_folder or real.startswith(data_folder.rstrip(os.sep) + os.sep):
        raise UsageError(f"{flag} {target} is inside the data's folder {data_folder}; give a folder outside it")


def audit(args, config: dict, progress) -> int:
    """Read the labelled set in the model's classes, audit it, write both files, print the worst; returns 0."""
    from executor.cli.fit_errors import model_facts
    from executor.engine.images import round_up
    from executor.pipeline.audit_report import write_audit_page
    from executor.pipeline.audit_shards import AuditPass, run_audit
    from executor.pipeline.label_audit import settings_record, write_audit
    from executor.protocol.labelled import read_labelled_set
    from executor.protocol.settings import build_settings
    from executor.runtime import cpu_threads

    names, stride = model_facts(args.weights)
    samples, labelled = read_labelled_set(args.data, names, split_read(args) or "val", args.class_map)
    source = labelled.source
    for folder in set_folders(labelled) if args.export_fixes else ():
        check_outside("--export-fixes", os.path.abspath(args.export_fixes), folder)
    settings = build_settings("mining", config)
    settings = settings.replace(cpu_threads=cpu_threads(settings.cpu_threads))
    run = AuditPass(args.weights, settings, tuple(samples), args.conf, args.low_conf, shards_folder(args))
    progress = progress(len(samples))
    try:
        if args.folds:
            found, folds = audit_by_folds(args, config, samples, names, settings, progress)
        else:
            found, folds = run_audit(run, names, progress, args.keep_shards), []
    finally:
        progress.close()
    trained_on = "" if args.folds else training_data(args.weights)
    about = {"model": {"weights": os.path.abspath(args.weights), "classes": list(names),
                       **({"folds": folds} if folds else {"trained_on": trained_on})},
             "data": {"spec": os.path.abspath(args.data), "source": source, "split": split_read(args),
                      "in_training_set": False if args.folds else in_training_set(args, trained_on)},
             "settings": settings_record(args.conf, args.low_conf, round_up(settings.img_size, stride),
                                         settings.iou_thres)}
    write_audit(found, about, args.out, csv_path(args.out))
    page = html_path(args) if html_path(args) and write_audit_page(found, samples, about, html_path(args),
                                                                    args.out) else ""
    print(summary(found, source, args.weights, args.out, csv_path(args.out), page))
    if args.export_fixes:
        from executor.pipeline.fix_export import export_fixes

        applied = export_fixes(args.export_fixes, found, samples, labelled, args.fix_min_score, fix_types(args))
        print(f"  suggested fixes: {applied} of {len(found.findings)} applied ({args.fix_types}, score >= "
              f"{args.fix_min_score:g}) "
              f"in {args.export_fixes} (README.txt, fixes.csv); the original labels are unchanged")
    return 0


def training_data(weights: str) -> str:
    """The data.yaml an Ultralytics checkpoint says it was trained on ('' when it says none)."""
    from ultralytics.nn.tasks import torch_safe_load

    try:
        checkpoint, _ = torch_safe_load(weights)
    except Exception:  # noqa: BLE001 — the model itself loaded: this is only a hint
        return ""
    return str((checkpoint.get("train_args") or {}).get("data") or "")


def in_training_set(args, trained_on: str) -> bool | None:
    """Whether the model trained on the audited images, when it can be known: its checkpoint names this very
    data.yaml, whose train split Ultralytics trains on (the val split only picks the best epoch); None otherwise.
    A model repeats its training labels' mistakes, so an in-sample audit is said loudly."""
    same = bool(trained_on) and os.path.isfile(trained_on) and split_read(args) is not None and \
        os.path.realpath(trained_on) == os.path.realpath(args.data)
    if not same:
        log.info("the model says it trained on %s: whether that includes these images is unknown (a model "
                 "audits best images it did not train on; --folds K trains its own)", trained_on or "nothing known")
        return None
    if split_read(args) == "train":
        log.warning("the model trained on these very images (%s key 'train'): its audit is in-sample and misses "
                    "the mistakes it learnt; audit the val split, or cross-fit with --folds K", args.data)
    return split_read(args) == "train"


def audit_by_folds(args, config: dict, samples, names, settings, progress):
    """(audit, per fold what made its model) of --folds: each fold audited, as without folds, by a model trained
    from --model on the other folds (executor/pipeline/audit_folds.py)."""
    from executor.pipeline import audit_folds
    from executor.pipeline.audit_shards import AuditPass, run_audit

    folder = fold_folder(args)

    def audit_fold(weights, held, number, progress):
        run = AuditPass(weights, settings, tuple(held), args.conf, args.low_conf,
                        os.path.join(folder, f"fold-{number}", "shards"))
        return run_audit(run, names, progress, args.keep_shards, split=f"fold {number}")

    train = audit_folds.fold_trainer(config, names, args.weights)
    return audit_folds.cross_fit(samples, args.folds, args.fold_seed, folder, args.weights, config, train,
                                 audit_fold, progress)


def fold_folder(args) -> str:
    return args.fold_dir or os.path.splitext(args.out)[0] + ".folds"


def set_folders(labelled) -> list[str]:
    """The folders of the set's images and annotation files, and the deepest one holding them all unless that is
    the file system's root."""
    folders = sorted({os.path.realpath(os.path.dirname(os.path.abspath(path)))
                      for row in labelled.rows for path in row[:2] if path})
    common = os.path.commonpath(folders) if folders else ""
    return folders + ([common] if common and common != os.path.dirname(common) else [])


def split_read(args) -> str | None:
    """The data.yaml key read (None: the set was read whole)."""
    from executor.protocol.labelled import YAML_SUFFIXES

    return (args.split or "val") if args.data.lower().endswith(YAML_SUFFIXES) else None


def summary(found, source: str, weights: str, json_path: str, csv_file: str, page: str = "") -> str:
    from executor.pipeline.label_audit import fix_text

    counts = found.counts()["by_type"]
    lines = [f"label audit of {found.images} images ({found.boxes} boxes) of {source} with {weights}: "
             f"{len(found.findings)} findings",
             "  " + ", ".join(f"{kind} {n}" for kind, n in counts.items())]
    for item in found.findings[:SHOWN]:
        f = item.finding
        lines.append(f"  {f.score:.2f} {f.kind} '{found.name(f.cls)}' {item.where or item.image}: "
                     f"{fix_text(found, item)}")
    lines.append(f"  written to {json_path} and {csv_file}" + (f"; the page {page}" if page else ""))
    return "\n".join(lines)
