"""Pure geometry of sliding-window inference: the window grid and the probability map.

Windows are squares of ``extent`` level-0 px laid from the slide's (0, 0) at a
step of ``extent / k`` (k = patch size / stride, a whole number), inside the
slide. The map has one cell per step: cell (row, col) is the level-0 box
``[col * step, (col + 1) * step) x [row * step, (row + 1) * step)``, and window
(row, col) covers cells ``row .. row + k - 1`` by ``col .. col + k - 1`` exactly.
A cell's value is the mean probability of the windows that cover it, so
overlapping windows are averaged, never overwritten.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wsi_tools.errors import ConfigError


@dataclass(frozen=True)
class SlidingGrid:
    """Windows of ``extent`` level-0 px every ``step`` px over a slide of ``dimensions``."""

    dimensions: tuple[int, int]
    extent: float
    step: float
    windows_per_side: int  # k: windows overlapping one cell along each axis
    n_cols: int
    n_rows: int

    @property
    def map_shape(self) -> tuple[int, int]:
        """(rows, cols) of the probability map."""
        if self.n_cols == 0 or self.n_rows == 0:
            return (0, 0)
        k = self.windows_per_side
        return (self.n_rows + k - 1, self.n_cols + k - 1)

    def window_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of every window, row-major."""
        rows, cols = np.meshgrid(np.arange(self.n_rows), np.arange(self.n_cols), indexing="ij")
        return rows.ravel(), cols.ravel()

    def origins(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Level-0 top-left (x, y) of the windows, rounded to whole pixels (as extraction does)."""
        xs = np.round(np.asarray(cols) * self.step).astype(np.int64)
        ys = np.round(np.asarray(rows) * self.step).astype(np.int64)
        return np.stack([xs, ys], axis=1)

    def geometry(self) -> dict[str, object]:
        """The map's level-0 geometry, recorded beside it."""
        return {
            "origin_level0": [0, 0],
            "cell_level0_px": self.step,
            "window_level0_px": self.extent,
            "windows_per_cell_side": self.windows_per_side,
            "shape_rows_cols": list(self.map_shape),
            "slide_dimensions": list(self.dimensions),
        }


def sliding_grid(dimensions: tuple[int, int], extent: float, windows_per_side: int) -> SlidingGrid:
    """The grid of windows of ``extent`` level-0 px at a step of ``extent / windows_per_side``."""
    if windows_per_side < 1:
        raise ConfigError(f"windows per side must be at least 1, got {windows_per_side}")
    if extent <= 0:
        raise ConfigError(f"window extent must be positive, got {extent}")
    step = extent / windows_per_side
    width, height = dimensions

    def count(length: int) -> int:
        return math.floor((length - extent) / step + 1e-9) + 1 if length >= extent else 0

    return SlidingGrid((int(width), int(height)), extent, step, windows_per_side, count(width), count(height))


class ProbabilityMap:
    """The running mean per cell of what the windows covering it gave: a probability
    per window, or a map per window (Grad-CAM)."""

    def __init__(self, grid: SlidingGrid) -> None:
        self.grid = grid
        self.total = np.zeros(grid.map_shape, np.float64)
        self.count = np.zeros(grid.map_shape, np.int32)

    def add(self, rows: np.ndarray, cols: np.ndarray, probabilities: np.ndarray) -> None:
        """Add each window's probability to the k x k cells it covers."""
        values = np.asarray(probabilities, np.float64)
        k = self.grid.windows_per_side
        self.add_maps(rows, cols, np.broadcast_to(values[:, None, None], (len(values), k, k)))

    def add_maps(self, rows: np.ndarray, cols: np.ndarray, maps: np.ndarray) -> None:
        """Add each window's (k, k) map, one value per cell it covers (a Grad-CAM map
        at cell resolution), to those cells."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        k = self.grid.windows_per_side
        if maps.shape[1:] != (k, k):
            raise ValueError(f"window maps must be {k} x {k} cells, got {maps.shape[1:]}")
        for dy in range(k):
            for dx in range(k):
                np.add.at(self.total, (rows + dy, cols + dx), maps[:, dy, dx].astype(np.float64))
                np.add.at(self.count, (rows + dy, cols + dx), 1)

    def mean(self) -> np.ndarray:
        """float32 (rows, cols): the mean probability, NaN where no window was scored."""
        with np.errstate(invalid="ignore", divide="ignore"):
            values = self.total / self.count
        values[self.count == 0] = np.nan
        return values.astype(np.float32)
