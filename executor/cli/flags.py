"""What the command line and make-in share: the usage error, the one table of flags that set a config key (it
makes their options, their help with the template's default, and their config values), the tasks a command runs,
and --set KEY=VALUE items as config values (the one parser of them, simulate's too).
"""

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("quarry")


def gpu_id_of(device: str) -> str:
    """--device as config gpu_id: cpu → '', cuda:0 → 0, 0,1 as it is."""
    return "" if device.strip().lower() == "cpu" else device.lower().replace("cuda:", "")


@dataclass(frozen=True)
class ConfigFlag:
    """A flag that sets one config key: its names (Ultralytics' first where a user knows one), the key (also its
    argparse dest), what it sets, and whether the help names the template's default."""
    names: tuple[str, ...]
    key: str
    help: str
    type: Callable | None = None
    choices: tuple | Callable[[], tuple] = ()  # a callable: choices read when the parser is built
    commands: tuple[str, ...] = ("mine", "infer")
    switch: bool = False                       # store_true (None when not given: the template decides)
    shows_default: bool = True
    to_value: Callable[[Any], Any] = lambda value: value

    def add_to(self, parser: argparse.ArgumentParser, template: dict) -> None:
        help_text = self.help + (help_default(template, self.key) if self.shows_default else "")
        if self.switch:
            parser.add_argument(*self.names, dest=self.key, action="store_true", default=None, help=help_text)
            return
        choices = self.choices() if callable(self.choices) else self.choices
        metavar = None if choices else self.names[0].lstrip("-").upper()  # the flag's name, not the config key
        parser.add_argument(*self.names, dest=self.key, type=self.type, choices=choices or None, metavar=metavar,
                            help=help_text)


def algorithm_names() -> tuple:
    from mining import SCORERS  # imports torch: only when the parser is built

    return tuple(SCORERS)


MINE = ("mine",)
FIT = ("mine", "infer", "fit-errors", "audit")  # the flags the labelled passes take too (executor/cli/fit_errors.py,
# audit.py; audit has its own --conf)
SHARDED = ("mine", "infer", "audit")  # the passes in shards over workers
CONFIG_FLAGS = (
    ConfigFlag(("--imgsz", "--img-size"), "img_size", "long side of the network input in pixels", int, commands=FIT),
    ConfigFlag(("--batch", "--batch-size"), "batch_size_per_gpu", "images per forward pass", int, commands=FIT),
    ConfigFlag(("--workers",), "num_workers_per_gpu", "image decoding threads", int, commands=SHARDED),
    ConfigFlag(("--device", "--gpu-id"), "gpu_id", "cpu (default), 0, cuda:0, or 0,1 (one worker per GPU)",
               shows_default=False, to_value=gpu_id_of, commands=FIT),
    ConfigFlag(("--conf", "--conf-thres"), "conf_thres", "minimum box score", float,
               commands=("mine", "infer", "fit-errors")),
    ConfigFlag(("--iou", "--iou-thres"), "iou_thres", "NMS IoU threshold", float, commands=FIT),
    ConfigFlag(("--backend",), "backend", "inference backend", choices=("auto", "torch", "onnx")),
    ConfigFlag(("--augment",), "augment", "test-time augmentation of the detections (infer, mine --infer-out): "
               "Ultralytics' augmented forward, scales 1, 0.83 flipped and 0.67 joined before one NMS; slower, a "
               "little more accurate; PyTorch detection models only; mining scores never use it", switch=True,
               shows_default=False),
    ConfigFlag(("--threads",), "cpu_threads", "CPU threads for the model (0: OMP_NUM_THREADS, else the CPUs this "
               "process may use)", int, commands=FIT),
    ConfigFlag(("--nproc",), "cpu_processes", "CPU worker processes, each scoring its own shards", int,
               commands=SHARDED),
    ConfigFlag(("--algorithm",), "mining_algorithm", "mining algorithm", choices=algorithm_names, commands=MINE),
    ConfigFlag(("--seed",), "seed", "seed for random and cald", int, commands=MINE),
    ConfigFlag(("--selection",), "selection", "score: by score; diverse: near-duplicates pushed down, the top mixed "
               "for variety, so every prefix of the ranking is a good batch (docs/mining.md)",
               choices=("score", "diverse"), commands=MINE),
    ConfigFlag(("--dedup-similarity",), "dedup_similarity", "diverse: share of agreeing photo-hash bits that makes "
               "a near-duplicate", float, commands=MINE),
    ConfigFlag(("--diverse-pool",), "diverse_pool", "diverse: how many top images by score are reordered (0: a "
               "share of the pool)", int, commands=MINE),
    ConfigFlag(("--diversity-weight",), "diversity_weight", "diverse: weight of variety against score, in [0, 1]",
               float, commands=MINE),
    ConfigFlag(("--class-balance",), "class_balance", "diverse: keep the predicted classes of the top close to the "
               "pool's mix", commands=MINE, switch=True, shows_default=False),
    ConfigFlag(("--report-top-n",), "report_top_n", "thumbnails of the best images in the report (with --topk K at "
               "most K)", int, commands=MINE),
)
DIVERSE_FLAGS = ("dedup_similarity", "diverse_pool", "diversity_weight", "class_balance")  # need --selection diverse
# config key → the flag that sets it (for messages)
FLAG_OF = {flag.key: flag.names[0] for flag in CONFIG_FLAGS} | {"model_params_path": "--model"}


