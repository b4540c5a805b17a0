"""Where a run computes: the device, mixed precision, DDP under torchrun, seeding and
determinism, and rank-0 logging. The trainer, the miner and inference share it."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from wsi_tools.errors import ConfigError
from wsi_tools.train.config import TrainConfig


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed in this process."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device: {name!r} was asked for but CUDA is not available; use device: cpu or auto"
            )
        return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)
    return torch.device("cpu")


def amp_dtype_for(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or config.amp == "off":
        return None
    if config.amp == "bf16" or (config.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def start_runtime(config: TrainConfig) -> Runtime:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank, owns = 0, 0, False
    if world_size > 1:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            owns = True
    device = resolve_device(config.device, local_rank)
    return Runtime(
        device=device,
        rank=rank,
        world_size=world_size,
        amp_dtype=amp_dtype_for(config, device),
        channels_last=config.channels_last and device.type == "cuda",
        owns_process_group=owns,
    )


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``count`` (0: left as they are) for the block."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def reproducibility(config: TrainConfig, runtime: Runtime) -> Iterator[None]:
    """Deterministic algorithms and the CPU thread count for this run only (global torch
    settings are restored)."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif runtime.cuda:
        torch.backends.cudnn.benchmark = True
    try:
        with cpu_threads(config.cpu_threads):
            yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[1], previous[2]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def log(runtime: Runtime | None, message: str) -> None:
    if runtime is None or runtime.is_main:
        tqdm.write(message, file=sys.stderr)


def progress_enabled(wanted: bool, runtime: Runtime | None = None) -> bool:
    return wanted and sys.stderr.isatty() and (runtime is None or runtime.is_main)
