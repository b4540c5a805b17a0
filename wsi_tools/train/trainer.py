"""Training, checkpoints, scoring and evaluation of the patch classifier.

Stable API (the mining pipeline builds on it):

- ``train(config, store_path=None, out_dir=None, *, splits=None,
  extra_train_negatives=(), resume=None) -> TrainResult(run_dir,
  best_checkpoint, metrics, ...)``. Splits are by slide (see
  :mod:`wsi_tools.train.splits`); ``splits`` (a mapping or a CSV path) fixes
  the split of the slides it names. ``extra_train_negatives`` are
  :class:`~wsi_tools.train.data.PatchRef` s (mined patches of the weak set)
  added, with label 0, to the training split only; a reference to a
  validation or test slide raises. The model is initialised right after
  seeding, so two runs with the same ``seed`` and ``weights`` start from the
  same weights (the weak and strong models of the paper).
- ``load_model(checkpoint, device="cpu") -> (PatchClassifier, TrainConfig)``
  in eval mode; ``read_checkpoint(path)`` gives the whole checkpoint dict
  (``splits``, ``history``, ``extra_train_negatives``, ...).
- ``predict(model, store_path, refs, batch_size, device) -> probs`` (N,)
  and ``embed_patches(...) -> (N, 512)`` float32, both in ``refs`` order,
  with the evaluation transform (resize + normalise, no augmentation).
- ``evaluate(checkpoint, store_path, split="test", out_dir=None) -> metrics``.

Run folder: ``config.yaml``, ``splits.csv``, ``best.pt`` (lowest validation
loss), ``last.pt``, ``history.csv``, ``predictions.csv``
(``slide_id,x,y,label,prob,split`` for every validation and test patch),
``metrics.json`` (see :func:`report`), ``roc.png``, ``pr.png``, ``loss.png``.

Checkpoints are plain dicts of tensors and Python types, loaded with
``torch.load(weights_only=True)``: ``model``, ``optimizer``, ``scheduler``,
``scaler``, ``epoch`` (completed epochs), ``config``, ``splits``,
``best_val_loss``, ``best_epoch``, ``history``, ``extra_train_negatives``,
``store_fingerprint``. ``resume=last.pt`` continues the same run: the epoch
count, the per-batch cosine schedule, the optimiser moments and the epoch
order (a function of seed and epoch) carry on, so an interrupted run resumed
ends where a straight run would.

Distributed training: launch with ``torchrun --nproc_per_node=N -m wsi_tools
train ...``. When ``WORLD_SIZE > 1`` each process joins the process group
(NCCL on CUDA, else gloo), uses ``cuda:LOCAL_RANK``, reads every
``WORLD_SIZE``-th patch of the epoch order (``EpochSampler``), wraps the
model in ``DistributedDataParallel``, all-reduces the validation loss so that
every rank takes the same best-checkpoint and early-stopping decisions, and
only rank 0 writes files and scores the validation and test splits.

On CUDA: autocast (bf16 where supported, else fp16 with a GradScaler),
channels_last, pinned memory and non-blocking copies, and the resize /
augmentation / normalisation run per batch on the GPU (``transforms_on``).
On the CPU everything runs at full precision.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from wsi_tools import __version__
from wsi_tools.config_file import required_path
from wsi_tools.errors import ConfigError, StoreError
from wsi_tools.train.augment import BatchTransform, sample_transform
from wsi_tools.train.config import SPLIT_NAMES, TrainConfig
from wsi_tools.train.data import (
    EpochSampler,
    PatchDataset,
    PatchRef,
    PatchTable,
    balanced_weights,
    collate_patches,
    open_store,
    slide_infos,
    table_from_refs,
)
from wsi_tools.train.metrics import compute_metrics, slide_scores
from wsi_tools.train.model import PatchClassifier, build_model
from wsi_tools.train.plots import plot_loss, plot_pr, plot_roc
from wsi_tools.train.runtime import (
    Runtime,
    log,
    progress_enabled,
    reproducibility,
    resolve_device,
    seed_everything,
    start_runtime,
)
from wsi_tools.train.splits import assert_disjoint, make_splits, read_splits_csv, write_splits_csv
from wsi_tools.train.tables import split_table, training_table

CHECKPOINT_FORMAT = "wsi-tools/checkpoint"


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    metrics: dict[str, Any]
    last_checkpoint: Path | None = None
    splits: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- data plumbing


def _transform_placement(config: TrainConfig, runtime: Runtime) -> str:
    if config.transforms_on == "auto":
        return "device" if runtime.cuda else "loader"
    return config.transforms_on


def _worker_resize(input_size: int, runtime: Runtime) -> int | None:
    """What the loader workers do when the device transforms the batch: on CUDA nothing
    but read and decompress; on the CPU also the uint8 resize (one call per batch), which
    cuts the bytes passed between processes about 5x for 512 -> 224 (the device resize is
    then a no-op)."""
    return None if runtime.cuda else input_size


def _loader(
    dataset: PatchDataset,
    batch_size: int,
    sampler: Sampler[int] | Sequence[int],
    num_workers: int,
    runtime: Runtime,
    seed: int,
    drop_last: bool = False,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=runtime.cuda,
        drop_last=drop_last,
        # A generator per epoch seeds the workers from (seed, epoch), so a resume replays them.
        generator=torch.Generator().manual_seed(seed),
        prefetch_factor=4 if num_workers else None,
        collate_fn=collate_patches,  # a batch resized in the worker is passed on whole
    )


def _to_device(
    images: torch.Tensor, runtime: Runtime, batch_transform: BatchTransform | None
) -> torch.Tensor:
    images = images.to(runtime.device, non_blocking=True)
    if batch_transform is not None:
        images = batch_transform(images)
    if runtime.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


@torch.no_grad()
def _logits(
    model: PatchClassifier,
    store_path: Path,
    table: PatchTable,
    batch_size: int,
    runtime: Runtime,
    *,
    num_workers: int = 0,
    rows: Sequence[int] | None = None,
    progress: bool = False,
    embed: bool = False,
    desc: str = "scoring",
) -> np.ndarray:
    """Logits (or embeddings) of ``table`` (or of its ``rows``) with the evaluation transform on the device."""
    model.eval()
    dataset = PatchDataset(store_path, table, resize=_worker_resize(model.input_size, runtime))
    order = list(range(len(table))) if rows is None else list(rows)
    loader = _loader(dataset, batch_size, order, num_workers, runtime, seed=0)
    transform = BatchTransform(model.input_size, augment=False).to(runtime.device)
    outputs = []
    for images, _ in tqdm(loader, desc=desc, disable=not progress_enabled(progress, runtime), leave=False):
        x = _to_device(images, runtime, transform)
        with runtime.autocast():
            out = model.embed(x) if embed else model(x)
        outputs.append(out.float().cpu())
    dataset.close()
    if not outputs:
        return np.zeros((0, 512) if embed else (0,), dtype=np.float32)
    return torch.cat(outputs).numpy()


def _bce(logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Summed BCE-with-logits (float64) and count."""
    loss = nn.functional.binary_cross_entropy_with_logits(
        torch.as_tensor(logits, dtype=torch.float64),
        torch.as_tensor(labels, dtype=torch.float64),
        reduction="sum",
    )
    return float(loss), len(labels)


