#!/usr/bin/env python3
"""Quarry entry point.

    python start.py                      platform mode: /in/env.yaml + /in/config.yaml → /out
    python start.py --env ENV.yaml       platform mode with another env.yaml (local runs, tests)
    python start.py mine  --weights W --images DIR ...   rank a local folder of unlabeled images
    python start.py infer --weights W --images DIR ...   detect on a local folder, write JSON

Only this file knows /in, /out, environment variables and exit codes; everything below takes arguments.
"""
import sys

sys.dont_write_bytecode = True  # never write into the code directory (read-only in images)

import argparse  # noqa: E402
import glob  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import traceback  # noqa: E402

from executor.runtime import prepare_process_env  # noqa: E402

DEFAULT_ENV = "/in/env.yaml"
DEFAULT_MONITOR = "/out/monitor.txt"
# The platform's /in and /out layout (ymir-protocol §4.1): what env.yaml leaves out.
DEFAULT_INPUT = {"root_dir": "/in", "assets_dir": "/in/assets", "annotations_dir": "/in/annotations",
                 "models_dir": "/in/models", "config_file": "/in/config.yaml", "training_index_file": "",
                 "val_index_file": "", "candidate_index_file": ""}
DEFAULT_OUTPUT = {"root_dir": "/out", "models_dir": "/out/models", "tensorboard_dir": "/out/tensorboard",
                  "training_result_file": "/out/models/result.yaml", "mining_result_file": "/out/result.tsv",
                  "infer_result_file": "/out/infer-result.json", "monitor_file": DEFAULT_MONITOR,
                  "executor_log_file": "/out/ymir-executor-out.log"}
WEIGHTS_DIRS_VAR = "QUARRY_WEIGHTS_DIR"  # bundled pretrained weights (os.pathsep-separated; the image sets it)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".unknown")
log = logging.getLogger("quarry")


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


# ---------------------------------------------------------------- platform mode

def run_platform(env_path: str) -> int:
    """Platform mode. Every failure, from a missing env.yaml to a CUDA error or SIGTERM, takes the one path
    at the end: code from executor.errors.error_code, monitor.txt state 4 with a one-line message and the
    traceback, result files of this run removed, exit status 1."""
    from executor.config import confine_model_paths, parse_env, read_yaml_mapping
    from executor.errors import error_code, one_line
    from executor.monitor import Monitor

    monitor = Monitor(DEFAULT_MONITOR if os.access(os.path.dirname(DEFAULT_MONITOR), os.W_OK) else None)
    created = CreatedOutputs()
    try:
        stop_on_sigterm()
        data = read_yaml_mapping(env_path, "env.yaml")
        monitor = Monitor(declared_monitor_file(data) or monitor.path, str(data.get("task_id") or ""))
        env = parse_env(data, env_path, DEFAULT_INPUT, DEFAULT_OUTPUT)  # flags checked after the monitor is known
        monitor = Monitor(env.output_path("monitor_file"), env.task_id)
        monitor.write(0.0)
        created = CreatedOutputs(env)
        config = read_yaml_mapping(env.input_path("config_file"), "config.yaml")
        config = confine_model_paths(config, env)
        from executor.tasks import run

        names = ["training"] if env.run_training else ["mining"] * env.run_mining + ["infer"] * env.run_infer
        run(names, platform_job(env), config, monitor.progress)
        monitor.write(1.0)
        return 0
    except BaseException as exc:  # every failure takes this one path, KeyboardInterrupt included
        code = error_code(exc)
        message = one_line(exc)
        log.error("failed with code %d: %s", code, message)
        log.debug("traceback", exc_info=True)
        created.remove()  # nothing half-done may pass for a result
        monitor.fail(code, message, traceback.format_exception(exc))
        return 1


def declared_monitor_file(env_data: dict) -> str:
    """output.monitor_file of an env.yaml mapping that may be invalid otherwise ('' when absent)."""
    output = env_data.get("output")
    path = output.get("monitor_file") if isinstance(output, dict) else None
    return path if isinstance(path, str) and path.strip() else ""


