"""Positive regions of a probability map: merged polygons with holes, in level-0 px.

Cells at or above the threshold are grouped into 4-connected components; each
component becomes one polygon, the union of its cells' boxes (holes kept), with
the mean and maximum probability of its cells. Never one polygon per tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from wsi_tools.predict._grid import SlidingGrid


@dataclass(frozen=True)
class Region:
    """One predicted positive region."""

    geometry: BaseGeometry  # a Polygon in level-0 px, holes included
    mean_probability: float
    max_probability: float
    n_cells: int

    def measurements(self, mpp: float | None) -> dict[str, float]:
        values = {
            "mean probability": round(self.mean_probability, 6),
            "max probability": round(self.max_probability, 6),
        }
        if mpp:
            values["area mm2"] = round(float(self.geometry.area) * mpp * mpp / 1e6, 6)
        return values


def positive_regions(probability: np.ndarray, grid: SlidingGrid, threshold: float) -> list[Region]:
    """The regions where the map is at or above ``threshold``, largest first."""
    if probability.size == 0:
        return []
    mask = np.nan_to_num(probability, nan=-1.0) >= threshold
    n_labels, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    regions = []
    step = grid.step
    for label in range(1, n_labels):
        rows, cols = np.nonzero(labels == label)
        boxes = shapely.box(cols * step, rows * step, (cols + 1) * step, (rows + 1) * step)
        polygon = shapely.union_all(boxes)
        polygon = shapely.simplify(polygon, 0)  # drops the collinear vertices between cells
        values = probability[rows, cols]
        regions.append(Region(polygon, float(values.mean()), float(values.max()), len(rows)))
    regions.sort(key=lambda region: -region.geometry.area)
    return regions
