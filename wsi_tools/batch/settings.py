"""Extraction settings for a batch: ``configs/extract.yaml`` merged with CLI flags.

The keys are the fields of :class:`wsi_tools.extract.ExtractionConfig` except
``set`` and ``slide_mpp``, which come from each manifest row; ``magnification``
may stand in for ``target_mpp``. Defaults are ExtractionConfig's own, so a
batch without ``--config`` extracts exactly like ``wsi-tools extract`` (only
``threads`` differs: 1, as the batch parallelises over slides instead).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_tools.config_file import read_yaml_mapping
from wsi_tools.errors import ConfigError
from wsi_tools.geometry import mpp_for_magnification
from wsi_tools.options import default_of

if TYPE_CHECKING:
    from wsi_tools.extract import ExtractionConfig

PER_SLIDE_KEYS = ("set", "slide_mpp")  # from the manifest, never from the config
# A batch runs one slide per worker process, one process per core: encoder
# threads beyond the reading thread would only compete with the other slides.
BATCH_DEFAULTS = {"threads": 1}


def default_settings() -> dict[str, Any]:
    """ExtractionConfig's defaults for every key a config file may set (threads: 1)."""
    from wsi_tools.extract import ExtractionConfig

    settings = {
        spec.name: default_of(spec)
        for spec in dataclasses.fields(ExtractionConfig)
        if spec.name not in PER_SLIDE_KEYS
    }
    settings.update({key: value for key, value in BATCH_DEFAULTS.items() if key in settings})
    return settings


def _number(key: str, value: Any, origin: str) -> float:
    if isinstance(value, str):  # "1/3" reads better than 0.333... in a config file
        with contextlib.suppress(ValueError, ZeroDivisionError):
            value = float(Fraction(value.strip()))
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{origin}: {key} must be a number, got {value!r}")
    return float(value)


def _apply(settings: dict[str, Any], values: Mapping[str, Any], origin: str, base: Path | None) -> None:
    """``values`` over ``settings``, checked and coerced by ExtractionConfig's own fields."""
    defaults = default_settings()
    known = sorted([*defaults, "magnification"])
    if "magnification" in values and "target_mpp" in values:
        raise ConfigError(f"{origin}: give target_mpp or magnification, not both")
    merged = dict(settings)
    for key, value in values.items():
        if key == "magnification":
            magnification = _number(key, value, origin)
            if magnification <= 0:
                raise ConfigError(f"{origin}: magnification must be positive, e.g. 5, got {value!r}")
            key, value = "target_mpp", mpp_for_magnification(magnification)
        if key in PER_SLIDE_KEYS:
            raise ConfigError(f"{origin}: {key} is set per slide in the manifest, not in the config")
        if key not in defaults:
            raise ConfigError(f"{origin}: unknown key {key!r}; known keys: {', '.join(known)}")
        if isinstance(defaults[key], float) and isinstance(value, str):
            value = _number(key, value, origin)
        if key == "label_map" and isinstance(value, str) and base is not None and (base / value).is_file():
            # Relative to the config file (or the shell for a flag): workers may run elsewhere.
            # Anything else stays as is: a bare name such as "camelyon" names a shipped map.
            value = str((base / value).resolve())
        if key == "label_map" and value is not None:
            _check_label_map(value, origin)
        merged[key] = value
    try:
        config = extraction_config(merged, "weak", None)
    except ConfigError as error:
        raise ConfigError(f"{origin}: {error}") from None
    settings.update({key: getattr(config, key) for key in merged})


def _check_label_map(value: Any, origin: str) -> None:
    """A label map that does not load is reported against the config that names it."""
    from wsi_tools.annotations import load_label_map

    try:
        load_label_map(value)
    except ConfigError as error:
        raise ConfigError(f"{origin}: label_map {value!r}: {error}") from None


def load_settings(
    config_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Defaults, then the YAML file, then ``overrides`` (CLI flags; None values ignored)."""
    settings = default_settings()
    if config_path is not None:
        path = Path(config_path).expanduser().resolve()
        values = read_yaml_mapping(path)
        _apply(settings, values, str(path), path.parent)
    if overrides:
        given = {key: value for key, value in overrides.items() if value is not None}
        _apply(settings, given, "command line", Path.cwd())
    return settings


def extraction_config(
    settings: Mapping[str, Any], set_name: str, slide_mpp: float | None
) -> ExtractionConfig:
    """The ExtractionConfig of one slide: the batch settings plus its manifest row."""
    from wsi_tools.extract import ExtractionConfig

    return ExtractionConfig(set=set_name, slide_mpp=slide_mpp, **settings)
