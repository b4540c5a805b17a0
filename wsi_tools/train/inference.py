"""Scoring stored patches with a trained model: one function gives logits or embeddings.

``predict`` (positive-class probabilities) and ``embed_patches`` (the 512-d
penultimate features the miner searches) are both :func:`score_patches`, with
the evaluation transform (resize + normalise, no augmentation) on the device.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsi_tools.errors import ModelError
from wsi_tools.train.augment import BatchTransform
from wsi_tools.train.checkpoint import load_checkpoint, load_weights
from wsi_tools.train.config import TrainConfig
from wsi_tools.train.data import (
    PatchDataset,
    PatchRef,
    PatchTable,
    collate_patches,
    open_store,
    table_from_refs,
)
from wsi_tools.train.model import EMBED_DIM, PatchClassifier
from wsi_tools.train.runtime import Runtime, progress_enabled, resolve_device

Output = Literal["logits", "embeddings"]


def worker_resize(input_size: int, runtime: Runtime) -> int | None:
    """What the loader workers do when the device transforms the batch: on CUDA nothing
    but read and decompress; on the CPU also the uint8 resize (one call per batch), which
    cuts the bytes passed between processes about 5x for 512 -> 224 (the device resize is
    then a no-op)."""
    return None if runtime.cuda else input_size


def patch_loader(
    dataset: PatchDataset,
    batch_size: int,
    sampler: Iterable[int],
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


def to_device(images: torch.Tensor, runtime: Runtime, batch_transform: BatchTransform | None) -> torch.Tensor:
    images = images.to(runtime.device, non_blocking=True)
    if batch_transform is not None:
        images = batch_transform(images)
    if runtime.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def unwrap(model: nn.Module) -> PatchClassifier:
    """The PatchClassifier inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # type: ignore[return-value]


@torch.no_grad()
def score_table(
    model: PatchClassifier,
    store_path: Path,
    table: PatchTable,
    batch_size: int,
    runtime: Runtime,
    *,
    output: Output = "logits",
    num_workers: int = 0,
    rows: Sequence[int] | None = None,
    progress: bool = False,
    desc: str = "scoring",
) -> np.ndarray:
    """Logits (N,) or embeddings (N, 512) of ``table`` (or of its ``rows``), float32, in table order."""
    model.eval()
    dataset = PatchDataset(store_path, table, resize=worker_resize(model.input_size, runtime))
    order = list(range(len(table))) if rows is None else list(rows)
    loader = patch_loader(dataset, batch_size, order, num_workers, runtime, seed=0)
    transform = BatchTransform(model.input_size, augment=False).to(runtime.device)
    outputs = []
    try:
        for images, _ in tqdm(
            loader, desc=desc, disable=not progress_enabled(progress, runtime), leave=False
        ):
            x = to_device(images, runtime, transform)
            with runtime.autocast():
                out = model.embed(x) if output == "embeddings" else model(x)
            outputs.append(out.float().cpu())
    finally:
        dataset.close()
    if not outputs:
        return np.zeros((0, EMBED_DIM) if output == "embeddings" else (0,), dtype=np.float32)
    result = torch.cat(outputs).numpy()
    check_finite_outputs(result, output)
    return result


def check_finite_outputs(values: np.ndarray, what: str) -> None:
    """A NaN logit compares false with every threshold: it would read as "negative"."""
    bad_rows = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad_rows.any():
        raise ModelError(
            f"the model gave non-finite {what} for {int(bad_rows.sum())} of {len(values)} patches; "
            "its weights or its input are damaged"
        )


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Sigmoid in float64 (probabilities near 0 and 1 keep their resolution)."""
    return torch.sigmoid(torch.as_tensor(logits, dtype=torch.float64)).numpy()


def inference_runtime(device: str | torch.device, *, channels_last_on_cpu: bool = False) -> Runtime:
    """AMP and channels_last on CUDA; on the CPU full precision, channels_last when asked
    (a ResNet18 forward at 224 px runs about 1.35x faster so on two cores; the logits
    differ by ~1e-6, so the scorers whose outputs were recorded keep the default)."""
    device = resolve_device(device) if isinstance(device, str) else device
    amp = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    channels_last = device.type == "cuda" or channels_last_on_cpu
    return Runtime(device=device, amp_dtype=amp, channels_last=channels_last)


def prepare_model(model: PatchClassifier, runtime: Runtime) -> PatchClassifier:
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def score_patches(
    model: PatchClassifier,
    store_path: str | Path,
    refs: Sequence[PatchRef | tuple[str, int]],
    output: Output,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    *,
    num_workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Logits or embeddings of the referenced patches, in ``refs`` order."""
    runtime = inference_runtime(device)
    table = table_from_refs(open_store(store_path), refs)
    return score_table(
        prepare_model(model, runtime),
        Path(store_path),
        table,
        batch_size,
        runtime,
        output=output,
        num_workers=num_workers,
        progress=progress,
        desc="embedding" if output == "embeddings" else "scoring",
    )


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
    logits = score_patches(
        model, store_path, refs, "logits", batch_size, device, num_workers=num_workers, progress=progress
    )
    return probabilities(logits)


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
    return score_patches(
        model, store_path, refs, "embeddings", batch_size, device, num_workers=num_workers, progress=progress
    )


def load_model(
    checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[PatchClassifier, TrainConfig]:
    """The trained model (eval mode, on ``device``) and the config it was trained with."""
    state = load_checkpoint(checkpoint)
    config = state.train_config(str(checkpoint))
    model = PatchClassifier(config.input_size)
    load_weights(model, state.model, checkpoint)
    device = resolve_device(device) if isinstance(device, str) else device
    return model.to(device).eval(), config
