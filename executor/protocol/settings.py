"""Typed settings: config.yaml merged over templates/<task>-template.yaml (env.yaml, what to run and where: env.py).

The templates are the only place defaults are written. Every value is coerced once, here, by the rule
of its key (executor/protocol/rules.py); an invalid value is a ConfigError (300001) naming the key and what is
allowed. Keys that
neither the template nor the platform knows are logged as warnings and otherwise ignored.
"""

import difflib
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

from executor.errors import ConfigError
from executor.protocol.rules import RULES
from executor.protocol.templates import active_templates_dir, load_template, manifest_object_type, template_keys
from executor.shared import FAMILIES

log = logging.getLogger(__name__)


# Keys the platform adds to config.yaml (ymir-protocol §4.2); known, so never warned about.
PLATFORM_KEYS = {
    "task_id", "class_names", "gpu_id", "gpu_count", "object_type", "pretrained_model_params",
    "model_params_path", "run_infer", "run_mining", "run_training", "export_format", "shm_size", "max_boxes",
    "openpai_enable", "git_url", "git_branch", "code_config", "pypi_mirror", "ymir_saved_file_patterns",
    "ymir_debug", "evaluate_config",
}
# Platform keys the code reads, with their value when the platform (or a local run) leaves them out.
PLATFORM_DEFAULTS = {"gpu_id": "", "class_names": [], "model_params_path": [], "pretrained_model_params": [],
                     "evaluate_config": {}}


# ---------------------------------------------------------------- settings

class Settings(Mapping):
    """Read-only typed settings with attribute access (`settings.img_size`)."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __getattr__(self, key):
        if key.startswith("_"):  # not a setting (and pickle asks before _values exists)
            raise AttributeError(key)
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def replace(self, **changes) -> "Settings":
        """These settings with `changes`, values already of their key's type (no rule applies them)."""
        return Settings({**self._values, **changes})

    def __repr__(self):
        return f"Settings({self._values!r})"


def close_keys(key: str, known: Iterable[str]) -> list[str]:
    """The known names a mistyped `key` is closest to, best first (difflib; at most 3, maybe none). The cutoff
    0.7 keeps imgsz → img_size and batch_size → batch_size_per_gpu but not batch_size → shm_size."""
    return difflib.get_close_matches(key, sorted(set(known)), n=3, cutoff=0.7)


def unused_key_warning(key: str, tasks: Sequence[str], known: Iterable[str]) -> str:
    """What the log says of a config key that `tasks` ignore, with the known keys it may be a typo of."""
    close = close_keys(key, known)
    hint = f"; did you mean {' or '.join(repr(k) for k in close)}?" if close else ""
    return f"config key '{key}' is not used by {' or '.join(tasks)} and is ignored{hint}"


def without_unknown_keys(config: Mapping, tasks: Sequence[str], templates_dir: str | None = None) -> dict:
    """`config` less the keys that no template of the family holds and the platform does not add, each logged once
    as a warning with its close matches (platform mode: a stray key in config.yaml never fails the task)."""
    templates = template_keys(templates_dir)
    known = set().union(*templates.values()) | PLATFORM_KEYS
    used = set().union(*(templates[task] for task in tasks))
    for key in config:
        if key not in known:
            log.warning("%s", unused_key_warning(key, tasks, used))
    return {key: value for key, value in config.items() if key in known}


def build_settings(task: str, config: Mapping, templates_dir: str | None = None) -> Settings:
    """config.yaml values over the task's template, each coerced by its rule. `templates_dir`: the family's
    templates (default: active_templates_dir()); its manifest's object_type becomes `settings.object_type`, and a
    platform config naming another object_type is a ConfigError naming both."""
    folder = templates_dir or active_templates_dir()
    template = load_template(task, folder)
    for key in config:
        if key not in template and key not in PLATFORM_KEYS and key not in RULES:
            log.warning("%s", unused_key_warning(key, [task], template))
    known = {k: v for k, v in config.items() if k in template or k in PLATFORM_KEYS}
    merged = {**PLATFORM_DEFAULTS, **template, **known}
    values = {}
    for key, value in merged.items():
        rule = RULES.get(key)
        values[key] = rule(key, value) if rule else value
    served = manifest_object_type(folder)
    asked = values.get("object_type")
    if asked is not None and asked != served:
        raise ConfigError(f"config key 'object_type': {asked} ({FAMILIES.get(asked, 'unknown')}), but this image "
                          f"serves object_type {served} ({FAMILIES[served]}, {os.path.join(folder, 'manifest.yaml')})")
    values["object_type"] = served
    return Settings(values)
