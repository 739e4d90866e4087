"""What the command line and make-in share: the usage error, the config key each flag sets, the tasks a command
runs, and --set KEY=VALUE items as config values.
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


def requested_tasks(args) -> list[str]:
    """The tasks a command runs: mine (plus infer with --infer-out), infer, or make-in's --task."""
    if args.command == "make-in":
        return [args.task]
    if args.command == "infer":
        return ["infer"]
    return ["mining", "infer"] if args.infer_out else ["mining"]


def set_values(items, tasks: list[str], flags: dict = FLAG_OF) -> dict:
    """--set KEY=VALUE items as config values for `tasks`. A key in no template of the model's family is a usage
    error naming what it is close to (a key, or one of `flags`, config key → the command's flag that sets it); a key
    of another task's template only (training's epochs for mine) is left out with one warning."""
    import yaml

    from executor.protocol.settings import PLATFORM_KEYS
    from executor.protocol.templates import TASKS, active_templates_dir, template_keys

    templates = template_keys()
    used = set().union(*(templates[task] for task in tasks)) | PLATFORM_KEYS
    values = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        owners = [task for task in TASKS if key in templates[task]]
        if key in used:
            values[key] = yaml.safe_load(value)
        elif owners:
            log.warning("--set %s: a key of the %s template%s, not used by %s; ignored%s", key, " and ".join(owners),
                        "s" if len(owners) > 1 else "", " + ".join(tasks), typo_hint(key, used, flags))
        else:
            template = os.path.join(active_templates_dir(), f"{tasks[0]}-template.yaml")
            raise UsageError(f"--set {item}: unknown key {key!r} (the keys are those of {template})"
                             + typo_hint(key, used, flags))
    return values


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