def add_config_flags(parser: argparse.ArgumentParser, command: str, template: dict) -> None:
    for flag in CONFIG_FLAGS:
        if command in flag.commands:
            flag.add_to(parser, template)


def flag_values(args) -> dict:
    """The config values of the table's flags given on the command line."""
    return {flag.key: flag.to_value(getattr(args, flag.key)) for flag in CONFIG_FLAGS
            if getattr(args, flag.key, None) is not None}


class UsageError(Exception):
    """A command line that cannot be run as typed (exit status 2)."""


def check_output_file(flag: str, path: str) -> None:
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a folder; give a file name, e.g. {os.path.join(path, 'ranked.tsv')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path}: the folder {folder} is not writable")


def help_default(template: dict, key: str) -> str:
    """' (default VALUE)' for a flag's help, VALUE the template's value of `key`: help strings read the defaults
    from templates/ (the only place they are written), never restate them."""
    return f" (default {template[key]})".replace("%", "%%")  # argparse formats help strings with %


def requested_tasks(args) -> list[str]:
    """The tasks a command runs: mine (plus infer with --infer-out), infer, make-in's --task; fit-errors and audit
    read the mining settings (the error model is fitted at mining's thresholds; the audit forwards as mining), the audit
    with --folds the training's too."""
    if args.command == "make-in":
        return [args.task]
    if args.command == "audit" and getattr(args, "folds", 0):
        return ["mining", "training"]  # the folds' models are trained with the training template
    if args.command in ("fit-errors", "audit"):
        return ["mining"]
    if args.command == "infer":
        return ["infer"]
    return ["mining", "infer"] if args.infer_out else ["mining"]


def set_values(items, tasks: list[str], flags: dict = FLAG_OF, extra_keys: set | None = None,
               error: type[Exception] = UsageError) -> dict:
    """--set KEY=VALUE items as config values for `tasks` (the one parser: the command line, make-in, simulate).
    A value is read as YAML (1,2 a list, true a boolean), an empty one is ''. A malformed item or value is an `error`
    naming the item. The keys: those of the `tasks`' templates (of the model's family) and `extra_keys`
    (default: the platform's keys); a key in no template is an `error` naming what it is close to (a key, or one
    of `flags`, config key → the command's flag that sets it); a key of another task's template only (training's
    epochs for mine) is left out with one warning."""
    from executor.protocol.settings import PLATFORM_KEYS
    from executor.protocol.templates import TASKS, template_keys

    templates = template_keys()
    used = set().union(*(templates[task] for task in tasks)) | (PLATFORM_KEYS if extra_keys is None else extra_keys)
    values = {}
    for item in items or []:
        key, value = split_item(item, error)
        owners = [task for task in TASKS if key in templates[task]]
        if key in used:
            values[key] = value
        elif owners:
            log.warning("--set %s: a key of the %s template%s, not used by %s; ignored%s", key, " and ".join(owners),
                        "s" if len(owners) > 1 else "", " + ".join(tasks), typo_hint(key, used, flags))
        else:
            raise error(f"--set {item}: unknown key {key!r} (the keys are those of {template_files(tasks)})"
                        + typo_hint(key, used, flags))
    return values


def split_item(item: str, error: type[Exception]) -> tuple[str, object]:
    """'KEY=VALUE' → (key, the value read as YAML; '' when empty); anything else is an `error` naming the item."""
    import yaml

    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise error(f"--set {item!r}: expected KEY=VALUE")
    try:
        return key, yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        raise error(f"--set {item!r}: cannot read the value") from None


def template_files(tasks: list[str]) -> str:
    """Where the keys of `tasks` are written (the active family's templates), for messages."""
    from executor.protocol.templates import active_templates_dir

    folder = active_templates_dir()
    if len(tasks) == 1:
        return os.path.join(folder, f"{tasks[0]}-template.yaml")
    return f"the {', '.join(tasks[:-1])} and {tasks[-1]} templates in {folder}"


def typo_hint(key: str, keys: set[str], flags: dict) -> str:
    """'; did you mean img_size (or the flag --imgsz)?' for a mistyped key, matched against `keys` and the `flags`
    that set them (config key → flag); '' when nothing is close."""
    from executor.protocol.settings import close_keys

    names = {name: name for name in keys}
    names.update({flag.lstrip("-").replace("-", "_"): name for name, flag in flags.items() if name in keys})
    matches = dict.fromkeys(names[name] for name in close_keys(key, names))
    if not matches:
        return ""
    return "; did you mean " + " or ".join(f"{name} (or the flag {flags[name]})" if name in flags else name
                                           for name in matches) + "?"
