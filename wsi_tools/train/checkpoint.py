"""Checkpoints of the patch classifier: a typed record, written atomically, read safely.

A checkpoint file is a plain dict of tensors and Python types (loaded with
``torch.load(weights_only=True)``, so no code runs on load). :class:`Checkpoint`
is that dict as a record: what a run needs to resume (model, optimiser,
schedule and scaler states, the epoch and the best-so-far), what inference and
mining need to score the same patches (config, splits, the mined negatives the
model saw) and what ties it to its data (the store fingerprint).

The learning-rate schedule is cosine annealing per batch over the whole run,
as a pure function of the step (:func:`cosine_lr`), so extending a finished
run re-spans the curve by changing its length, with no scheduler surgery.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsi_tools.errors import ConfigError, ModelError, StoreError
from wsi_tools.train.config import TrainConfig

CHECKPOINT_FORMAT = "wsi-tools/checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """The contents of ``best.pt`` / ``last.pt``."""

    config: dict[str, Any]
    model: dict[str, Any]
    splits: dict[str, str]
    epoch: int = 0
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    best_val_loss: float = math.inf
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    extra_train_negatives: list[list[Any]] = field(default_factory=list)
    store_fingerprint: str | None = None
    tool_version: str = ""
    # What inference needs to read the pixels the model was trained on (:func:`pixel_recipe`).
    pixels: dict[str, Any] = field(default_factory=dict)

    def train_config(self, source: str) -> TrainConfig:
        return TrainConfig.from_mapping(self.config, f"{source} (config)")

    def extra_refs(self) -> list[tuple[str, int]]:
        return [(str(slide), int(index)) for slide, index in self.extra_train_negatives]

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config,
            "model": self.model,
            "splits": dict(self.splits),
            "epoch": self.epoch,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "extra_train_negatives": self.extra_train_negatives,
            "store_fingerprint": self.store_fingerprint,
            "tool_version": self.tool_version,
            "pixels": dict(self.pixels),
            "model_sha256": tensors_digest(self.model),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], source: str | Path) -> Checkpoint:
        missing = [key for key in ("config", "model", "splits") if key not in payload]
        if missing:
            raise ConfigError(
                f"{source}: checkpoint lacks {', '.join(missing)}; it is damaged or not from `wsi-tools train`"
            )
        return cls(
            config=dict(payload["config"]),
            model=dict(payload["model"]),
            splits={str(k): str(v) for k, v in dict(payload["splits"]).items()},
            epoch=int(payload.get("epoch", 0)),
            optimizer=dict(payload.get("optimizer", {})),
            scheduler=dict(payload.get("scheduler", {})),
            scaler=dict(payload.get("scaler", {})),
            best_val_loss=float(payload.get("best_val_loss", math.inf)),
            best_epoch=int(payload.get("best_epoch", 0)),
            history=list(payload.get("history", [])),
            extra_train_negatives=[list(r) for r in payload.get("extra_train_negatives", [])],
            store_fingerprint=payload.get("store_fingerprint"),
            tool_version=str(payload.get("tool_version", "")),
            pixels=dict(payload.get("pixels", {})),
        )


ARCHITECTURE = "resnet18, one logit"
PIXEL_KEYS = ("target_mpp", "patch_size", "tolerance")  # from the store's slides


def pixel_recipe(store: Any, slide_ids: Sequence[str], config: TrainConfig) -> dict[str, Any]:
    """How the training patches were made and fed to the network: the store's
    resolution and patch size (where every training slide agrees), the input size,
    the normalisation and the architecture. A key the slides disagree on, or do
    not record (an imported PNG dataset), is None: inference then asks for it."""
    from wsi_tools.train.augment import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

    found: dict[str, set[Any]] = {key: set() for key in PIXEL_KEYS}
    for slide_id in slide_ids:
        attrs = store.slide_attrs(slide_id)
        params = attrs.get("params") or {}
        found["target_mpp"].add(attrs.get("target_mpp"))
        found["patch_size"].add(attrs.get("patch_size"))
        found["tolerance"].add(params.get("tolerance"))
    recipe: dict[str, Any] = {
        key: next(iter(values)) if len(values) == 1 else None for key, values in found.items()
    }
    recipe.update(
        input_size=config.input_size,
        mean=list(IMAGENET_MEAN_RGB),
        std=list(IMAGENET_STD_RGB),
        colour="RGB",
        architecture=ARCHITECTURE,
    )
    return recipe


def tensors_digest(state: Mapping[str, Any]) -> str:
    """sha256 of a state dict: every entry's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{flat.dtype}{tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def check_model_state(path: str | Path, state: Any, recorded_digest: Any) -> None:
    """Refuse weights that fail the checksum written with them, or that are not
    finite (a NaN model scores nothing positive, so mining would find 0 false
    positives and exit 0)."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: the checkpoint's model is not a state dict of tensors; it is damaged")
    if recorded_digest is not None and tensors_digest(state) != recorded_digest:
        raise ModelError(
            f"{path}: the model weights do not match the checksum written with them, so the file "
            "was damaged or edited after training; use the run's other checkpoint (best.pt or "
            "last.pt) or train again"
        )
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(
                f"{path}: weight {name!r} holds NaN or infinite values; the run diverged or the "
                "file is damaged (train again, with a lower --set lr=...)"
            )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded with ``weights_only=True`` (no code runs on load);
    its weights checked against their checksum and for non-finite values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found; give a best.pt or last.pt from a run folder")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"{path}: not a wsi-tools checkpoint (expected best.pt or last.pt from `wsi-tools train`)"
        )
    lacking = [key for key in ("config", "model") if not isinstance(checkpoint.get(key), dict)]
    if lacking:
        raise ConfigError(
            f"{path}: checkpoint lacks {' and '.join(lacking)}; it is damaged or not from `wsi-tools train`"
        )
    check_model_state(path, checkpoint["model"], checkpoint.get("model_sha256"))
    return checkpoint


def load_weights(model: torch.nn.Module, state: Mapping[str, Any], source: str | Path) -> None:
    """``model.load_state_dict(state)``, a mismatch being a ModelError naming the file
    (a state dict of another architecture or input size) instead of torch's traceback."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as error:
        first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise ModelError(
            f"{source}: its weights do not fit the model ({ARCHITECTURE}): {first}; use a checkpoint "
            "written by `wsi-tools train`"
        ) from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """:func:`read_checkpoint` as a :class:`Checkpoint` record."""
    return Checkpoint.from_payload(read_checkpoint(path), path)


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write through a temporary file and rename: a crash never leaves a half-written checkpoint."""
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(checkpoint.to_payload(), temporary)
    os.replace(temporary, path)


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` a copy of ``source``: a hard link where the filesystem allows (no second
    write of a large checkpoint; ``source`` is later replaced, never modified, so the link stays)."""
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def cosine_lr(step: int, total_steps: int, base_lr: float, eta_min: float) -> float:
    """The learning rate after ``step`` of ``total_steps`` batches: cosine from ``base_lr`` to ``eta_min``."""
    step = min(max(step, 0), total_steps)
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * step / max(total_steps, 1))) / 2