class CreatedOutputs:
    """The result files a run may write, and what of them (and, for training, of the models directory:
    model stages, attachments) did not exist before it; `remove` deletes exactly those."""

    def __init__(self, env=None):
        self.files: list[str] = []
        self.models_dir, self.models_before = "", set()
        if env is None:
            return
        keys = ("training_result_file",) if env.run_training else ("mining_result_file", "infer_result_file")
        self.files = [f for f in (env.output_path(k) for k in keys) if f and not os.path.exists(f)]
        if env.run_training and env.output_path("models_dir"):
            self.models_dir = env.output_path("models_dir")
            self.models_before = set(os.listdir(self.models_dir)) if os.path.isdir(self.models_dir) else set()

    def remove(self) -> None:
        doomed = [f for f in self.files if os.path.lexists(f)]
        if self.models_dir and os.path.isdir(self.models_dir):
            doomed += [os.path.join(self.models_dir, name) for name in os.listdir(self.models_dir)
                       if name not in self.models_before]
        for path in doomed:
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    os.unlink(path)
                log.info("removed %s: written by the failed run", path)
            except OSError as exc:  # the error itself must still reach monitor.txt
                log.error("could not remove %s: %s", path, exc)


def stop_on_sigterm() -> None:
    """SIGTERM (docker stop, a time limit) becomes an exception in the main process, so the run fails through
    the one error path. Worker processes forked later keep the default: they just end."""
    import signal

    from executor.errors import Terminated

    main_pid = os.getpid()

    def on_sigterm(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(f"terminated by signal {signum} (SIGTERM) before the task finished")

    signal.signal(signal.SIGTERM, on_sigterm)


def platform_job(env):
    """The Job of an env.yaml: its paths, the candidates of its index, the /out layout of training."""
    from executor.index import read_candidate_index
    from executor.tasks import Job

    out_root = env.output_path("root_dir")
    candidates = () if env.run_training else read_candidate_index(env.input_path("candidate_index_file"))
    return Job(candidates=candidates, models_dir=env.input_path("models_dir"),
               mining_result=env.output_path("mining_result_file"), infer_result=env.output_path("infer_result_file"),
               infer_list_key=env.infer_list_key, training_index=env.input_path("training_index_file"),
               val_index=env.input_path("val_index_file"), models_out=env.output_path("models_dir"),
               training_result=env.output_path("training_result_file"),
               tensorboard_dir=env.output_path("tensorboard_dir"), work_dir=out_root,
               weights_dirs=weights_dirs(), multi_stage_result=env.multi_stage_result)


def weights_dirs() -> tuple[str, ...]:
    return tuple(d for d in os.environ.get(WEIGHTS_DIRS_VAR, "").split(os.pathsep) if d)


# ---------------------------------------------------------------- local command line

def list_images(spec: str) -> list[str]:
    """A folder (recursively), a glob pattern, or a text file listing one image path per line."""
    if os.path.isdir(spec):
        found = [os.path.join(root, name) for root, _, names in os.walk(spec) for name in names
                 if name.lower().endswith(IMAGE_SUFFIXES)]
    elif os.path.isfile(spec) and spec.lower().endswith((".txt", ".tsv")):
        from executor.index import read_candidate_index

        return read_candidate_index(spec, relative_to_index=True)
    else:
        found = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
    return sorted(found)


def cli_overrides(args) -> dict:
    """CLI options as config keys; the templates give every default, as in platform mode."""
    named = {"img_size": args.img_size, "batch_size_per_gpu": args.batch_size, "gpu_id": args.gpu_id,
             "conf_thres": args.conf_thres, "iou_thres": args.iou_thres, "num_workers_per_gpu": args.workers,
             "backend": args.backend, "seed": getattr(args, "seed", None), "cpu_processes": args.nproc,
             "mining_algorithm": getattr(args, "algorithm", None), "model_params_path": [args.weights]}
    overrides = {k: v for k, v in named.items() if v is not None}
    from executor.errors import ConfigError

    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        import yaml

        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def tqdm_progress(total: int, unit: str):
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr)

    def progress(fraction: float) -> None:
        bar.update(round(fraction * total) - bar.n)
        if bar.n >= total:
            bar.close()

    return progress


