"""The training recipe: a frozen dataclass read from YAML, validated key by key.

No torch here, so the CLI can list the keys in ``--help`` without loading it.
Every key is declared once, with its help, check and whether it changes the
result (:func:`wsi_tools.options.option`); ``configs/train.yaml`` repeats the
help lines as comments (a test checks that none is missing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from wsi_tools.options import (
    Overrides,
    at_least,
    between,
    describe,
    device_name,
    from_mapping,
    load_layered,
    one_of,
    option,
    positive,
    proper_fraction,
    to_plain,
    unit_interval,
    validate,
)

SPLIT_NAMES = ("train", "val", "test")
STORE_SETS = ("hard", "weak")


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


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (paper defaults)."""

    store: str | None = option(
        None, "patch store to train from (the --store flag wins); null = give --store", output=False
    )
    out: str | None = option(
        None, "run folder to write (the --out flag wins); null = give --out", output=False
    )
    seed: int = option(
        0,
        "seeds Python, NumPy and torch, the splits, subsampling and the epoch order",
        check=between(0, 2**32 - 1),
    )
    deterministic: bool = option(
        False, "torch.use_deterministic_algorithms(True) and no cuDNN autotuning (slower, repeatable)"
    )
    weights: str = option(
        "none",
        "initial weights: none (random) | imagenet (torchvision ResNet18 IMAGENET1K_V1 from the local torch hub cache, never downloaded) | PATH to a local state dict",
        check=_check_weights,
    )
    input_size: int = option(
        224, "patches are resized to input_size x input_size before the network", check=between(32, 4096)
    )
    epochs: int = option(30, "number of epochs (the paper: 30)", check=at_least(1))
    batch_size: int = option(64, "patches per batch (per process under torchrun)", check=at_least(1))
    lr: float = option(1e-4, "Adam learning rate (the paper: 1e-4)", check=positive)
    weight_decay: float = option(0.0, "Adam weight decay", check=at_least(0))
    eta_min: float = option(
        0.0,
        "learning rate at the end of the cosine schedule (stepped per batch over the whole run)",
        check=at_least(0),
    )
    early_stopping_patience: int = option(
        0, "stop after this many epochs without a lower validation loss; 0 = never", check=at_least(0)
    )
    threshold: float = option(
        0.1,
        "decision threshold on the positive probability (prob >= threshold is positive; the paper: 0.1)",
        check=unit_interval,
    )
    train_sets: tuple[str, ...] = option(
        ("hard",),
        "store sets whose slides are split into train/val/test; weak slides are the mining pool and stay out unless listed",
        check=_check_sets,
    )
    split_ratios: tuple[float, ...] = option(
        (0.6, 0.2, 0.2),
        "train:val:test ratios of slides, stratified by slide label (positive = any positive patch)",
        check=_check_ratios,
    )
    allow_empty_splits: bool = option(
        False,
        "train even when the validation or test split holds no patch: best.pt is then the last epoch "
        "(no validation chose it) and the test metrics are n/a",
        output=False,
    )
    splits_file: str | None = option(
        None,
        "CSV with slide_id,split (or a batch manifest with a split column); listed slides keep that split, the others are split by ratio",
    )
    balanced_sampler: bool = option(
        False, "draw training patches with class-balanced weights (with replacement) instead of a shuffle"
    )
    train_fraction: float = option(
        1.0, "keep this seeded fraction of all training patches (ablations); 1 = all", check=proper_fraction
    )
    positive_fraction: float = option(
        1.0,
        "keep this seeded fraction of the training positives only (imbalance ablations); 1 = all",
        check=proper_fraction,
    )
    augment: bool = option(
        True,
        "training augmentation: flips, transpose, shift-scale, elastic, blur, noise, brightness-contrast",
    )
    transforms_on: str = option(
        "auto",
        "where augment/normalise run: device (per batch, on the GPU when there is one; on CUDA the loader workers only read and decompress, on the CPU they also resize the uint8 patch) | loader (everything in the workers, per patch) | auto (device on CUDA, loader on CPU)",
        check=one_of("auto", "device", "loader"),
    )
    cpu_threads: int = option(
        0,
        "torch CPU threads (0: torch's default, one per core). A convolution's sums run in an order "
        "that depends on it, so fix it (the demo uses 2) to repeat a CPU run bit for bit on another machine",
        check=between(0, 1024),
        output=False,
    )
    num_workers: int = option(
        2, "DataLoader worker processes that read and decompress patches", check=at_least(0), output=False
    )
    device: str = option(
        "auto",
        "auto (CUDA when present, else CPU) | cpu | cuda | cuda:N (under torchrun, cuda:LOCAL_RANK)",
        check=device_name,
        output=False,
    )
    amp: str = option(
        "auto",
        "mixed precision on CUDA: auto (bf16 if supported, else fp16 with a GradScaler) | bf16 | fp16 | off; always off on CPU",
        check=one_of("auto", "bf16", "fp16", "off"),
    )
    channels_last: bool = option(True, "channels_last memory format on CUDA")
    bootstrap: int = option(
        1000, "bootstrap resamples for the 95% confidence intervals (seeded); 0 = no CIs", check=at_least(0)
    )
    progress: bool = option(
        True, "show tqdm progress bars (on stderr, only when it is a terminal)", output=False
    )

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), so YAML and ``torch.load(weights_only=True)`` accept it."""
        return to_plain(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], source: str = "<config>") -> TrainConfig:
        """Validate ``mapping`` (unknown keys, types, values); errors name the key and ``source``."""
        result: TrainConfig = from_mapping(cls, mapping, source)
        return result


KEY_HELP: dict[str, str] = {spec.name: spec.metadata["help"] for spec in fields(TrainConfig)}


def load_config(path: str | Path | None = None, overrides: Overrides = ()) -> TrainConfig:
    """Read a YAML config (None = defaults) and apply overrides (``key=value`` strings or a mapping)."""
    return load_layered(path, overrides, TrainConfig.from_mapping)


def describe_keys() -> str:
    """One line per key with its default, for ``wsi-tools train --help``."""
    return describe(TrainConfig)