def _probs(logits: np.ndarray) -> np.ndarray:
    return torch.sigmoid(torch.as_tensor(logits, dtype=torch.float64)).numpy()


# ---------------------------------------------------------------- public inference API


def _inference_runtime(device: str | torch.device) -> Runtime:
    device = resolve_device(device) if isinstance(device, str) else device
    amp = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return Runtime(device=device, amp_dtype=amp, channels_last=device.type == "cuda")


def _prepare(model: PatchClassifier, runtime: Runtime) -> PatchClassifier:
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def predict(
    model: PatchClassifier,
    store_path: str | Path,
    refs: Sequence[PatchRef | tuple[str, int]],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    *,
    num_workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Positive-class probabilities (N,) float64 of the referenced patches, in ``refs`` order."""
    runtime = _inference_runtime(device)
    table = table_from_refs(open_store(store_path), refs)
    logits = _logits(
        _prepare(model, runtime),
        Path(store_path),
        table,
        batch_size,
        runtime,
        num_workers=num_workers,
        progress=progress,
    )
    return _probs(logits)


def embed_patches(
    model: PatchClassifier,
    store_path: str | Path,
    refs: Sequence[PatchRef | tuple[str, int]],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    *,
    num_workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Penultimate 512-d features (N, 512) float32 of the referenced patches, in ``refs`` order."""
    runtime = _inference_runtime(device)
    table = table_from_refs(open_store(store_path), refs)
    return _logits(
        _prepare(model, runtime),
        Path(store_path),
        table,
        batch_size,
        runtime,
        num_workers=num_workers,
        progress=progress,
        embed=True,
        desc="embedding",
    ).astype(np.float32)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded with ``weights_only=True`` (no code runs on load)."""
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
    return checkpoint


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
    print(f"warning: {message}; results may differ from the run's own", file=sys.stderr, flush=True)


def load_model(
    checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[PatchClassifier, TrainConfig]:
    """The trained model (eval mode, on ``device``) and the config it was trained with."""
    state = read_checkpoint(checkpoint)
    config = TrainConfig.from_mapping(state["config"], f"{checkpoint} (config)")
    model = PatchClassifier(config.input_size)
    model.load_state_dict(state["model"])
    device = resolve_device(device) if isinstance(device, str) else device
    return model.to(device).eval(), config


# ---------------------------------------------------------------- splits and tables


def _given_splits(splits: Mapping[str, str] | str | Path) -> dict[str, str]:
    """A ``splits`` argument: a slide -> split mapping, or a CSV path to read one from."""
    return read_splits_csv(splits) if isinstance(splits, str | Path) else dict(splits)


def _fixed_splits(
    config: TrainConfig, splits: Mapping[str, str] | str | Path | None, infos: Mapping[str, Any]
) -> dict[str, str]:
    """Splits decided before the ratio split; precedence: ``splits`` argument, splits_file, store attrs."""
    fixed = {s: info.split for s, info in infos.items() if info.split}
    if config.splits_file:
        fixed.update(read_splits_csv(config.splits_file))
    if splits is not None:
        fixed.update(_given_splits(splits))
    return fixed


def build_splits(
    config: TrainConfig,
    store: Any,
    splits: Mapping[str, str] | str | Path | None = None,
    runtime: Runtime | None = None,
) -> dict[str, str]:
    """Slide -> split for the slides of ``config.train_sets`` (weak slides stay out unless listed)."""
    infos = slide_infos(store)
    candidates = {s: info for s, info in infos.items() if info.set in config.train_sets}
    if not candidates:
        raise StoreError(
            f"{store.path if hasattr(store, 'path') else 'store'}: no complete slide of set(s) "
            f"{', '.join(config.train_sets)}; extract some first or change train_sets"
        )
    fixed = _fixed_splits(config, splits, infos)
    ignored = sorted(set(fixed) - set(candidates))
    if ignored:
        log(
            runtime,
            f"note: {len(ignored)} slide(s) with a given split are not training candidates and are ignored: {', '.join(ignored[:5])}",
        )
    result = make_splits(
        {s: info.label for s, info in candidates.items()},
        config.split_ratios,
        config.seed,
        fixed={s: v for s, v in fixed.items() if s in candidates},
    )
    assert_disjoint({name: [s for s, v in result.items() if v == name] for name in SPLIT_NAMES})
    return result


# ---------------------------------------------------------------- checkpoints


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)  # a crash never leaves a half-written checkpoint


def _same_file(source: Path, target: Path) -> None:
    """Make ``target`` a copy of ``source``: a hard link where the filesystem allows (no second
    write of a large checkpoint; ``source`` is later replaced, never modified, so the link stays)."""
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def _unwrap(model: nn.Module) -> PatchClassifier:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # type: ignore[return-value]


# ---------------------------------------------------------------- training


@dataclass
class _State:
    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    batch_transform: BatchTransform | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    progress: bool,
    desc: str,
) -> tuple[float, int]:
    """One pass; returns (mean loss over this process's patches, patches seen)."""
    model.train()
    criterion = nn.BCEWithLogitsLoss(reduction="sum")
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    seen = 0
    bar = tqdm(loader, desc=desc, disable=not progress_enabled(progress, runtime), leave=False, unit="batch")
    for step, (images, labels) in enumerate(bar):
        x = _to_device(images, runtime, batch_transform)
        y = labels.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(x)
        loss = criterion(logits.float(), y) / len(y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()  # per batch: cosine annealing over the whole run
        loss_sum += loss.detach().double() * len(y)
        seen += len(y)
        if step % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    return float(loss_sum) / max(seen, 1), seen


def _val_loss(
    model: nn.Module, store_path: Path, table: PatchTable, config: TrainConfig, runtime: Runtime
) -> float | None:
    """Mean validation BCE; under DDP each rank scores a share and the sums are all-reduced."""
    if not len(table):
        return None
    rows = list(range(runtime.rank, len(table), runtime.world_size))
    logits = _logits(
        _unwrap(model),
        store_path,
        table,
        config.batch_size,
        runtime,
        num_workers=config.num_workers,
        rows=rows,
    )
    total, count = _bce(logits, table.labels[rows])
    if runtime.distributed:
        reduced = torch.tensor([total, count], dtype=torch.float64, device=runtime.device)
        dist.all_reduce(reduced)
        total, count = float(reduced[0]), int(reduced[1])
    return total / count


def train(
    config: TrainConfig,
    store_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    splits: Mapping[str, str] | str | Path | None = None,
    extra_train_negatives: Sequence[PatchRef | tuple[str, int]] = (),
    resume: str | Path | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train the patch classifier on ``store_path`` and write the run folder ``out_dir``.

    ``store_path``/``out_dir`` default to ``config.store``/``config.out``. See the
    module docstring for ``splits``, ``extra_train_negatives`` and ``resume``.
    """
    store_path = required_path(store_path, config.store, flag="--store STORE", key="store", what="store")
    out_dir = required_path(out_dir, config.out, flag="--out RUN_DIR", key="out", what="run folder")
    config = config.replace(store=str(store_path), out=str(out_dir))
    progress = config.progress if progress is None else progress
    runtime = start_runtime(config)
    try:
        with reproducibility(config, runtime):
            return _train(
                config, store_path, out_dir, splits, extra_train_negatives, resume, progress, runtime
            )
    finally:
        if runtime.owns_process_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    store_path: Path,
    out_dir: Path,
    splits_arg: Mapping[str, str] | str | Path | None,
    extra_refs: Sequence[PatchRef | tuple[str, int]],
    resume: str | Path | None,
    progress: bool,
    runtime: Runtime,
) -> TrainResult:
    # Seed, then build the model first: the same seed and weights give the same initial model.
    seed_everything(config.seed)
    model = build_model(config.weights, config.input_size)
    checkpoint = read_checkpoint(resume) if resume else None

    store = open_store(store_path)
    if checkpoint is not None:
        check_store_fingerprint(checkpoint, store, str(resume), store_path, refuse=True)
        splits = dict(checkpoint["splits"])
        if splits_arg is not None:
            given = _given_splits(splits_arg)
            differ = sorted(slide for slide, split in given.items() if splits.get(slide) != split)
            if differ:
                raise ConfigError(
                    f"{resume}: the splits given ({splits_arg if isinstance(splits_arg, str | Path) else 'splits='}) "
                    f"differ from the checkpoint's for {len(differ)} slide(s), e.g. {', '.join(differ[:3])}; "
                    "resume without them (the checkpoint's are used) or start a new run"
                )
        if not extra_refs:
            extra_refs = [tuple(r) for r in checkpoint.get("extra_train_negatives", [])]
        _warn_changed_config(checkpoint, config, runtime)
    else:
        splits = build_splits(config, store, splits_arg, runtime)
    if runtime.distributed:
        shared = [splits]
        dist.broadcast_object_list(shared, src=0)
        splits = shared[0]

    tables = {name: split_table(store, splits, name) for name in SPLIT_NAMES}
    built = training_table(store, splits, config, extra_refs)
    train_table, extra = built.table, built.extra
    if len(train_table) < 2:
        raise ConfigError(
            f"{store_path}: the training split has {len(train_table)} patch(es); need at least 2"
        )
    log(
        runtime,
        "slides: "
        + ", ".join(f"{n} {sum(v == n for v in splits.values())}" for n in SPLIT_NAMES)
        + f" | patches: train {len(train_table)} ({int(train_table.labels.sum())} pos"
        + (f", {len(extra)} mined neg" if len(extra) else "")
        + f"), val {len(tables['val'])}, test {len(tables['test'])} | device {runtime.device}"
        + (f" x{runtime.world_size}" if runtime.distributed else "")
        + (f", autocast {str(runtime.amp_dtype).removeprefix('torch.')}" if runtime.amp_dtype else ""),
    )

    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_splits_csv(splits, out_dir / "splits.csv")
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        if len(extra):
            _write_refs_csv(extra, out_dir / "extra_train_negatives.csv")

    # Model, optimiser, schedule, precision.
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if runtime.distributed:
        # DDP wraps the model and forwards to it; _unwrap() gives the PatchClassifier back.
        model = nn.parallel.DistributedDataParallel(  # type: ignore[assignment]
            model, device_ids=[runtime.device.index] if runtime.cuda else None
        )
    sampler = EpochSampler(
        len(train_table),
        seed=config.seed,
        weights=balanced_weights(train_table.labels) if config.balanced_sampler else None,
        rank=runtime.rank,
        world_size=runtime.world_size,
    )
    # A last batch of one patch breaks BatchNorm in training mode: drop it.
    drop_last = len(sampler) > config.batch_size and len(sampler) % config.batch_size == 1
    steps_per_epoch = (
        len(sampler) // config.batch_size if drop_last else -(-len(sampler) // config.batch_size)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs * steps_per_epoch, eta_min=config.eta_min
    )
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    state = _State()
    if checkpoint is not None:
        _unwrap(model).load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scheduler.T_max != config.epochs * steps_per_epoch:
            # An extended (or shortened) run: the cosine spans the new run. The scheduler's
            # recursive update cannot restart from the old curve, so set the closed form.
            scheduler.T_max = config.epochs * steps_per_epoch
            step = min(scheduler.last_epoch, scheduler.T_max)
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = (
                    config.eta_min
                    + (base - config.eta_min) * (1 + math.cos(math.pi * step / scheduler.T_max)) / 2
                )
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        scaler.load_state_dict(checkpoint["scaler"])
        state = _State(
            epoch=int(checkpoint["epoch"]),
            best_val_loss=float(checkpoint["best_val_loss"]),
            best_epoch=int(checkpoint["best_epoch"]),
            history=list(checkpoint["history"]),
        )
        log(runtime, f"resuming {resume} after epoch {state.epoch}")

    placement = _transform_placement(config, runtime)
    dataset = PatchDataset(
        store_path,
        train_table,
        transform=sample_transform(config.input_size, config.augment) if placement == "loader" else None,
        resize=None if placement == "loader" else _worker_resize(config.input_size, runtime),
    )
    batch_transform = (
        BatchTransform(config.input_size, config.augment).to(runtime.device)
        if placement == "device"
        else None
    )
    common = {
        "config": config.to_dict(),
        "splits": dict(splits),
        "extra_train_negatives": [
            [str(s), int(i)] for s, i in zip(extra.slide_ids, extra.indices, strict=True)
        ],
        "store_fingerprint": str(store.fingerprint()),
        "tool_version": __version__,
        "format": CHECKPOINT_FORMAT,
        "version": 1,
    }
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    stale = 0 if not state.history else state.epoch - state.best_epoch
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if config.early_stopping_patience and stale >= config.early_stopping_patience:
            log(runtime, f"early stopping: no lower validation loss for {stale} epoch(s)")
            break
        sampler.set_epoch(epoch)
        # Augmentation draws depend on (seed, epoch) only, so resuming replays them.
        torch.manual_seed(config.seed * 100_003 + epoch)
        loader = _loader(
            dataset,
            config.batch_size,
            sampler,
            config.num_workers,
            runtime,
            config.seed * 100_003 + epoch,
            drop_last,
        )
        started = time.perf_counter()
        train_loss, seen = _train_epoch(
            model,
            loader,
            batch_transform,
            optimizer,
            scheduler,
            scaler,
            runtime,
            progress,
            f"epoch {epoch}/{config.epochs}",
        )
        seconds = time.perf_counter() - started
        val_loss = _val_loss(model, store_path, tables["val"], config, runtime)
        # Without a validation split every epoch counts as the best (best.pt = last.pt).
        improved = val_loss is None or val_loss < state.best_val_loss
        if improved:
            state.best_val_loss = val_loss if val_loss is not None else state.best_val_loss
            state.best_epoch = epoch
        stale = epoch - state.best_epoch
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": float(scheduler.get_last_lr()[0]),
            "patches_per_s": seen * runtime.world_size / seconds,
            "seconds": seconds,
        }
        state.history.append(row)
        state.epoch = epoch
        log(
            runtime,
            f"epoch {epoch}/{config.epochs}  train loss {train_loss:.4f}  val loss "
            + ("-" if val_loss is None else f"{val_loss:.4f}")
            + f"  lr {row['lr']:.2e}  {row['patches_per_s']:.1f} patches/s"
            + ("  (best)" if improved else ""),
        )
        if runtime.is_main:
            payload = {
                **common,
                "model": _unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "best_val_loss": state.best_val_loss,
                "best_epoch": state.best_epoch,
                "history": state.history,
            }
            _save_checkpoint(last_path, payload)
            if improved:
                _same_file(last_path, best_path)
    dataset.close()

    metrics: dict[str, Any] = {}
    if runtime.is_main:
        _write_history(state.history, out_dir / "history.csv")
        plot_loss(state.history, out_dir / "loss.png", state.best_epoch)
        best = read_checkpoint(best_path)
        best_model = PatchClassifier(config.input_size)
        best_model.load_state_dict(best["model"])
        metrics = report(
            _prepare(best_model, runtime),
            store_path,
            {"val": tables["val"], "test": tables["test"]},
            out_dir,
            config,
            runtime,
            progress=progress,
        )
        metrics["training"] = {
            "best_epoch": state.best_epoch,
            "best_val_loss": None if math.isinf(state.best_val_loss) else state.best_val_loss,
            "epochs_run": state.epoch,
            "train_patches": len(train_table),
            "train_positives": int(train_table.labels.sum()),
            "extra_train_negatives": len(extra),
        }
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if runtime.distributed:
        dist.barrier()
    return TrainResult(
        run_dir=out_dir,
        best_checkpoint=best_path,
        metrics=metrics,
        last_checkpoint=last_path,
        splits=dict(splits),
        history=list(state.history),
    )


def _warn_changed_config(checkpoint: Mapping[str, Any], config: TrainConfig, runtime: Runtime) -> None:
    previous = checkpoint.get("config", {})
    changed = sorted(
        k for k, v in config.to_dict().items() if k not in ("store", "out") and previous.get(k, v) != v
    )
    if changed:
        log(runtime, f"note: resuming with changed config key(s): {', '.join(changed)}")


def _write_history(history: Sequence[Mapping[str, Any]], path: Path) -> None:
    columns = ["epoch", "train_loss", "val_loss", "lr", "patches_per_s", "seconds"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k) for k in columns})


def _write_refs_csv(table: PatchTable, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "index", "x", "y"])
        for s, i, (x, y) in zip(table.slide_ids, table.indices, table.coords, strict=True):
            writer.writerow([s, int(i), int(x), int(y)])


# ---------------------------------------------------------------- reporting


def report(
    model: PatchClassifier,
    store_path: Path,
    tables: Mapping[str, PatchTable],
    out_dir: Path,
    config: TrainConfig,
    runtime: Runtime,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``tables`` (split name -> patches), write ``predictions.csv``, ``roc.png``, ``pr.png``
    and return the metrics dict (not yet written).

    The top-level metrics are those of the test split (or the last non-empty
    split given): ``auroc``, ``auprc``, ``f1``, ``sensitivity``,
    ``specificity``, ``log_loss`` each as ``{"value", "ci95": [lo, hi]}``,
    ``threshold``, ``n``, ``n_positive``, ``confusion``, ``bootstrap``; then
    ``split``, ``slide_level`` (the same metrics on the maximum patch
    probability per slide) and ``splits`` (patch and slide metrics of every
    split scored).
    """
    scored: dict[str, tuple[PatchTable, np.ndarray]] = {}
    for name, table in tables.items():
        if len(table):
            logits = _logits(
                model,
                store_path,
                table,
                config.batch_size,
                runtime,
                num_workers=config.num_workers,
                progress=progress,
                desc=f"scoring {name}",
            )
            scored[name] = (table, _probs(logits))
    with (out_dir / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "x", "y", "label", "prob", "split"])
        for name, (table, probs) in scored.items():
            for s, (x, y), label, prob in zip(
                table.slide_ids, table.coords, table.labels, probs, strict=True
            ):
                writer.writerow([s, int(x), int(y), int(label), f"{prob:.6g}", name])
    if not scored:
        return {"split": None, "note": "no validation or test patches to score"}
    per_split: dict[str, Any] = {}
    for name, (table, probs) in scored.items():
        _, slide_labels, slide_probs = slide_scores(table.slide_ids, table.labels, probs)
        per_split[name] = {
            "patch": compute_metrics(table.labels, probs, config.threshold, config.bootstrap, config.seed),
            "slide": compute_metrics(
                slide_labels, slide_probs, config.threshold, config.bootstrap, config.seed
            ),
        }
    primary = "test" if "test" in scored else list(scored)[-1]
    table, probs = scored[primary]
    _, slide_labels, slide_probs = slide_scores(table.slide_ids, table.labels, probs)
    curves = {"patch": (table.labels, probs), "slide (max patch)": (slide_labels, slide_probs)}
    plot_roc(curves, out_dir / "roc.png", title=f"ROC, {primary} split")
    plot_pr(curves, out_dir / "pr.png", title=f"Precision-recall, {primary} split")
    return {
        **per_split[primary]["patch"],
        "split": primary,
        "slide_level": per_split[primary]["slide"],
        "splits": per_split,
    }


def evaluate(
    checkpoint: str | Path,
    store_path: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    *,
    batch_size: int | None = None,
    device: str | None = None,
    threshold: float | None = None,
    bootstrap: int | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Score one split of the checkpoint's own slide splits and write ``predictions.csv``,
    ``metrics.json``, ``roc.png`` and ``pr.png`` into ``out_dir``
    (default ``<checkpoint folder>/eval-<split>``). Returns the metrics dict."""
    if split not in SPLIT_NAMES:
        raise ConfigError(f"--split {split!r}: use one of {', '.join(SPLIT_NAMES)}")
    state = read_checkpoint(checkpoint)
    model, config = load_model(checkpoint)
    config = config.replace(
        batch_size=batch_size or config.batch_size,
        threshold=config.threshold if threshold is None else threshold,
        bootstrap=config.bootstrap if bootstrap is None else bootstrap,
        num_workers=num_workers,
    )
    runtime = _inference_runtime(device or config.device)
    store = open_store(store_path)
    check_store_fingerprint(state, store, checkpoint, store_path, refuse=False)
    splits = dict(state["splits"])
    missing = sorted(s for s, v in splits.items() if v == split and s not in set(store.slide_ids()))
    if missing:
        raise StoreError(
            f"{store_path}: the {split} split of {checkpoint} names slides missing from the store: "
            f"{', '.join(missing[:5])}; evaluate on the store the model was trained from"
        )
    table = split_table(store, splits, split)
    if not len(table):
        raise ConfigError(f"{checkpoint}: the {split} split has no patches in {store_path}")
    out = Path(out_dir) if out_dir else Path(checkpoint).parent / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    metrics = report(
        _prepare(model, runtime), Path(store_path), {split: table}, out, config, runtime, progress=progress
    )
    metrics["checkpoint"] = str(checkpoint)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
