"""Grad-CAM of the top-scoring regions of a slide (Kanavati et al., Figs 2-3).

A region is the neighbourhood of one of the highest-scoring windows: a square of
two patch sides centred on it. Windows of the patch size slide over it every
``stride`` px (the seed paper: 32), each gets the Grad-CAM of the model's last
convolutional block (``layer4``), resized to the window, and overlapping
windows are averaged into the region's map. Regions are chosen greedily by
score, none overlapping another, so they show different places.

Whole-slide Grad-CAM, on request (:func:`whole_slide_gradcam`): every tissue
window on a grid at the Grad-CAM stride, each map averaged into cells of that
stride; (patch / stride)^2 windows per patch area, each a backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GradcamRegion:
    origin: tuple[int, int]  # level-0 top-left
    extent: float  # level-0 px of the region's side
    image: np.ndarray  # (R, R, 3) uint8 at the model's resolution
    cam: np.ndarray  # (R, R) float32 in [0, 1], overlapping windows averaged
    probability: float  # of the window it is centred on
    windows: int  # Grad-CAM windows computed


def top_region_centres(
    origins: np.ndarray, probabilities: np.ndarray, extent: float, count: int
) -> list[tuple[int, float]]:
    """(window index, probability) of up to ``count`` top windows, greedily, each
    at least ``extent`` (a region's side, level 0) from those chosen: regions
    that do not overlap."""
    chosen: list[tuple[int, float]] = []
    for index in np.argsort(-probabilities, kind="stable"):
        centre = origins[index]
        if all(np.abs(centre - origins[other]).max() >= extent for other, _ in chosen):
            chosen.append((int(index), float(probabilities[index])))
            if len(chosen) == count:
                break
    return chosen


def region_gradcam(
    predictor: Any,
    slide: Any,
    plan: Any,
    window_origin: np.ndarray,
    extent: float,
    probability: float,
    stride: int,
) -> GradcamRegion:
    """The averaged Grad-CAM map of the region centred on one window."""
    import cv2

    from wsi_tools.extract import read_windows

    size = predictor.pixels.patch_size
    region = 2 * size
    per_px = extent / size  # level-0 px per model px
    origin = np.round(window_origin + extent / 2 - region * per_px / 2).astype(np.int64)
    offsets = list(range(0, region - size + 1, stride))
    total = np.zeros((region, region), np.float64)
    counts = np.zeros((region, region), np.float64)
    for dy in offsets:
        row = np.array([[origin[0] + round(dx * per_px), origin[1] + round(dy * per_px)] for dx in offsets])
        patches = read_windows(slide, row, size, plan)
        cams = predictor.gradcam(patches)
        for dx, cam in zip(offsets, cams, strict=True):
            resized = cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
            total[dy : dy + size, dx : dx + size] += resized
            counts[dy : dy + size, dx : dx + size] += 1
    image = read_windows(slide, origin[None, :], region, plan)[0]
    cam = (total / np.maximum(counts, 1)).astype(np.float32)
    return GradcamRegion(
        (int(origin[0]), int(origin[1])), region * per_px, image, cam, probability, len(offsets) ** 2
    )


SLIDE_CAM_PERCENTILE = 99.5  # the whole-slide map's 1.0: robust to a few extreme cells


def whole_slide_gradcam(
    predictor: Any, slide: Any, windows: Any, progress: bool, desc: str
) -> tuple[np.ndarray, float]:
    """The Grad-CAM map (rows, cols) of the cells of ``windows.grid`` (a grid at the
    Grad-CAM stride) and its scale: each window's raw map, resized to the k x k
    cells it covers, averaged with its neighbours', then divided by the map's
    SLIDE_CAM_PERCENTILE-th percentile and clipped to [0, 1]; NaN off the tissue.
    Raw maps, not each scaled to [0, 1]: scaled per window, every window of plain
    stroma would show a hot spot of its own."""
    import cv2
    from tqdm import tqdm

    from wsi_tools.predict._grid import ProbabilityMap

    k = windows.grid.windows_per_side
    cam_map = ProbabilityMap(windows.grid)
    with tqdm(total=len(windows), desc=desc, unit="window", disable=not progress, leave=False) as bar:
        for start, patches in predictor.read_batches(slide, windows):
            cams = predictor.gradcam(patches, per_image=False)
            cells = np.stack(
                [cv2.resize(cam.astype(np.float32), (k, k), interpolation=cv2.INTER_AREA) for cam in cams]
            )
            end = start + len(patches)
            cam_map.add_maps(windows.rows[start:end], windows.cols[start:end], cells)
            bar.update(len(patches))
    values = cam_map.mean()
    finite = values[np.isfinite(values)]
    scale = float(np.percentile(finite, SLIDE_CAM_PERCENTILE)) if len(finite) else 0.0
    if scale > 0:
        values = np.clip(values / scale, 0.0, 1.0)
    return values.astype(np.float32), scale
