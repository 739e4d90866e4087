"""What the command line and make-in share: the usage error, the config key each flag sets, the tasks a command
runs, the template default a flag's help names, and --set KEY=VALUE items as config values (the one parser of
them, simulate's too).
"""

import logging
import os

log = logging.getLogger("quarry")


# config key → the flag that sets it (for messages)
FLAG_OF = {"img_size": "--imgsz", "batch_size_per_gpu": "--batch", "gpu_id": "--device", "conf_thres": "--conf",
           "iou_thres": "--iou", "num_workers_per_gpu": "--workers", "backend": "--backend", "seed": "--seed",
           "mining_algorithm": "--algorithm", "cpu_processes": "--nproc", "cpu_threads": "--threads",
           "selection": "--selection", "dedup_similarity": "--dedup-similarity", "diverse_pool": "--diverse-pool",
           "diversity_weight": "--diversity-weight", "report_top_n": "--report-top-n",
           "model_params_path": "--model"}


class UsageError(Exception):
    """A command line that cannot be run as typed (exit status 2)."""


def help_default(template: dict, key: str) -> str:
    """' (default VALUE)' for a flag's help, VALUE the template's value of `key`: help strings read the defaults
    from templates/ (the only place they are written), never restate them."""
    return f" (default {template[key]})".replace("%", "%%")  # argparse formats help strings with %


def requested_tasks(args) -> list[str]:
    """The tasks a command runs: mine (plus infer with --infer-out), infer, or make-in's --task."""
    if args.command == "make-in":
        return [args.task]
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
