"""The templates: where this process reads its defaults (templates/, a family's folder, /img-man or
$QUARRY_TEMPLATES), the family of that folder (its manifest's object_type), and each task's keys.
"""

import os

from executor.errors import ConfigError
from executor.protocol.yaml_file import read_yaml_mapping
from executor.shared import DETECTION, FAMILIES, SEGMENTATION


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the folder above executor/
TEMPLATES_DIR = os.path.join(ROOT, "templates")
TASKS = ("training", "mining", "infer")
FAMILY_TEMPLATES = {DETECTION: TEMPLATES_DIR, SEGMENTATION: os.path.join(TEMPLATES_DIR, "segmentation")}
TEMPLATES_VAR = "QUARRY_TEMPLATES"  # the image sets /img-man: the very files the platform read on import
IMAGE_TEMPLATES_DIR = "/img-man"    # where an image keeps its templates and manifest (ymir-protocol §3)


def active_templates_dir() -> str:
    """The templates (and manifest) this process serves: $QUARRY_TEMPLATES when set (the image sets /img-man,
    where its build arg TEMPLATES put them); else /img-man when it holds a manifest.yaml (an image built
    otherwise, or the verifier harness, which mounts the image's template folder there); else the repository's
    templates/ (detection). The local CLI passes the folder of its model's family instead (family_templates)."""
    given = os.environ.get(TEMPLATES_VAR, "").strip()
    if given:
        if not os.path.isfile(os.path.join(given, "manifest.yaml")):
            raise ConfigError(f"environment variable {TEMPLATES_VAR}={given!r}: no manifest.yaml there (the "
                              "folder of the *-template.yaml files and manifest.yaml)")
        return given
    if os.path.isfile(os.path.join(IMAGE_TEMPLATES_DIR, "manifest.yaml")):
        return IMAGE_TEMPLATES_DIR
    return TEMPLATES_DIR


def family_templates(object_type: int) -> str:
    """The repository's templates folder of a family (2 detection, 4 instance segmentation); a ConfigError
    when this installation lacks it (an install that left the family's templates out)."""
    if object_type not in FAMILY_TEMPLATES:
        raise ConfigError(f"object_type {object_type!r} is not served by this executor; expected one of "
                          + ", ".join(f"{k} ({v})" for k, v in FAMILIES.items()))
    folder = FAMILY_TEMPLATES[object_type]
    if not os.path.isfile(os.path.join(folder, "manifest.yaml")):
        family = FAMILIES[object_type]
        raise ConfigError(f"this Quarry installation has no {family} templates ({folder} has no manifest.yaml), "
                          f"so it cannot run {family} models; reinstall Quarry from a complete clone (pip install .)")
    return folder


def manifest_object_type(folder: str) -> int:
    """The object_type of `folder`/manifest.yaml (2 when there is none, as ymir defaults); only the families
    this executor serves are accepted (an int: templates at the folder's root, ymir-protocol §3)."""
    path = os.path.join(folder, "manifest.yaml")
    if not os.path.isfile(path):
        return DETECTION
    value = read_yaml_mapping(path, "manifest").get("object_type", DETECTION)
    if isinstance(value, bool) or not isinstance(value, int) or value not in FAMILIES:
        raise ConfigError(f"manifest {path}: object_type {value!r} is not served by this executor; expected one of "
                          + ", ".join(f"{k} ({v})" for k, v in FAMILIES.items()))
    return value


def load_template(task: str, templates_dir: str | None = None) -> dict:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    folder = templates_dir or active_templates_dir()
    return read_yaml_mapping(os.path.join(folder, f"{task}-template.yaml"), f"{task} template")


def template_keys(templates_dir: str | None = None) -> dict[str, set[str]]:
    """task → the keys of its template, in the family of `templates_dir` (default: active_templates_dir())."""
    folder = templates_dir or active_templates_dir()
    return {task: set(load_template(task, folder)) for task in TASKS}
