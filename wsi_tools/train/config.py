"""The training recipe: a frozen dataclass read from YAML, validated key by key.

No torch here, so the CLI can list the keys in ``--help`` without loading it.
Every key is documented once, in :data:`KEY_HELP`; ``configs/train.yaml``
repeats those lines as comments (a test checks that none is missing).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from wsi_tools.config_file import read_yaml_mapping
from wsi_tools.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")
STORE_SETS = ("hard", "weak")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (paper defaults)."""

    store: str | None = None
    out: str | None = None
    seed: int = 0
    deterministic: bool = False
    weights: str = "none"
    input_size: int = 224
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    eta_min: float = 0.0
    early_stopping_patience: int = 0
    threshold: float = 0.1
    train_sets: tuple[str, ...] = ("hard",)
    split_ratios: tuple[float, ...] = (0.6, 0.2, 0.2)
    splits_file: str | None = None
    balanced_sampler: bool = False
    train_fraction: float = 1.0
    positive_fraction: float = 1.0
    augment: bool = True
    transforms_on: str = "auto"
    num_workers: int = 2
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    bootstrap: int = 1000
    progress: bool = True

    def __post_init__(self) -> None:
        for key, check in _CHECKS.items():
            problem = check(getattr(self, key))
            if problem:
                raise ConfigError(f"bad value for '{key}': {getattr(self, key)!r} ({problem})")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), so YAML and ``torch.load(weights_only=True)`` accept it."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], source: str = "<config>") -> TrainConfig:
        """Validate ``mapping`` (unknown keys, types, values); errors name the key and ``source``."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        hints = typing.get_type_hints(cls)
        values = {key: _coerce(key, value, hints[key], source) for key, value in mapping.items()}
        try:
            return cls(**values)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None


KEY_HELP: dict[str, str] = {
    "store": "patch store to train from (the --store flag wins); null = give --store",
    "out": "run folder to write (the --out flag wins); null = give --out",
    "seed": "seeds Python, NumPy and torch, the splits, subsampling and the epoch order",
    "deterministic": "torch.use_deterministic_algorithms(True) and no cuDNN autotuning (slower, repeatable)",
    "weights": "initial weights: none (random) | imagenet (torchvision ResNet18 IMAGENET1K_V1 from the local torch hub cache, never downloaded) | PATH to a local state dict",
    "input_size": "patches are resized to input_size x input_size before the network",
    "epochs": "number of epochs (the paper: 30)",
    "batch_size": "patches per batch (per process under torchrun)",
    "lr": "Adam learning rate (the paper: 1e-4)",
    "weight_decay": "Adam weight decay",
    "eta_min": "learning rate at the end of the cosine schedule (stepped per batch over the whole run)",
    "early_stopping_patience": "stop after this many epochs without a lower validation loss; 0 = never",
    "threshold": "decision threshold on the positive probability (prob >= threshold is positive; the paper: 0.1)",
    "train_sets": "store sets whose slides are split into train/val/test; weak slides are the mining pool and stay out unless listed",
    "split_ratios": "train:val:test ratios of slides, stratified by slide label (positive = any positive patch)",
    "splits_file": "CSV with slide_id,split (or a batch manifest with a split column); listed slides keep that split, the others are split by ratio",
    "balanced_sampler": "draw training patches with class-balanced weights (with replacement) instead of a shuffle",
    "train_fraction": "keep this seeded fraction of all training patches (ablations); 1 = all",
    "positive_fraction": "keep this seeded fraction of the training positives only (imbalance ablations); 1 = all",
    "augment": "training augmentation: flips, transpose, shift-scale, elastic, blur, noise, brightness-contrast",
    "transforms_on": "where augment/normalise run: device (per batch, on the GPU when there is one; on CUDA the loader workers only read and decompress, on the CPU they also resize the uint8 patch) | loader (everything in the workers, per patch) | auto (device on CUDA, loader on CPU)",
    "num_workers": "DataLoader worker processes that read and decompress patches",
    "device": "auto (CUDA when present, else CPU) | cpu | cuda | cuda:N (under torchrun, cuda:LOCAL_RANK)",
    "amp": "mixed precision on CUDA: auto (bf16 if supported, else fp16 with a GradScaler) | bf16 | fp16 | off; always off on CPU",
    "channels_last": "channels_last memory format on CUDA",
    "bootstrap": "bootstrap resamples for the 95% confidence intervals (seeded); 0 = no CIs",
    "progress": "show tqdm progress bars (on stderr, only when it is a terminal)",
}


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def _choice(*options: str) -> typing.Callable[[str], str | None]:
    return lambda value: None if value in options else f"must be one of {', '.join(options)}"


def _check_device(value: str) -> str | None:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return None
    return "must be auto, cpu, cuda or cuda:N"


def _check_ratios(value: tuple[float, ...]) -> str | None:
    if len(value) != 3 or any(r < 0 for r in value) or value[0] <= 0:
        return "must be three non-negative numbers [train, val, test] with train > 0"
    return None


def _check_sets(value: tuple[str, ...]) -> str | None:
    if not value or any(item not in STORE_SETS for item in value):
        return f"must be a non-empty list of {', '.join(STORE_SETS)}"
    return None


def _check_weights(value: str) -> str | None:
    return None if value.strip() else "must be none, imagenet or a path"


_CHECKS: dict[str, typing.Callable[[Any], str | None]] = {
    "seed": lambda v: None if v >= 0 else "must be >= 0",
    "weights": _check_weights,
    "input_size": lambda v: None if v >= 32 else "must be >= 32",
    "epochs": lambda v: None if v >= 1 else "must be >= 1",
    "batch_size": lambda v: None if v >= 1 else "must be >= 1",
    "lr": _positive,
    "weight_decay": lambda v: None if v >= 0 else "must be >= 0",
    "eta_min": lambda v: None if v >= 0 else "must be >= 0",
    "early_stopping_patience": lambda v: None if v >= 0 else "must be >= 0",
    "threshold": lambda v: None if 0 <= v <= 1 else "must be in [0, 1]",
    "train_sets": _check_sets,
    "split_ratios": _check_ratios,
    "train_fraction": _fraction,
    "positive_fraction": _fraction,
    "transforms_on": _choice("auto", "device", "loader"),
    "num_workers": lambda v: None if v >= 0 else "must be >= 0",
    "device": _check_device,
    "amp": _choice("auto", "bf16", "fp16", "off"),
    "bootstrap": lambda v: None if v >= 0 else "must be >= 0",
}


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """Check ``value`` against the field's type; accept ints for floats and YAML lists for tuples."""

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: bad value for '{key}': {value!r} (expected {expected})")

    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None:
            return None
        (hint,) = [arg for arg in args if arg is not type(None)]
        args = typing.get_args(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise bad("a list")
        item_hint = args[0]
        return tuple(_coerce(key, item, item_hint, source) for item in value)
    raise AssertionError(f"unsupported field type {hint} for {key}")


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as YAML (``2``, ``true``, ``[hard, weak]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set epochs=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({error})") from None
    return key.strip(), value


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> TrainConfig:
    """Read a YAML config (None = defaults) and apply overrides (``key=value`` strings or a mapping)."""
    mapping: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        loaded = read_yaml_mapping(path)
        mapping.update(loaded)
        # Validate the file on its own first so an error names the file, not the overrides.
        TrainConfig.from_mapping(mapping, source)
    if isinstance(overrides, Mapping):
        override_items = list(overrides.items())
        override_source = "overrides"
    else:
        override_items = [parse_override(text) for text in overrides]
        override_source = "--set"
    for key, value in override_items:
        # Each override alone first, so an error names the override rather than the file.
        TrainConfig.from_mapping({key: value}, f"{override_source} {key}={value!r}")
        mapping[key] = value
    return TrainConfig.from_mapping(
        mapping, source if not override_items else f"{source} + {override_source}"
    )


def describe_keys() -> str:
    """One line per key with its default, for ``wsi-tools train --help``."""
    defaults = TrainConfig().to_dict()
    lines = []
    for key, text in KEY_HELP.items():
        lines.append(
            f"  {key} (default {yaml.safe_dump(defaults[key], default_flow_style=True).strip().removesuffix('...').strip()}): {text}"
        )
    return "\n".join(lines)
