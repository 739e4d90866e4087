import pytest
import yaml

import start

from executor.errors import ConfigError, ModelError
from executor.protocol.env import parse_env, resolve_weights
from executor.protocol.rules import to_bool
from executor.protocol.settings import build_settings, without_unknown_keys
from executor.protocol.yaml_file import read_yaml_mapping
from executor.shared import gpu_list


def test_template_defaults_are_typed():
    """The template's text values come out as the rules' types (whatever the defaults are)."""
    settings = build_settings("mining", {})
    assert type(settings.img_size) is int and type(settings.seed) is int and type(settings.conf_thres) is float
    assert type(settings.class_distribution_scores) is tuple and type(settings.pin_memory) is bool
    assert type(settings.gpu_id) is str and settings.mining_algorithm in ("random", "entropy", "aldd", "cald")


@pytest.mark.parametrize("value, expected", [(0, "0"), ("0", "0"), ("0, 1", "0,1"), ("", ""), (None, ""), ("cpu", "")])
def test_gpu_id_forms(value, expected):
    assert build_settings("mining", {"gpu_id": value}).gpu_id == expected
    assert gpu_list(value) == [int(p) for p in expected.split(",") if p]


@pytest.mark.parametrize("value, expected", [(True, True), ("true", True), ("T", True), (1, True), ("1", True),
                                             (False, False), ("False", False), ("f", False), (0, False)])
def test_bool_like_the_sdk(value, expected):
    assert to_bool("pin_memory", value) is expected


def test_values_are_coerced_once():
    settings = build_settings("mining", {"img_size": "320", "conf_thres": "0.1", "class_distribution_scores": "1,0.5"})
    assert settings.img_size == 320 and settings.conf_thres == 0.1
    assert settings.class_distribution_scores == (1.0, 0.5)


@pytest.mark.parametrize("key, value, needle", [
    ("mining_algorithm", "coreset", "random, entropy, errors, aldd, cald"),
    ("conf_thres", 1.5, "[0.0, 1.0]"),
    ("batch_size_per_gpu", -1, "[0, 4096]"),
    ("img_size", "big", "an integer"),
    ("class_distribution_scores", "1,x", "comma-separated"),
    ("gpu_id", "first", "GPU numbers"),
    ("pin_memory", "maybe", "boolean"),
])
def test_invalid_value_names_key_and_allowed_values(key, value, needle):
    with pytest.raises(ConfigError) as err:
        build_settings("mining", {key: value})
    assert f"'{key}'" in str(err.value) and needle in str(err.value)
    assert err.value.code == 300001


def test_unknown_key_is_a_warning(caplog):
    settings = build_settings("mining", {"no_such_key": 3})
    assert "no_such_key" not in settings
    assert "no_such_key" in caplog.text


def test_unknown_keys_are_warned_about_once_with_their_close_matches(caplog):
    config = {"imgsz": 320, "entropy_agg": "max", "conf_thres": 0.3, "epochs": 3, "task_id": "t"}
    kept = without_unknown_keys(config, ["mining", "infer"])
    assert kept == {"conf_thres": 0.3, "epochs": 3, "task_id": "t"}  # template and platform keys stay
    assert [r.getMessage() for r in caplog.records] == [
        "config key 'imgsz' is not used by mining or infer and is ignored; did you mean 'img_size'?",
        "config key 'entropy_agg' is not used by mining or infer and is ignored; did you mean 'entropy_aggregation'?"]
    caplog.clear()
    build_settings("infer", {"imgsz": 320, "zzz": 1})
    assert [r.getMessage() for r in caplog.records] == [
        "config key 'imgsz' is not used by infer and is ignored; did you mean 'img_size'?",
        "config key 'zzz' is not used by infer and is ignored"]


def env_of(data):
    return parse_env(data, "env.yaml", start.DEFAULT_INPUT, start.DEFAULT_OUTPUT)


def test_env_defaults_and_flags(tmp_path):
    env = env_of({"run_mining": True, "run_infer": "true"})
    assert env.run_mining and env.run_infer and not env.run_training
    assert env.protocol_version == "0.0.1" and env.infer_list_key == "annotations"
    assert env.output_path("monitor_file") == "/out/monitor.txt"
    assert env_of({"run_infer": True, "protocol_version": "1.1.0"}).infer_list_key == "boxes"


@pytest.mark.parametrize("data, needle", [
    ({}, "nothing to do"),
    ({"run_training": True, "run_mining": True}, "cannot be combined"),
    ({"run_mining": True, "input": "x"}, "'input' must be a mapping"),
    ({"run_mining": True, "protocol_version": "one"}, "protocol_version"),
])
def test_bad_env(data, needle):
    with pytest.raises(ConfigError, match=needle):
        env_of(data)


def test_env_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "env.yaml"
    with pytest.raises(ConfigError, match=str(missing)):
        read_yaml_mapping(str(missing), "env.yaml")
    missing.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml_mapping(str(missing), "env.yaml")
    missing.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml_mapping(str(missing), "env.yaml")


def test_resolve_weights_prefers_best_then_newest(tmp_path):
    (tmp_path / "stage").mkdir()
    old, new, best = (tmp_path / "stage" / n for n in ("a.pt", "b.pt", "best_x.pt"))
    for i, f in enumerate((best, old, new)):
        f.write_bytes(b"x")
        import os
        os.utime(f, (1000 + i, 1000 + i))
    assert resolve_weights(("stage/a.pt", "stage/b.pt"), str(tmp_path)) == str(new)
    assert resolve_weights(("stage/a.pt", str(best), "stage/b.pt"), str(tmp_path)) == str(best)
    with pytest.raises(ModelError, match="missing.pt") as err:
        resolve_weights(("missing.pt",), str(tmp_path))
    assert err.value.code == 300004


@pytest.mark.parametrize("given, read", [("val", "val"), ("all", "all"), ("off", "off"), (False, "off"),
                                         ("no", "off"), (True, "val")])
def test_label_audit_reads_yamls_bare_off(given, read):
    """YAML reads a bare `off` as False: label_audit takes it as 'off' (and True as the default scope, val)."""
    assert build_settings("training", {"label_audit": given}).label_audit == read


def test_label_audit_names_its_choices():
    with pytest.raises(ConfigError, match="'label_audit': 'train' is not allowed; expected one of val, all, off"):
        build_settings("training", {"label_audit": "train"})