class CosineSchedule:
    """Per-batch cosine annealing over the whole run, from the optimiser's base learning
    rates to ``eta_min``. Its only state is the step count, so a resumed run continues the
    curve and an extended one re-spans it by its new length (:func:`cosine_lr`)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        eta_min: float,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.eta_min = eta_min
        # Old checkpoints hold torch's CosineAnnealingLR state: the same two keys.
        self.base_lrs = [
            float(b) for b in (state or {}).get("base_lrs", [g["lr"] for g in optimizer.param_groups])
        ]
        self.steps_done = int((state or {}).get("last_epoch", 0))
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = cosine_lr(self.steps_done, self.total_steps, base, self.eta_min)

    def step(self) -> None:
        self.steps_done += 1
        self._apply()

    @property
    def last_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.steps_done, "total_steps": self.total_steps, "base_lrs": self.base_lrs}


def check_store_fingerprint(
    state: Mapping[str, Any], store: Any, checkpoint: str | Path, store_path: str | Path, *, refuse: bool
) -> None:
    """Compare the store with the one the checkpoint was trained from. A resumed run
    refuses a changed store (its epochs would mix two datasets); scoring and mining warn."""
    saved = state.get("store_fingerprint")
    now = str(store.fingerprint())
    if saved is None or str(saved) == now:
        return
    message = (
        f"{store_path}: the store changed since {checkpoint} was trained "
        f"(store fingerprint {saved} then, {now} now: slides were added, replaced or removed)"
    )
    if refuse:
        raise StoreError(f"{message}; resume with the store it was trained from, or start a new run")
    warnings.warn(f"{message}; results may differ from the run's own", UserWarning, stacklevel=2)


def check_resume_splits(
    checkpoint: Checkpoint, given: Mapping[str, str] | None, source: str | Path, given_name: str
) -> None:
    """A resumed run keeps its checkpoint's splits: refuse a ``splits`` argument that differs."""
    if given is None:
        return
    differ = sorted(slide for slide, split in given.items() if checkpoint.splits.get(slide) != split)
    if differ:
        raise ConfigError(
            f"{source}: the splits given ({given_name}) differ from the checkpoint's for "
            f"{len(differ)} slide(s), e.g. {', '.join(differ[:3])}; "
            "resume without them (the checkpoint's are used) or start a new run"
        )


def changed_config_keys(checkpoint: Checkpoint, config: TrainConfig) -> list[str]:
    """The config keys a resumed run changes (paths excepted)."""
    previous = checkpoint.config
    return sorted(
        k for k, v in config.to_dict().items() if k not in ("store", "out") and previous.get(k, v) != v
    )
