"""The epoch loop and validation, with the training step as a parameter.

A training method is a sampler (which patches an epoch visits, in which order)
and a step (the loss of one batch). The patch classifier's are
:class:`~wsi_tools.train.data.EpochSampler` and :func:`bce_step`; a method that
trains from slide labels or bags plugs its own into :func:`train_one_epoch`
instead of copying the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsi_tools.errors import ModelError
from wsi_tools.train.augment import BatchTransform
from wsi_tools.train.checkpoint import CosineSchedule
from wsi_tools.train.config import TrainConfig
from wsi_tools.train.data import PatchTable
from wsi_tools.train.inference import score_table, to_device, unwrap
from wsi_tools.train.runtime import Runtime, progress_enabled

TrainingStep = Callable[[nn.Module, torch.Tensor, torch.Tensor, Runtime], torch.Tensor]
"""``step(model, images, labels, runtime) -> mean loss of the batch`` (a scalar tensor)."""


class EpochOrder(Protocol):
    """A sampler whose order is a function of (seed, epoch), so that a resumed run replays it."""

    def set_epoch(self, epoch: int) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[int]: ...


def bce_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Binary cross-entropy of one patch logit per image (the loss in float32 under autocast)."""
    with runtime.autocast():
        logits = model(images)
    summed = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels, reduction="sum")
    return summed / len(labels)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    step: TrainingStep,
    batch_transform: BatchTransform | None,
    optimizer: torch.optim.Optimizer,
    schedule: CosineSchedule,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    *,
    progress: bool,
    desc: str,
) -> tuple[float, int]:
    """One pass; returns (mean loss over this process's patches, patches seen)."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    seen = 0
    bar = tqdm(loader, desc=desc, disable=not progress_enabled(progress, runtime), leave=False, unit="batch")
    for batch_index, (images, labels) in enumerate(bar):
        x = to_device(images, runtime, batch_transform)
        y = labels.to(runtime.device, non_blocking=True)
        loss = step(model, x, y, runtime)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        schedule.step()  # per batch: cosine annealing over the whole run
        loss_sum += loss.detach().double() * len(y)
        seen += len(y)
        if batch_index % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{schedule.last_lr:.2e}")
    mean_loss = float(loss_sum) / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise ModelError(
            f"{desc}: the training loss is {mean_loss} (the run diverged); train again with a lower "
            "learning rate (--set lr=...) or check the store with wsi-tools verify"
        )
    return mean_loss, seen


def validation_loss(
    model: nn.Module, store_path: Path, table: PatchTable, config: TrainConfig, runtime: Runtime
) -> float | None:
    """Mean validation BCE; under DDP each rank scores a share and the sums are all-reduced."""
    if not len(table):
        return None
    rows = list(range(runtime.rank, len(table), runtime.world_size))
    logits = score_table(
        unwrap(model),
        store_path,
        table,
        config.batch_size,
        runtime,
        num_workers=config.num_workers,
        rows=rows,
    )
    summed = nn.functional.binary_cross_entropy_with_logits(
        torch.as_tensor(logits, dtype=torch.float64),
        torch.as_tensor(table.labels[rows], dtype=torch.float64),
        reduction="sum",
    )
    total, count = float(summed), len(rows)
    if runtime.distributed:
        reduced = torch.tensor([total, count], dtype=torch.float64, device=runtime.device)
        dist.all_reduce(reduced)
        total, count = float(reduced[0]), int(reduced[1])
    return total / count
