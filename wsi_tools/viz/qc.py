"""Overview pictures for quality control: a slide thumbnail with the tissue
contour, the annotations in one colour per group, and patch boxes.

Patch kinds keep fixed colours (pos red, neg green, weak blue); annotation
groups take colours from a palette without those three, so the two never mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsi_tools.viz._drawing import add_scale_bar, lines_and_points

if TYPE_CHECKING:
    from wsi_tools.annotations import Annotation
    from wsi_tools.slide import Slide
    from wsi_tools.tissue import TissueMask

PATCH_COLOURS = {"pos": "#e6194b", "neg": "#3cb44b", "weak": "#4363d8"}
TISSUE_COLOUR = "#111111"
GROUP_PALETTE = ("#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#9a6324", "#ffe119", "#469990")
MIN_DISPLAY_PX = 900  # small thumbnails are shown enlarged so lines stay readable
MIN_WIDTH_INCHES = 7.0  # room for the legend under a narrow slide
FOOTER_INCHES = 0.8
DPI = 100


def group_colours(annotations: Sequence[Annotation]) -> dict[str, str]:
    """A stable colour per group name (sorted), cycling through the palette."""
    names = sorted({annotation.group or "(no group)" for annotation in annotations})
    return {name: GROUP_PALETTE[index % len(GROUP_PALETTE)] for index, name in enumerate(names)}


def render_overview(
    slide: Slide,
    out_path: str | Path,
    *,
    tissue: TissueMask | None = None,
    annotations: Sequence[Annotation] | None = None,
    patches: Sequence[tuple[int, int, float, str]] | None = None,
    target_mpp: float = 8.0,
    title: str | None = None,
) -> Path:
    """Write a PNG overview of ``slide`` and return its path.

    The picture is at ``target_mpp`` µm/px, or finer (down to level 0) when
    that would leave fewer than MIN_DISPLAY_PX pixels on the long side.
    ``patches`` are (x, y, level-0 extent, kind) with kind in pos/neg/weak.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    spec = slide.spec
    # A small slide is drawn from a finer thumbnail rather than enlarged pixels.
    fine_enough = spec.mpp * max(spec.dimensions) / MIN_DISPLAY_PX
    image, downsample = slide.thumbnail(max(spec.mpp, min(target_mpp, fine_enough)))
    height, width = image.shape[:2]
    zoom = max(1.0, MIN_DISPLAY_PX / max(height, width))
    image_inches = (width * zoom / DPI, height * zoom / DPI)
    total_height = image_inches[1] + FOOTER_INCHES
    footer = FOOTER_INCHES / total_height  # figure fraction below the picture: heading and legend
    figure = Figure(figsize=(max(image_inches[0], MIN_WIDTH_INCHES), total_height), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, footer, 1, 1 - footer))
    axes.imshow(image, interpolation="antialiased")
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    axes.set_axis_off()
    handles: list[Line2D] = []

    def scaled(points: np.ndarray) -> np.ndarray:
        return points[:, :2] / downsample - 0.5  # level-0 px to thumbnail pixel-centre coordinates

    if tissue is not None:
        rings = [scaled(points) for kind, points in lines_and_points(tissue.polygon) if kind == "line"]
        axes.add_collection(LineCollection(rings, colors=TISSUE_COLOUR, linewidths=1.2, linestyles="--"))
        area = tissue.area_mm2
        label = "tissue" + (f" ({area:.2f} mm²)" if area is not None else "")
        handles.append(Line2D([], [], color=TISSUE_COLOUR, linestyle="--", label=label))

    if annotations:
        colours = group_colours(annotations)
        for group, colour in colours.items():
            members = [a for a in annotations if (a.group or "(no group)") == group]
            lines: list[np.ndarray] = []
            points: list[np.ndarray] = []
            for annotation in members:
                for kind, coords in lines_and_points(annotation.geometry):
                    (lines if kind == "line" else points).append(scaled(coords))
            if lines:
                axes.add_collection(LineCollection(lines, colors=colour, linewidths=1.6))
            if points:
                stacked = np.vstack(points)
                axes.scatter(
                    stacked[:, 0],
                    stacked[:, 1],
                    s=36,
                    color=colour,
                    edgecolors="black",
                    linewidths=0.6,
                    zorder=3,
                )
            handles.append(Line2D([], [], color=colour, linewidth=2, label=f"{group} ({len(members)})"))

    if patches:
        for kind, colour in PATCH_COLOURS.items():
            boxes = [
                Rectangle(
                    (x / downsample - 0.5, y / downsample - 0.5), extent / downsample, extent / downsample
                )
                for x, y, extent, patch_kind in patches
                if patch_kind == kind
            ]
            if boxes:
                axes.add_collection(
                    PatchCollection(boxes, facecolor="none", edgecolor=colour, linewidth=0.7, alpha=0.9)
                )
                handles.append(
                    Line2D(
                        [],
                        [],
                        color=colour,
                        marker="s",
                        linestyle="",
                        fillstyle="none",
                        label=f"{kind} patches ({len(boxes)})",
                    )
                )

    mpp = slide.mpp
    if mpp is not None:
        add_scale_bar(axes, mpp[0] * downsample, width)
    heading = title or slide.path.name
    if mpp is not None:
        heading += f"  ·  {mpp[0]:g} µm/px  ·  overview {downsample * mpp[0]:.1f} µm/px"
    figure.text(0.01, footer * 0.72, heading, fontsize=9, va="center")
    if handles:
        figure.legend(
            handles=handles,
            loc="center left",
            ncol=min(len(handles), 4),
            fontsize=8,
            frameon=False,
            bbox_to_anchor=(0.0, footer * 0.3),
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=DPI)
    return out_path
