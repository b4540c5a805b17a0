"""The probability heatmap of a slide: its thumbnail with the map overlaid, a colour
bar, the tissue outline, the regions at or above the threshold, a scale bar, and
the slide id and score in the title (as in Kanavati et al.'s Figures 2 and 3)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry.base import BaseGeometry

from wsi_tools.viz._drawing import add_scale_bar, lines_and_points

DPI = 100
MIN_DISPLAY_PX = 800
TISSUE_COLOUR = "#111111"
REGION_COLOUR = "#ffffff"


def render_heatmap(
    thumbnail: np.ndarray,
    downsample: float,
    probability: np.ndarray,
    cell_level0_px: float,
    out_path: str | Path,
    *,
    title: str,
    mpp: float | None,
    threshold: float | None,
    tissue: BaseGeometry | None = None,
    regions: Sequence[BaseGeometry] = (),
    label: str = "probability",
) -> Path:
    """Write the heatmap PNG. ``thumbnail`` is the slide at ``downsample`` level-0 px per
    pixel; ``probability`` has one cell per ``cell_level0_px`` from the slide's (0, 0),
    NaN where nothing was scored (drawn transparent)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    height, width = thumbnail.shape[:2]
    zoom = max(1.0, MIN_DISPLAY_PX / max(height, width))
    figure = Figure(figsize=(width * zoom / DPI + 1.4, height * zoom / DPI + 0.7), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.02, 0.02, 0.8, 0.86))
    axes.imshow(thumbnail, interpolation="antialiased")
    rows, cols = probability.shape
    cell = cell_level0_px / downsample
    overlay = axes.imshow(
        np.ma.masked_invalid(probability),
        cmap="turbo",
        vmin=0.0,
        vmax=1.0,
        alpha=0.55,
        interpolation="nearest",
        extent=(-0.5, cols * cell - 0.5, rows * cell - 0.5, -0.5),
    )
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    axes.set_axis_off()

    def scaled(points: np.ndarray) -> np.ndarray:
        return points[:, :2] / downsample - 0.5

    def outline(geometry: BaseGeometry | None, **style: Any) -> None:
        rings = [scaled(points) for kind, points in lines_and_points(geometry) if kind == "line"]
        if rings:
            axes.add_collection(LineCollection(rings, **style))

    outline(tissue, colors=TISSUE_COLOUR, linewidths=1.0, linestyles="--")
    for region in regions:
        outline(region, colors=REGION_COLOUR, linewidths=1.4)
    if mpp is not None:
        add_scale_bar(axes, mpp * downsample, width)
    colour_axes = figure.add_axes((0.85, 0.1, 0.03, 0.7))
    bar = figure.colorbar(overlay, cax=colour_axes)
    bar.set_label(label)
    if threshold is not None:  # a Grad-CAM map has none
        bar.ax.axhline(threshold, color="black", linewidth=1.5)
        bar.ax.text(
            1.6, threshold, f"threshold {threshold:g}", transform=bar.ax.get_yaxis_transform(), fontsize=7
        )
    figure.suptitle(title, fontsize=10, x=0.02, ha="left")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=DPI)
    return out_path
