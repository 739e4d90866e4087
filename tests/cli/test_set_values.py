"""The one --set KEY=VALUE parser (executor/cli/flags.set_values) as the command line, make-in and simulate use it."""
import logging

import pytest

from executor.cli.flags import UsageError, set_values
from executor.errors import ConfigError
from executor.simulate.plan import parse_sets


def cli(items, tasks=("mining",)):
    return set_values(items, list(tasks))


@pytest.mark.parametrize("parse, error", [(cli, UsageError), (parse_sets, ConfigError)])
@pytest.mark.parametrize("item, message", [
    ("novalue", "--set 'novalue': expected KEY=VALUE"),
    ("=3", "--set '=3': expected KEY=VALUE"),
    ("img_size=[1,", "--set 'img_size=[1,': cannot read the value"),
])
def test_a_malformed_item_is_named_alike_by_every_caller(parse, error, item, message):
    with pytest.raises(error) as caught:
        parse([item])
    assert str(caught.value) == message


@pytest.mark.parametrize("parse", [cli, parse_sets])
def test_values_are_yaml_and_an_empty_one_is_empty_text(parse):
    assert parse(["img_size=320", "class_distribution_scores=[1, 0.5]", "pin_memory=true", "gpu_id="]) == {
        "img_size": 320, "class_distribution_scores": [1, 0.5], "pin_memory": True, "gpu_id": ""}


def test_an_unknown_key_is_one_message_with_close_matches_for_cli_and_simulate():
    with pytest.raises(UsageError, match=r"--set imgsz=3: unknown key 'imgsz' \(the keys are those of .*"
                                         r"mining-template.yaml\); did you mean img_size \(or the flag --imgsz\)\?"):
        cli(["imgsz=3"])
    with pytest.raises(ConfigError, match=r"--set imgsz=3: unknown key 'imgsz' \(the keys are those of the training, "
                                          r"mining and infer templates in .*\); did you mean img_size \(or the flag "
                                          r"--img-size\)\?"):
        parse_sets(["imgsz=3"])


def test_another_tasks_key_is_a_warning_for_the_cli_and_a_value_for_simulate(caplog):
    with caplog.at_level(logging.WARNING, logger="quarry"):
        assert cli(["epochs=3"]) == {}
    assert "--set epochs: a key of the training template, not used by mining; ignored" in caplog.text
    assert parse_sets(["epochs=3", "class_names=a, b"]) == {"epochs": 3, "class_names": ["a", "b"]}
