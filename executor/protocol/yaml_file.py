"""Reading the protocol's YAML files (env.yaml, config.yaml, templates, manifest): every failure names the file.
"""

import os

import yaml

from executor.errors import ConfigError


# ---------------------------------------------------------------- reading YAML files

def read_yaml_mapping(path: str, what: str) -> dict:
    """A YAML file that must hold a mapping; every failure names the file."""
    if not os.path.isfile(path):
        raise ConfigError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a YAML mapping, not {type(data).__name__}")
    return data
