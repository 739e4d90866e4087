"""The local command line: `start.py mine|infer|make-in|fit-errors|audit …` for people with a folder of images and no
platform.

Names an Ultralytics user already types (--model, --source, --imgsz, --conf, --iou, --device, --batch) stand
beside Quarry's own. Everything is checked before the first image is read: paths, ranges, flags that need
each other. Usage errors exit 2 (argparse's convention), failures 1, an interrupt 130; messages name the flag
typed, not the config key behind it, and platform error codes stay in platform mode.
"""

import argparse
import glob
import logging
import os
import shutil
import sys

from executor import __version__
from executor.cli.labelstudio import DEFAULT_DOCUMENT_ROOT, LOCAL_FILES_PREFIX
from executor.cli.flags import (DIVERSE_FLAGS, FLAG_OF, UsageError, add_config_flags, check_output_file, flag_values,
                                requested_tasks, set_values)

log = logging.getLogger("quarry")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".unknown")
FORMATS = ("ymir", "coco", "yolo", "labelstudio")
FILE_SUFFIXES = (".json", ".txt", ".tsv", ".csv", ".yaml", ".yml", ".xml")  # not a folder for --format yolo


# ---------------------------------------------------------------- the parser

def common_flags() -> argparse.ArgumentParser:
    """Flags every subcommand takes, anywhere on the line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("--version", action="version", version=f"quarry {__version__}")
    return common


def add_model_flags(cmd: argparse.ArgumentParser, command: str) -> None:
    """The flags of mine and infer; their defaults in the help are those of the active templates of the task."""
    from executor.protocol.templates import load_template

    cmd.add_argument("--model", "--weights", dest="weights",
                     help="model file: an Ultralytics .pt or its ONNX export (a path: weights are never downloaded)")
    cmd.add_argument("--source", "--images", dest="images", required=True,
                     help="a folder (searched recursively), a glob in quotes, or a .txt/.tsv list of paths")
    cmd.add_argument("--out", required=True, help="output file (.tsv ranking for mine; .json, or a folder for "
                                                  "--format yolo, for infer)")
    add_config_flags(cmd, command, load_template("mining" if command == "mine" else "infer"))
    cmd.add_argument("--format", choices=FORMATS, default="ymir",
                     help="detections as ymir infer-result JSON (default), a COCO dataset JSON (CVAT imports it as "
                          "COCO 1.0), YOLO txt labels per image mirroring the source tree (a folder), or Label Studio "
                          "tasks with predictions (and their labelling config beside them)" if command == "infer" else
                     "format of --infer-out (default ymir; labelstudio: the tasks in ranking order, each with its "
                     "mining rank and score)")
    cmd.add_argument("--ls-url-prefix", metavar="URL", help="labelstudio: what each image's URL starts with, before its path "
                     "relative to --ls-document-root (default Label Studio's local files, "
                     f"{LOCAL_FILES_PREFIX!r})")
    cmd.add_argument("--ls-document-root", metavar="DIR", help="labelstudio: the folder image paths are relative to in their URLs "
                     "(Label Studio's LOCAL_FILES_DOCUMENT_ROOT, or the folder the --ls-url-prefix server serves; "
                     f"default {DEFAULT_DOCUMENT_ROOT!r}, Label Studio's default)")
    cmd.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="any other template key, e.g. --set class_distribution_scores=1,1,0.5")


def build_parser(extra_commands=()) -> argparse.ArgumentParser:
    """The parser of the whole command line; `extra_commands`: callables adding more subcommands."""
    common = common_flags()
    parser = argparse.ArgumentParser(prog="quarry", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Quarry: mining, inference and training for YMIR platforms and "
                                                 "local folders. With no subcommand: platform mode (/in → /out).")
    parser.add_argument("--env", default=None, help="platform mode: env.yaml to read (default /in/env.yaml)")
    sub = parser.add_subparsers(dest="command")
    mine = sub.add_parser("mine", parents=[common], help="rank local images, most worth labelling first",
                          description="Rank local images, most worth labelling first.")
    add_model_flags(mine, "mine")
    mine.add_argument("--topk", type=int, help="also write the K best paths to OUT.topK.txt")
    mine.add_argument("--select-dir", help="with --topk: copy the K best images into this (empty) folder")
    mine.add_argument("--link", action="store_true", help="with --select-dir: symlink instead of copying")
    mine.add_argument("--exist-ok", action="store_true", help="with --select-dir: replace a folder that is not empty")
    mine.add_argument("--infer-out", help="also write the detections of the same pass to this file (see --format)")
    mine.add_argument("--labeled", help="diverse: images already labelled (folder, glob or list): their "
                                        "near-copies in the pool go down")
    mine.add_argument("--report", help="the mining report (default OUT.report.html, its numbers in .json beside)")
    mine.add_argument("--no-report", action="store_true", help="write no report")
    mine.add_argument("--raw-scores", help="diverse: every image's raw algorithm score (default OUT.scores.tsv)")
    mine.add_argument("--drop-shards", action="store_true",
                      help="remove OUT.shards/ after the merge (by default the scores stay, so running again with "
                           "other selection or report flags re-selects in seconds without scoring again)")
    infer = sub.add_parser("infer", parents=[common], help="detect objects in local images",
                           description="Detect objects in local images.")
    add_model_flags(infer, "infer")
    make_in = sub.add_parser("make-in", parents=[common], help="write a platform /in folder from local files, to "
                             "rehearse platform mode with start.py --env IN/env.yaml")
    make_in.add_argument("--task", choices=("mining", "infer", "training"), required=True)
    make_in.add_argument("--images", "--source", dest="images", required=True, help="folder, glob or list of images")
    make_in.add_argument("--labels", help="training: folder of YOLO label txt files (same relative paths as the "
                                          "images, or Ultralytics' images/ → labels/ layout)")
    make_in.add_argument("--names", help="training: class names, comma-separated (default: from --data-yaml)")
    make_in.add_argument("--weights", "--model", dest="weights", help="model file copied to IN/models")
    make_in.add_argument("--out", required=True, help="the /in folder to write (an empty or new folder)")
    make_in.add_argument("--set", action="append", metavar="KEY=VALUE", help="config.yaml value over the template")
    from executor.cli.audit import add_parser as add_audit
    from executor.cli.fit_errors import add_parser as add_fit_errors

    add_fit_errors(sub, common)
    add_audit(sub, common)
    for add in extra_commands:
        add(sub, common)
    return parser


# ---------------------------------------------------------------- checks before the first image

def list_images(spec: str) -> tuple[list[str], list[str]]:
    """(paths, names): a folder (recursively; names relative to it), a glob (names relative to its fixed part),
    or a list file (names as listed). A missing path and an empty folder are different errors."""
    if os.path.isfile(spec) and spec.lower().endswith((".txt", ".tsv")):
        from executor.protocol.index import read_candidate_index

        paths = list(read_candidate_index(spec, relative_to_index=True))  # the names are a list anyway
        base = os.path.dirname(os.path.abspath(spec))
        return paths, [os.path.relpath(p, base) if p.startswith(base + os.sep) else p for p in paths]
    if os.path.isdir(spec):
        paths = sorted(os.path.join(root, name) for root, _, names in os.walk(spec) for name in names
                       if name.lower().endswith(IMAGE_SUFFIXES))
        if not paths:
            raise UsageError(f"--source {spec}: the folder holds no images ({', '.join(IMAGE_SUFFIXES[:-1])})")
        return paths, [os.path.relpath(p, spec) for p in paths]
    if not glob.has_magic(spec):
        raise UsageError(f"--source {spec}: no such file or folder")
    paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    if not paths:
        raise UsageError(f"--source {spec}: the pattern matches no files")
    fixed = spec[:min((spec.find(c) for c in "*?[" if c in spec))]
    base = fixed if fixed.endswith(os.sep) else os.path.dirname(fixed)
    return paths, [os.path.relpath(p, base or ".") for p in paths]


def check_output_folder(flag: str, path: str, exist_ok: bool) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a file; give a folder")
    if os.path.isdir(path) and os.listdir(path) and not exist_ok:
        raise UsageError(f"{flag} {path} is not empty; choose a new folder or add --exist-ok to replace it")
    parent = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path.rstrip(os.sep)))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: {parent} does not exist or is not writable")


def check_weights(args, needs_model: bool) -> None:
    if not needs_model:
        if args.weights:
            log.warning("--model %s is not used: this algorithm needs no model (and selection diverse is off)", args.weights)
        return
    if not args.weights:
        raise UsageError("--model is required: give a weights file (.pt or .onnx)")
    if not os.path.isfile(args.weights):
        hint = (" (weights are never downloaded: give the path of a local file, e.g. "
                "../shared/weights/yolov8n.pt)") if os.sep not in args.weights else ""
        raise UsageError(f"--model {args.weights}: no such file{hint}")


def config_of(args, templates: str | None = None) -> dict:
    """The flags as config keys (the templates of `templates`, default the active ones, give every default, as in
    platform mode), checked: a bad value names the flag."""
    from executor.errors import ConfigError
    from executor.pipeline.plan import check_augment
    from executor.protocol.settings import build_settings

    config = flag_values(args)
    if getattr(args, "no_report", False):
        config["report"] = False
    if args.weights:
        config["model_params_path"] = [os.path.abspath(args.weights)]
    tasks = requested_tasks(args)
    config.update(set_values(args.set, tasks))
    for task in tasks:
        try:
            settings = build_settings(task, config, templates)
            if task == "infer":
                check_augment(settings, args.weights or "")
        except ConfigError as exc:
            message = str(exc)
            for key, flag in FLAG_OF.items():
                message = message.replace(f"config key '{key}'", flag)
            raise UsageError(message) from None
    return config


def check_label_folder(flag: str, path: str) -> None:
    """--format yolo writes a folder of label files: a name like x.json asks for a file."""
    stem, suffix = os.path.splitext(path)  # a trailing / says "a folder": no suffix
    if suffix.lower() in FILE_SUFFIXES and not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: --format yolo writes a folder of label files (one .txt per image); give a "
                         f"folder, e.g. {stem}/, or --format coco for one file")
    check_output_folder(flag, path, True)


def segmentation_family(templates: str | None) -> bool:
    """The templates (default: the active ones) serve segmentation models."""
    from executor.protocol.templates import active_templates_dir, manifest_object_type
    from executor.shared import SEGMENTATION

    return manifest_object_type(templates or active_templates_dir()) == SEGMENTATION


def check_yolo_boxes(templates: str | None) -> None:
    if segmentation_family(templates):
        raise UsageError("--format yolo writes boxes; a segmentation model's masks are written with --format ymir "
                         "or coco (the COCO result with RLE masks)")


def check_labelstudio(args, paths: list[str]) -> None:
    """The --ls-* flags go with --format labelstudio, whose image URLs need every image under the document root."""
    given = [flag for flag, value in (("--ls-url-prefix", args.ls_url_prefix),
                                      ("--ls-document-root", args.ls_document_root)) if value is not None]
    if args.format != "labelstudio":
        if given:
            raise UsageError(f"{given[0]} needs --format labelstudio")
        return
    from executor.cli.labelstudio import outside_root

    root = label_studio_root(args)
    if not os.path.isdir(root):
        raise UsageError(f"--ls-document-root {root}: no such folder")
    outside = next((path for path in paths if outside_root(path, root)), None)
    if outside is not None:
        raise UsageError(f"--ls-document-root {root}: image {outside} lies outside it, so Label Studio cannot "
                         "load it from there; give a folder that holds every image")


def label_studio_root(args) -> str:
    return args.ls_document_root if args.ls_document_root is not None else DEFAULT_DOCUMENT_ROOT


def check_mine(args, pool: int, config: dict, templates: str | None) -> None:
    if args.topk is not None and not 1 <= args.topk <= pool:
        raise UsageError(f"--topk {args.topk}: choose a number from 1 to {pool} (the images found)")
    if args.select_dir and args.topk is None:
        raise UsageError("--select-dir needs --topk (how many images to select)")
    if args.link and not args.select_dir:
        raise UsageError("--link needs --select-dir")
    if args.exist_ok and not args.select_dir:
        raise UsageError("--exist-ok needs --select-dir")
    if args.select_dir:
        check_output_folder("--select-dir", args.select_dir, args.exist_ok)
    if args.augment and not args.infer_out:
        raise UsageError("--augment needs --infer-out: it augments the detections, never the mining scores")
    if args.infer_out:
        if args.format == "yolo":
            check_yolo_boxes(templates)
        check_output_file("--infer-out", args.infer_out) if args.format != "yolo" else \
            check_label_folder("--infer-out", args.infer_out)
        if os.path.abspath(args.infer_out) == os.path.abspath(args.out):
            raise UsageError("--infer-out and --out name the same file")
    diverse = config.get("selection") == "diverse"
    for flag, given in (("--labeled", args.labeled), ("--raw-scores", args.raw_scores),
                        *((FLAG_OF[key], getattr(args, key)) for key in DIVERSE_FLAGS)):
        if given is not None and not diverse:
            raise UsageError(f"{flag} needs --selection diverse")
    if args.report and args.no_report:
        raise UsageError("--report and --no-report contradict each other")
    for flag, path in (("--report", args.report), ("--raw-scores", args.raw_scores)):
        if path:
            check_output_file(flag, path)


# ---------------------------------------------------------------- running

def progress_bar(total: int):
    """A tqdm bar drawn from the first image on (not while the model loads); `.close()` ends it early."""
    from tqdm import tqdm

    state = {"bar": None}

    def progress(fraction: float) -> None:
        done = round(fraction * total)
        if state["bar"] is None:
            if done <= 0:
                return
            state["bar"] = tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr)
        bar = state["bar"]
        bar.update(done - bar.n)
        if bar.n >= total:
            bar.close()

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    progress.close = close
    return progress


def model_templates(weights: str | None) -> str | None:
    """The templates of the model's own family (a -seg checkpoint or export is a segmentation model: segmentation
    defaults, masks in the infer result); None (the active templates) without a readable model (random mining,
    or an error the loader will report)."""
    from executor.engine.loading import model_task
    from executor.protocol.templates import family_templates
    from executor.shared import OBJECT_TYPE_OF_TASK

    task = model_task(weights) if weights and os.path.isfile(weights) else None
    return family_templates(OBJECT_TYPE_OF_TASK[task]) if task in OBJECT_TYPE_OF_TASK else None


def run(args) -> int:
    """A local mine or infer command, with the templates of its model's family (or fit-errors, audit); returns the
    exit status."""
    from executor.errors import ConfigError

    if args.command in ("fit-errors", "audit"):
        return run_labelled_pass(args)
    weights = getattr(args, "weights", None)
    try:
        templates = model_templates(weights)
    except ConfigError as exc:  # e.g. an installation without this family's templates
        log.error("--model %s: %s", weights, exc)
        return 1
    return run_in_family(args, templates)


def run_in_family(args, templates: str | None) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from executor.errors import Interrupted, from_ctrl_c, one_line

    try:
        paths, names = list_images(args.images)
        if args.command == "make-in":
            from executor.cli.make_in import make_in

            make_in(args, paths, names)
            return 0
        from executor.pipeline.plan import model_needed
        from executor.protocol.settings import build_settings

        config = config_of(args, templates)
        check_weights(args, any(model_needed(task, build_settings(task, config, templates))
                                for task in requested_tasks(args)))
        check_labelstudio(args, paths)
        if args.command == "mine":
            check_output_file("--out", args.out)
            check_mine(args, len(paths), config, templates)
        elif args.format == "yolo":
            check_yolo_boxes(templates)
            check_label_folder("--out", args.out)
        else:
            check_output_file("--out", args.out)
    except UsageError as exc:
        print(f"quarry {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. an unreadable list file
        log.error("%s", one_line(exc))
        return 1
    shards = f"{args.out.rstrip(os.sep)}.shards"
    progress = progress_bar(len(paths))
    try:
        with logging_redirect_tqdm():
            return run_task(args, config, templates, paths, names, shards, progress)
    except Interrupted as exc:  # while scoring or merging: what the shards folder keeps
        progress.close()  # now, not at exit: the message stays the last line
        print(f"\n{exc}" + ("; run the same command again to resume" if exc.kept else ""), file=sys.stderr)
        return 130
    except BaseException as exc:
        if not from_ctrl_c(exc):
            if not isinstance(exc, Exception):
                raise
            log.error("%s", one_line(exc))
            log.debug("traceback", exc_info=True)
            return 1
        progress.close()
        print("\ninterrupted", file=sys.stderr)
        return 130


def run_labelled_pass(args) -> int:
    """start.py fit-errors or audit (executor/cli/fit_errors.py, audit.py): checked like mine (a bad flag exits 2),
    then run over the labelled set."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from executor.errors import Interrupted, one_line

    if args.command == "audit":
        from executor.cli.audit import audit as body, check
    else:
        from executor.cli.fit_errors import check, fit_errors as body

    try:
        check(args)
        config = config_of(args)
    except UsageError as exc:
        print(f"quarry {args.command}: error: {exc}", file=sys.stderr)
        return 2
    try:
        with logging_redirect_tqdm():
            return body(args, config, progress_bar)
    except Interrupted as exc:  # the audit's shards: what a rerun reuses
        print(f"\n{exc}" + ("; run the same command again to resume" if exc.kept else ""), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except ValueError as exc:  # fit-errors: too few right or wrong boxes; an unreadable error model
        log.error("%s", exc)
        return 1
    except Exception as exc:
        log.error("%s", one_line(exc))
        log.debug("traceback", exc_info=True)
        return 1


def run_task(args, config: dict, templates: str | None, paths: list[str], names: list[str], shards: str,
             progress) -> int:
    from executor.cli.formats import write_detections
    from executor.pipeline.job import Job
    from executor.pipeline.passes import Models
    from executor.pipeline.plan import make_plan
    from executor.pipeline.tasks import model_class_names, run as run_tasks
    from executor.runtime import outer_ranks

    tasks = requested_tasks(args)
    detections = args.infer_out if args.command == "mine" else args.out
    segmentation = segmentation_family(templates)
    # a segmentation model's infer result is already the COCO result: --format coco is that file
    rewrite = detections and args.format != "ymir" and not (segmentation and args.format == "coco")  # values back
    mining = args.command == "mine"
    stem = os.path.splitext(args.out)[0]
    labeled = tuple(list_images(args.labeled)[0]) if mining and args.labeled else ()
    job = Job(candidates=paths, names=names, mining_result=args.out if mining else "",
              infer_result="" if rewrite else detections or "", shards_dir=shards, labeled=labeled,
              outer=outer_ranks(), keep_shards=mining and not args.drop_shards,
              keep_ranking=bool(mining and detections and args.format == "labelstudio"),
              report_html=(args.report or f"{stem}.report.html") if mining else "",
              mining_scores=(args.raw_scores or f"{stem}.scores.tsv") if mining else "",
              selected=(args.topk or 0) if mining else 0)
    plan = make_plan(tasks, job, config, templates)
    settings = plan.loop
    log.info("%s: %d images from %s (batch %d, img_size %d, %s)", " + ".join(tasks), len(paths), args.images,
             settings.batch_size_per_gpu, settings.img_size,
             f"GPU {settings.gpu_id}" if settings.gpu_id else f"CPU, {plan.threads} threads"
             + (f" in {settings.cpu_processes} processes" if settings.cpu_processes > 1 else ""))
    models = Models()
    results = run_tasks(plan, progress, models)
    if all(value is None for value in results.values()):
        return 0  # a rank of a torchrun job that leaves the merge to rank 0
    if rewrite and args.format == "labelstudio":
        write_label_studio(args, results, dict(zip(names, paths)), model_class_names(plan, models), segmentation)
    elif rewrite:
        write_detections(results["infer"], detections, args.format, model_class_names(plan, models))
    if args.command == "mine":
        log.info("wrote %s (%d images, best first)", args.out, len(paths))
        if job.keep_shards:
            log.info("the scores stay in %s: the same command with other selection or report flags re-selects "
                     "without scoring again (--drop-shards removes them)", shards)
        if args.topk:
            # the ranking's first --topk entries, absolute: the top-K list is a --source wherever it lies
            write_selection([os.path.abspath(found.key) for found in results["mining"].entries[:args.topk]], args)
    if detections:
        log.info("wrote the detections to %s (%s)", detections, args.format)
    return 0


def write_label_studio(args, results: dict, paths: dict[str, str], class_names: list[str], polygons: bool) -> None:
    """Label Studio tasks of the infer pass (executor/cli/labelstudio.py), in ranking order when mining ran."""
    from executor.cli.labelstudio import config_path, write_labelstudio

    target = args.infer_out if args.command == "mine" else args.out
    ranking = None
    if results.get("mining") is not None:
        name_of = {path: name for name, path in paths.items()}
        ranking = {name_of[found.key]: (rank, float(found.score))
                   for rank, found in enumerate(results["mining"], 1)}
    count = write_labelstudio(results["infer"], target, class_names, paths=paths,
                              model_version=os.path.basename(args.weights),
                              url_prefix=args.ls_url_prefix if args.ls_url_prefix is not None else LOCAL_FILES_PREFIX,
                              document_root=label_studio_root(args), ranking=ranking, polygons=polygons)
    log.info("%d Label Studio tasks; their labelling config is %s", count, config_path(target))


def write_selection(paths: list[str], args) -> None:
    """The top-k list next to --out, and optionally the images themselves in --select-dir (a fresh folder)."""
    from executor.protocol.writers import atomic_write_text

    topk_file = os.path.splitext(args.out)[0] + f".top{len(paths)}.txt"
    atomic_write_text(topk_file, "".join(p + "\n" for p in paths))
    log.info("wrote the %d selected images to %s", len(paths), topk_file)
    if args.select_dir:
        if os.path.isdir(args.select_dir):
            shutil.rmtree(args.select_dir)  # empty, or --exist-ok: checked before the run
        os.makedirs(args.select_dir)
        for rank, path in enumerate(paths, 1):
            target = os.path.join(args.select_dir, f"{rank:05d}_{os.path.basename(path)}")
            if args.link:
                os.symlink(os.path.abspath(path), target)
            else:
                shutil.copy2(path, target)
        log.info("%s the selected images into %s", "linked" if args.link else "copied", args.select_dir)
