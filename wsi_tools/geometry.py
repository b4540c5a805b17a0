"""Pure resolution and grid maths: no I/O here.

Coordinates are level-0 pixels unless a name says otherwise. A *target* is a
physical resolution in µm/px; magnification m means 10/m µm/px (×20 = 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

DEFAULT_MPP_TOLERANCE = 0.05


def mpp_for_magnification(magnification: float) -> float:
    """µm/px of a nominal objective magnification (×5 -> 2.0 µm/px)."""
    if magnification <= 0:
        raise ValueError(f"magnification must be positive, got {magnification}")
    return 10.0 / magnification


@dataclass(frozen=True)
class SlideSpec:
    """What the grid maths needs to know about a slide."""

    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level
    level_downsamples: tuple[float, ...]
    mpp: float  # level-0 µm/px (x and y agree within tolerance)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]


@dataclass(frozen=True)
class ReadPlan:
    """How a read at a target resolution is served: the provenance of a patch."""

    level: int  # pyramid level read
    level_downsample: float  # level-0 px per level px
    level_mpp: float
    target_mpp: float
    resample_scale: float  # level px per target px (1.0 = read as is)
    effective_mpp: float  # resolution of the pixels returned

    @property
    def resampled(self) -> bool:
        return self.resample_scale != 1.0

    def level0_extent(self, target_px: int) -> float:
        """Level-0 pixels spanned by ``target_px`` pixels at the target."""
        return target_px * self.effective_mpp / (self.level_mpp / self.level_downsample)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "level": self.level,
            "level_downsample": self.level_downsample,
            "level_mpp": self.level_mpp,
            "target_mpp": self.target_mpp,
            "resample_scale": self.resample_scale,
            "effective_mpp": self.effective_mpp,
        }


def plan_read(spec: SlideSpec, target_mpp: float, tolerance: float = DEFAULT_MPP_TOLERANCE) -> ReadPlan:
    """Choose the level to read for ``target_mpp``.

    The finest level whose mpp is at most the target (never upsample from a
    coarser one). If that level is within ``tolerance`` of the target it is
    read as is; otherwise it is shrunk by ``resample_scale``. A target finer
    than level 0 is also served from level 0 within tolerance, else refused.
    """
    if target_mpp <= 0:
        raise ValueError(f"target mpp must be positive, got {target_mpp}")
    candidates = [
        level
        for level in range(len(spec.level_downsamples))
        if spec.level_mpp(level) <= target_mpp * (1 + tolerance)
    ]
    if not candidates:
        raise ValueError(
            f"target {target_mpp} µm/px is finer than the slide's level 0 ({spec.mpp} µm/px); "
            "upsampling is refused"
        )
    # The coarsest of the levels that are fine enough is the cheapest to read.
    level = max(candidates, key=lambda lv: spec.level_mpp(lv))
    level_mpp = spec.level_mpp(level)
    if abs(level_mpp - target_mpp) <= tolerance * target_mpp:
        scale, effective = 1.0, level_mpp
    else:
        scale, effective = target_mpp / level_mpp, target_mpp
    return ReadPlan(
        level=level,
        level_downsample=float(spec.level_downsamples[level]),
        level_mpp=level_mpp,
        target_mpp=target_mpp,
        resample_scale=scale,
        effective_mpp=effective,
    )


@dataclass(frozen=True)
class TilingConfig:
    """Patch geometry at the target resolution (the paper: 512 px at ×5)."""

    target_mpp: float = 2.0
    patch_size: int = 512
    tolerance: float = DEFAULT_MPP_TOLERANCE


def patch_extent_level0(spec: SlideSpec, tiling: TilingConfig) -> float:
    """Level-0 pixels covered by one patch side."""
    plan = plan_read(spec, tiling.target_mpp, tiling.tolerance)
    return plan.level0_extent(tiling.patch_size)


def grid_origins(spec: SlideSpec, tiling: TilingConfig) -> np.ndarray:
    """Top-left level-0 (x, y) of the non-overlapping grid, row-major.

    The origin is the slide's (0, 0) and the step is the patch size in target
    pixels mapped to level 0. Only windows fully inside the slide are kept.
    Origins are rounded to whole level-0 pixels.
    """
    step = patch_extent_level0(spec, tiling)
    width, height = spec.dimensions
    n_cols = max(0, math.floor((width - step) / step + 1e-9) + 1) if width >= step else 0
    n_rows = max(0, math.floor((height - step) / step + 1e-9) + 1) if height >= step else 0
    xs = np.round(np.arange(n_cols) * step).astype(np.int64)
    ys = np.round(np.arange(n_rows) * step).astype(np.int64)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def centred_window(
    centre: tuple[float, float], extent: float, slide_dimensions: tuple[int, int]
) -> tuple[int, int]:
    """Top-left of a square window of ``extent`` level-0 px centred on ``centre``,
    shifted to stay inside the slide (or at 0 when the slide is smaller)."""
    width, height = slide_dimensions
    x = centre[0] - extent / 2
    y = centre[1] - extent / 2
    x = min(max(x, 0.0), max(width - extent, 0.0))
    y = min(max(y, 0.0), max(height - extent, 0.0))
    return int(round(x)), int(round(y))


def row_spans(origins: np.ndarray, extent: float, max_windows: int) -> Iterator[slice]:
    """Runs of consecutive rows of ``origins`` that are neighbouring windows on one grid
    row (same y, each at most one window right of the last): one level read each, so
    tiles that neighbours share are decoded once."""
    start = 0
    for i in range(1, len(origins) + 1):
        ends = (
            i == len(origins)
            or i - start >= max_windows
            or origins[i, 1] != origins[start, 1]
            or not 0 < origins[i, 0] - origins[i - 1, 0] <= math.ceil(extent)
        )
        if ends:
            yield slice(start, i)
            start = i
