"""Drawing helpers shared by the slide pictures: outlines of geometries and a scale bar."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from shapely.geometry.base import BaseGeometry

SCALE_BAR_MM = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)


def lines_and_points(geometry: BaseGeometry | None) -> Iterator[tuple[str, np.ndarray]]:
    """("line", (N, 2)) for every ring or line and ("point", (1, 2)) for every point."""
    if geometry is None or geometry.is_empty:
        return
    kind = geometry.geom_type
    if kind == "Polygon":
        yield "line", np.asarray(geometry.exterior.coords)
        for interior in geometry.interiors:
            yield "line", np.asarray(interior.coords)
    elif kind in ("LineString", "LinearRing"):
        yield "line", np.asarray(geometry.coords)
    elif kind == "Point":
        yield "point", np.asarray(geometry.coords)
    else:  # Multi* and GeometryCollection
        for part in geometry.geoms:
            yield from lines_and_points(part)


def scale_bar_mm(um_per_px: float, width_px: int) -> float:
    """The longest round length that takes at most a fifth of the picture's width."""
    fits = [mm for mm in SCALE_BAR_MM if mm * 1000 / um_per_px <= width_px / 5]
    return fits[-1] if fits else SCALE_BAR_MM[0]


def add_scale_bar(axes: Any, um_per_px: float, width_px: int) -> None:
    """A labelled bar in the lower right corner of an image drawn in pixel coordinates."""
    mm = scale_bar_mm(um_per_px, width_px)
    length = mm * 1000 / um_per_px
    bottom, top = axes.get_ylim()
    height = abs(bottom - top)
    x1 = width_px * 0.97
    y = max(bottom, top) - height * 0.04
    axes.plot([x1 - length, x1], [y, y], color="black", linewidth=3, solid_capstyle="butt")
    label = f"{mm * 1000:g} µm" if mm < 1 else f"{mm:g} mm"
    axes.text(x1 - length / 2, y - height * 0.015, label, ha="center", va="bottom", fontsize=8)
