"""Reading YAML configuration files with errors that name the file and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from wsi_tools.errors import ConfigError


def packaged_config(name: str) -> Path:
    """A file or folder of the default configs (``configs/`` in the repo, ``wsi_tools.configs``
    once installed), e.g. ``packaged_config("hnm.yaml")`` or ``packaged_config("labels")``."""
    # Wheels install unpacked, so the resource is a real path that relative references
    # (train_config: train.yaml) can be resolved against.
    return Path(str(resources.files("wsi_tools.configs") / name))


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it: nested mappings are merged key by key (an
    override of ``mining.alpha`` keeps the other ``mining`` keys); any other value replaces."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file (an empty file gives ``{}``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing YAML file to --config")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the config must be a mapping of key: value lines at the top level")
    return loaded


def required_path(
    given: str | Path | None, configured: str | Path | None, *, flag: str, key: str, what: str
) -> Path:
    """A path from the command line (``given``) or else the config (``configured``); an error
    naming both ways to give it when neither does."""
    path = Path(given or configured or "")
    if str(path) in ("", "."):
        raise ConfigError(f"no {what} given: pass {flag} (or set {key}: in the config)")
    return path
