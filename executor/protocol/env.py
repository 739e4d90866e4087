"""env.yaml (what to run, where: ymir-protocol §4.1): the typed Env, and the model paths of config.yaml confined
to the models folder and resolved to one weights file.
"""

import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from executor.errors import ConfigError, ModelError
from executor.protocol.rules import RULES, to_bool


# ---------------------------------------------------------------- env.yaml

def version_tuple(text: str) -> tuple:
    try:
        return tuple(int(part) for part in str(text).strip().split("."))
    except ValueError as exc:
        raise ConfigError(f"env.yaml key 'protocol_version': {text!r} is not a version like 1.1.0") from exc


@dataclass(frozen=True)
class Env:
    """env.yaml with the platform's defaults for every missing key (ymir-protocol §4.1)."""
    task_id: str = "quarry"
    protocol_version: str = "0.0.1"
    run_training: bool = False
    run_mining: bool = False
    run_infer: bool = False
    input: Mapping[str, str] = field(default_factory=dict)
    output: Mapping[str, str] = field(default_factory=dict)

    def input_path(self, key: str) -> str:
        return self.input.get(key, "")

    def output_path(self, key: str) -> str:
        return self.output.get(key, "")

    @property
    def infer_list_key(self) -> str | tuple[str, str]:
        """ymir 2.x (protocol >= 1.1.0) reads `boxes`; older platforms read `annotations`. Protocol 1.0.0 gets
        both: ymir 1.3 before 292c6dc reads only `annotations`, the SDK (and tools checking against it) `boxes`."""
        version = version_tuple(self.protocol_version)
        if version >= (1, 1, 0):
            return "boxes"
        return ("boxes", "annotations") if version >= (1, 0, 0) else "annotations"

    @property
    def multi_stage_result(self) -> bool:
        """protocol >= 1.0.0 takes the multi-stage result.yaml; older ones the legacy {model, map}."""
        return version_tuple(self.protocol_version) >= (1, 0, 0)


def parse_env(data: Mapping, source: str, default_input: Mapping[str, str], default_output: Mapping[str, str]) -> Env:
    """An Env from the parsed env.yaml, missing paths taken from the defaults (the platform's /in and /out
    layout, which start.py knows); flags checked so exactly one kind of job is asked for."""
    def section(name: str, defaults: dict) -> Mapping[str, str]:
        given = data.get(name) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: key '{name}' must be a mapping")
        return MappingProxyType({**defaults, **{k: str(v or "") for k, v in given.items()}})

    flags = {}
    for key in ("run_training", "run_mining", "run_infer"):
        try:
            flags[key] = to_bool(key, data.get(key, False))
        except ConfigError:
            raise ConfigError(f"{source}: key '{key}': {data.get(key)!r} is not a boolean (true/false)") from None
    if not any(flags.values()):
        raise ConfigError(f"{source}: none of run_training, run_mining, run_infer is true: nothing to do")
    if flags["run_training"] and (flags["run_mining"] or flags["run_infer"]):
        raise ConfigError(f"{source}: run_training cannot be combined with run_mining or run_infer")
    version = str(data.get("protocol_version") or "0.0.1")
    version_tuple(version)
    return Env(task_id=str(data.get("task_id") or "quarry"), protocol_version=version, **flags,
               input=section("input", dict(default_input)), output=section("output", dict(default_output)))


# ---------------------------------------------------------------- weights

MODEL_PATH_KEYS = ("model_params_path", "pretrained_model_params")


def inside(path: str, folder: str) -> bool:
    """`path` lies in `folder` (both normalised; no symlinks followed: the platform binds their targets)."""
    folder = os.path.normpath(folder)
    return bool(folder) and (path == folder or path.startswith(folder.rstrip(os.sep) + os.sep))


def confine_model_paths(config: dict, env: "Env") -> dict:
    """config.yaml with the model paths the platform gives (model_params_path, pretrained_model_params) made
    absolute and normalised: a relative path is taken relative to input.models_dir (ymir 1.x wrote them so)
    and must stay inside it; an absolute one must lie inside the input directory (input.root_dir).
    Anything else is a ConfigError naming the key and the path, before any file is opened."""
    models_dir = os.path.normpath(env.input_path("models_dir"))
    roots = [r for r in (env.input_path("root_dir"), models_dir) if r]
    confined = dict(config)
    for key in MODEL_PATH_KEYS:
        if key not in config:
            continue
        paths = []
        for given in RULES[key](key, config[key]):
            path = os.path.normpath(os.path.join(models_dir, given))
            allowed = [models_dir] if not os.path.isabs(given) else roots
            if not any(inside(path, root) for root in allowed):
                where = f"input.models_dir {models_dir}" if not os.path.isabs(given) else \
                    "the input directory " + " or ".join(dict.fromkeys(os.path.normpath(r) for r in roots))
                raise ConfigError(f"config key '{key}': {given!r} is outside {where}; model files are only "
                                  "loaded from the platform's model directory")
            paths.append(path)
        confined[key] = paths
    return confined


def resolve_weights(paths: tuple, models_dir: str, suffixes: tuple = (".pt",)) -> str:
    """The weights file among `paths` (absolute or relative to models_dir): prefer a file named
    best*<suffix>, else the newest. Raises ModelError naming what was looked at."""
    candidates = [os.path.join(models_dir, p) if models_dir else p for p in paths]
    found = [p for p in candidates if os.path.isfile(p) and p.lower().endswith(suffixes)]
    if not found:
        looked = ", ".join(candidates) or "(model_params_path is empty)"
        raise ModelError(f"no {'/'.join(suffixes)} weights file found among: {looked}")
    best = [p for p in found if os.path.basename(p).lower().startswith("best")]
    return max(best or found, key=lambda p: (os.path.getmtime(p), p))