def run_local(args) -> int:
    from executor.errors import QuarryError, error_code, one_line
    from executor.tasks import Job, run

    try:
        keys = list_images(args.images)
        if not keys:
            raise QuarryError(f"no images found at {args.images}")
        task = "mining" if args.command == "mine" else "infer"
        log.info("%s: %d images from %s", task, len(keys), args.images)
        job = Job(candidates=keys, mining_result=args.out, infer_result=args.out, shards_dir=f"{args.out}.shards")
        if run([task], job, cli_overrides(args), tqdm_progress(len(keys), "img"))[task] is None:
            return 0  # a rank of a torchrun job that leaves the merge to rank 0
        log.info("wrote %s (%d images%s)", args.out, len(keys), ", best first" if task == "mining" else "")
        if task == "mining" and args.topk:
            write_selection(top_paths(args.out, args.topk), args)
        return 0
    except Exception as exc:
        log.error("%s (code %d)", one_line(exc), error_code(exc))
        return 1


def top_paths(ranking_file: str, count: int) -> list[str]:
    with open(ranking_file, encoding="utf-8") as handle:
        return [line.split("\t")[0] for line, _ in zip(handle, range(count))]


def write_selection(paths: list[str], args) -> None:
    """The top-k list next to --out, and optionally the images themselves in --select-dir."""
    from executor.writers import atomic_write_text

    topk_file = os.path.splitext(args.out)[0] + f".top{len(paths)}.txt"
    atomic_write_text(topk_file, "".join(p + "\n" for p in paths))
    log.info("wrote the %d selected images to %s", len(paths), topk_file)
    if args.select_dir:
        os.makedirs(args.select_dir, exist_ok=True)
        for rank, path in enumerate(paths, 1):
            target = os.path.join(args.select_dir, f"{rank:05d}_{os.path.basename(path)}")
            if os.path.lexists(target):
                os.unlink(target)
            if args.link:
                os.symlink(os.path.abspath(path), target)
            else:
                shutil.copy2(path, target)
        log.info("%s the selected images into %s", "linked" if args.link else "copied", args.select_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=DEFAULT_ENV, help="platform mode: env.yaml to read (default %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")
    for name, help_text in (("mine", "rank local images, most worth labelling first"),
                            ("infer", "detect objects in local images, write infer-result JSON")):
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--weights", required=True, help="model file: Ultralytics .pt or its ONNX export")
        cmd.add_argument("--images", required=True,
                         help="a folder (searched recursively), a glob in quotes, or a .txt/.tsv list of paths")
        cmd.add_argument("--out", required=True, help="output file (.tsv ranking for mine, .json for infer)")
        cmd.add_argument("--img-size", type=int, help="long side of the network input in pixels (template default 640)")
        cmd.add_argument("--batch-size", type=int, help="images per forward pass (template default 16)")
        cmd.add_argument("--workers", type=int, help="image decoding threads (template default 4)")
        cmd.add_argument("--gpu-id", help="'' or 'cpu' for CPU (default), '0' for the first GPU")
        cmd.add_argument("--conf-thres", type=float, help="minimum box score (template default 0.25)")
        cmd.add_argument("--iou-thres", type=float, help="NMS IoU threshold (template default 0.45)")
        cmd.add_argument("--backend", choices=("auto", "torch", "onnx"), help="inference backend (default auto)")
        cmd.add_argument("--nproc", type=int, help="CPU worker processes, each scoring its own shards (default 1; "
                                                   "with GPUs: one per GPU of --gpu-id)")
        cmd.add_argument("--set", action="append", metavar="KEY=VALUE",
                         help="any other template key, e.g. --set class_distribution_scores=1,1,0.5")
        if name == "mine":
            from mining import SCORERS

            cmd.add_argument("--algorithm", choices=tuple(SCORERS),
                             help="mining algorithm (template default entropy)")
            cmd.add_argument("--seed", type=int, help="seed for random and cald (template default 0)")
            cmd.add_argument("--topk", type=int, default=0, help="also write the K best paths to OUT.topK.txt")
            cmd.add_argument("--select-dir", help="with --topk: copy the K best images into this folder")
            cmd.add_argument("--link", action="store_true", help="with --select-dir: symlink instead of copying")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    prepare_process_env()
    configure_logging(args.verbose)
    if args.command:
        return run_local(args)
    return run_platform(args.env)


if __name__ == "__main__":
    sys.exit(main())
