#!/usr/bin/env python3
"""Quarry entry point.

    python start.py                      platform mode: /in/env.yaml + /in/config.yaml → /out
    python start.py --env ENV.yaml       platform mode with another env.yaml (local runs, tests)
    python start.py mine  --model W --source DIR ...    rank a local folder of unlabeled images
    python start.py infer --model W --source DIR ...    detect on a local folder (ymir, coco or yolo output)
    python start.py make-in --task mining ...           write an /in folder to rehearse platform mode

This file knows /in, /out, the environment and the platform's exit path; executor/cli/commands.py the local command
line; both turn config, job and ranks into one plan (executor/pipeline/plan.py) that executor.pipeline.tasks.run
takes.
"""
import sys

sys.dont_write_bytecode = True  # never write into the code directory (read-only in images)

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
LABEL_AUDIT_NAME = "label-audit.json"  # training: the label audit in /out (not in the model package)
WEIGHTS_DIRS_VAR = "QUARRY_WEIGHTS_DIR"  # bundled pretrained weights (os.pathsep-separated; the image sets it)
log = logging.getLogger("quarry")


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


# ---------------------------------------------------------------- platform mode

def run_platform(env_path: str, default_monitor: bool = True) -> int:
    """Platform mode. Every failure, from a missing env.yaml to a CUDA error or SIGTERM, takes the one path
    at the end: code from executor.errors.error_code, monitor.txt state 4 with a one-line message and the
    traceback, result files of this run removed, exit status 1. Until env.yaml names its monitor file, a failure
    goes to /out/monitor.txt, but only in a real platform run (no --env): a local rehearsal never writes /out."""
    from executor.errors import error_code, one_line
    from executor.protocol.env import confine_model_paths, parse_env
    from executor.protocol.monitor import Monitor
    from executor.protocol.settings import without_unknown_keys
    from executor.protocol.yaml_file import read_yaml_mapping

    usable = default_monitor and os.access(os.path.dirname(DEFAULT_MONITOR), os.W_OK)
    monitor = Monitor(DEFAULT_MONITOR if usable else None)
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
        from executor.pipeline.plan import make_plan
        from executor.pipeline.tasks import run

        names = ["training"] if env.run_training else ["mining"] * env.run_mining + ["infer"] * env.run_infer
        config = without_unknown_keys(config, names)  # a stray key is warned about once, not in every step
        job = platform_job(env)
        if env.run_mining:  # the side files of mining go with result.tsv if the run fails
            from executor.pipeline.job import mining_scores_path, report_paths

            created.add([mining_scores_path(job), *report_paths(job)])
        run(make_plan(names, job, config), monitor.progress)
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

    def add(self, paths) -> None:
        """More files this run may write (those that exist already are kept on failure)."""
        self.files += [f for f in paths if f and not os.path.exists(f)]

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
    from executor.pipeline.job import Job
    from executor.protocol.index import read_candidate_index
    from executor.runtime import outer_ranks

    out_root = env.output_path("root_dir")
    candidates = () if env.run_training else read_candidate_index(env.input_path("candidate_index_file"))
    return Job(candidates=candidates, models_dir=env.input_path("models_dir"),
               mining_result=env.output_path("mining_result_file"), infer_result=env.output_path("infer_result_file"),
               infer_list_key=env.infer_list_key, training_index=env.input_path("training_index_file"),
               val_index=env.input_path("val_index_file"), models_out=env.output_path("models_dir"),
               training_result=env.output_path("training_result_file"),
               tensorboard_dir=env.output_path("tensorboard_dir"), work_dir=out_root,
               label_audit=os.path.join(out_root, LABEL_AUDIT_NAME) if env.run_training and out_root else "",
               weights_dirs=weights_dirs(), multi_stage_result=env.multi_stage_result, outer=outer_ranks())


def weights_dirs() -> tuple[str, ...]:
    return tuple(d for d in os.environ.get(WEIGHTS_DIRS_VAR, "").split(os.pathsep) if d)


def main(argv=None) -> int:
    prepare_process_env()  # before the parser imports torch (through mining's registry)
    from executor.cli import commands as cli

    args = cli.build_parser(extra_commands=extra_commands()).parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    if args.command == "simulate":
        from executor.simulate.command import run_cli

        return run_cli(args)
    if args.command:
        return cli.run(args)
    return run_platform(args.env or DEFAULT_ENV, default_monitor=args.env is None)


def extra_commands() -> list:
    try:
        from executor.simulate.command import add_parser
    except ImportError:  # not part of this checkout
        return []
    return [lambda sub, common: add_parser(sub)]


if __name__ == "__main__":
    sys.exit(main())
