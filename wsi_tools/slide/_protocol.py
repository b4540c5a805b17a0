"""What a slide backend is: one open handle, its levels and properties, in-bounds reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

WHITE = 255


@runtime_checkable
class SlideBackend(Protocol):
    """One open backend handle: metadata plus in-bounds level reads (RGB uint8)."""

    name: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]
    # Why a faster path of this backend is not in use for this file (None: it is, or there is none).
    fallback: str | None
    # Why ``auto`` chose this backend over the other (None: they agreed, or it was named).
    chosen_because: str | None

    def read(self, level: int, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 pixels of an in-bounds box given in level pixels."""
        ...

    def read_windows(
        self, level: int, lxs: Sequence[int], ly: int, width: int, height: int, out: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Several boxes on one level row at once, or None where the backend has no faster way."""
        ...

    def shrink_level(self, level: int, factor: int) -> np.ndarray | None:
        """The whole level shrunk ``factor`` times with INTER_AREA, or None where
        the backend has no faster way than reading the level first."""
        ...

    def close(self) -> None: ...


def level0_location(lx: int, downsample: float) -> int:
    return int(round(lx * downsample))


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """Grey, RGB or RGBA (straight alpha, composited over white) to RGB uint8."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    if pixels.shape[2] == 4:
        alpha = pixels[..., 3:4].astype(np.float32) / WHITE
        pixels = np.rint(pixels[..., :3] * alpha + WHITE * (1 - alpha))
    if pixels.dtype == np.uint8:
        return pixels[..., :3]  # already RGB uint8: no clip, no copy
    return np.clip(pixels[..., :3], 0, WHITE).astype(np.uint8)


def bilinear_shift(block: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """Resample ``block`` (one extra row and column) ``fx``, ``fy`` in [0, 1) px
    towards its end, bilinearly, as OpenSlide's painter does."""
    data = block.astype(np.float32)
    data = (1 - fx) * data[:, :-1] + fx * data[:, 1:]
    data = (1 - fy) * data[:-1] + fy * data[1:]
    return np.clip(np.rint(data), 0, WHITE).astype(np.uint8)
