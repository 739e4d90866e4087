"""The files the platform reads from /img-man (templates/ in the repository).

ymir-protocol §3: each `<task>-template.yaml` must parse to a flat mapping (the web UI shows every key as
one editable text row and sends back a flat dict), and the executor must accept every key and default in
it; `manifest.yaml` says the object type (2 = detection, root templates).
"""
import os

import pytest
import yaml

from executor.protocol.settings import PLATFORM_KEYS, RULES, build_settings
from executor.protocol.templates import TASKS, TEMPLATES_DIR

TASK_TEMPLATES = sorted(
    name for name in os.listdir(TEMPLATES_DIR) if name.endswith("-template.yaml")
)


def load(name):
    with open(os.path.join(TEMPLATES_DIR, name), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def task_of(name):
    return name[: -len("-template.yaml")]


def test_templates_present():
    # An image is offered for a task only if its template exists; this image mines and infers at least.
    assert "mining-template.yaml" in TASK_TEMPLATES
    assert "infer-template.yaml" in TASK_TEMPLATES
    for name in TASK_TEMPLATES:
        assert task_of(name) in TASKS, f"{name}: no task {task_of(name)!r} in executor.protocol.templates.TASKS {TASKS}"


@pytest.mark.parametrize("name", TASK_TEMPLATES + ["manifest.yaml"])
def test_template_is_flat_mapping(name):
    data = load(name)
    assert isinstance(data, dict) and data, f"{name} must be a non-empty YAML mapping"
    for key, value in data.items():
        assert isinstance(key, str), f"{name}: key {key!r} is not a string"
        assert value is None or isinstance(value, (str, int, float, bool)), (
            f"{name}: '{key}' is a {type(value).__name__}; templates are flat key: scalar")


@pytest.mark.parametrize("name", TASK_TEMPLATES)
def test_template_keys_are_known(name):
    # Every key is coerced by a rule (or is one the platform consumes), so none is silently ignored.
    unknown = sorted(set(load(name)) - set(RULES) - PLATFORM_KEYS)
    assert not unknown, f"{name}: keys without a rule in executor.protocol.settings.RULES: {unknown}"


@pytest.mark.parametrize("name", TASK_TEMPLATES)
def test_values_edited_as_text_are_accepted(name):
    # The web UI edits values as text: every default sent back as a string gives the same settings.
    task = task_of(name)
    typed = build_settings(task, {})
    as_text = build_settings(task, {key: "" if v is None else str(v) for key, v in load(name).items()})
    assert dict(as_text) == dict(typed)
