"""Tissue detection: Otsu on HSV saturation of a low-resolution thumbnail.

Stained tissue is saturated, glass is grey-white. The steps, with every size
in µm so that they mean the same at any scan resolution:

1. a thumbnail at about 8 µm/px (8-16 is the useful range);
2. Otsu threshold on HSV saturation, never below ``MIN_SATURATION`` so that a
   blank slide (one grey level, where Otsu splits noise) gives no tissue;
3. median blur, morphological close (bridges gaps), open (drops specks);
4. regions smaller than ``min_region_um2`` dropped, holes smaller than
   ``min_hole_um2`` filled.

The result keeps the boolean mask, its level-0 (Multi)Polygon and an integral
image that gives the tissue fraction of any level-0 box in O(1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import cv2
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

if TYPE_CHECKING:
    from wsi_tools.slide import Slide

DEFAULT_TARGET_MPP = 8.0
DEFAULT_MIN_REGION_UM2 = 20_000.0  # ~140 µm square: smaller bits are dust or debris
DEFAULT_MIN_HOLE_UM2 = 20_000.0  # smaller gaps inside tissue count as tissue
MIN_SATURATION = 15  # 0-255; glass with JPEG noise stays below this
MIN_VALUE = 20  # near-black (scanner padding, debris) is not tissue
MEDIAN_UM = 40.0
CLOSE_UM = 48.0
OPEN_UM = 32.0


def _odd_kernel(size_um: float, mpp: float) -> int:
    size = max(3, int(round(size_um / mpp)))
    return size if size % 2 else size + 1


def saturation_threshold(rgb: np.ndarray) -> float:
    """Otsu on HSV saturation, floored at MIN_SATURATION."""
    return _otsu_floored(np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]))


MAX_BOX_CLEARS = 512  # small components cleared one by one; more: a full-image lookup


def _otsu_floored(saturation: np.ndarray) -> float:
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return max(float(otsu), float(MIN_SATURATION))


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    mpp: float,
    min_region_um2: float = DEFAULT_MIN_REGION_UM2,
    min_hole_um2: float = DEFAULT_MIN_HOLE_UM2,
) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of an RGB image at ``mpp`` µm/px, and the threshold used."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    threshold = _otsu_floored(cv2.extractChannel(hsv, 1))
    # saturation > threshold (integer pixels) and value >= MIN_VALUE, as 0/255, in one pass
    lower = (0, math.floor(threshold) + 1, MIN_VALUE)
    mask = cv2.inRange(hsv, lower, (255, 255, 255))
    mask = cv2.medianBlur(mask, _odd_kernel(MEDIAN_UM, mpp))
    close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd_kernel(CLOSE_UM, mpp),) * 2)
    opening = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd_kernel(OPEN_UM, mpp),) * 2)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, close)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, opening)
    pixel_um2 = mpp * mpp
    if _already_clean(mask, min_region_um2 / pixel_um2):
        return mask > 0, threshold
    mask = _drop_small_components(mask > 0, min_region_um2 / pixel_um2, connectivity=8)
    background = _drop_small_components(
        np.logical_not(mask), min_hole_um2 / pixel_um2, connectivity=4, keep_border=True
    )
    return mask | np.logical_not(background), threshold  # small enclosed gaps become tissue


def _already_clean(mask: np.ndarray, min_region_px: float) -> bool:
    """True when the clean-up below would return ``mask`` unchanged: it has no
    hole, and every component is at least ``min_region_px``. Decided from the
    contours, far cheaper than the two labellings it saves; False
    (holes, or a component that might be small) leaves it to the labelling.

    Exact: with 8-connected tissue, each 4-connected gap enclosed by tissue has
    its own hole contour, so no hole contour means nothing to fill; and a
    component without holes holds every pixel on or inside its outer contour,
    which is at least the contour's polygon area (Pick's theorem).
    """
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return True  # no tissue at all
    if (hierarchy[0][:, 3] >= 0).any():
        return False
    return all(cv2.contourArea(contour) >= min_region_px for contour in contours)


def _max_components(mask: np.ndarray, connectivity: int) -> int:
    """An upper bound on the number of ``connectivity``-connected components of
    a boolean mask: each has a first pixel in raster order, and no earlier
    neighbour of that pixel (left, above; diagonally above at 8) is in the mask."""
    first = mask.copy()
    first[1:, :] &= ~mask[:-1, :]
    first[:, 1:] &= ~mask[:, :-1]
    if connectivity == 8:
        first[1:, 1:] &= ~mask[:-1, :-1]
        first[1:, :-1] &= ~mask[:-1, 1:]
    return int(np.count_nonzero(first))


def _drop_small_components(
    mask: np.ndarray, min_pixels: float, connectivity: int, keep_border: bool = False
) -> np.ndarray:
    """``mask`` without its components smaller than ``min_pixels`` (those
    touching the image border are kept when ``keep_border``: background, not holes)."""
    pixels = mask.view(np.uint8)
    # 16-bit labels halve the time where they cannot overflow (OpenCV wants the
    # label count, 0 for the rest included, below 2**16 - 1).
    label_type = cv2.CV_16U if _max_components(mask, connectivity) + 1 < 2**16 - 1 else cv2.CV_32S
    count, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        pixels, connectivity, label_type, cv2.CCL_DEFAULT
    )
    drop = stats[:, cv2.CC_STAT_AREA] < min_pixels
    drop[0] = False  # label 0 is everything outside ``mask``
    if keep_border:
        height, width = mask.shape
        left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        right = left + stats[:, cv2.CC_STAT_WIDTH]
        bottom = top + stats[:, cv2.CC_STAT_HEIGHT]
        drop &= (left > 0) & (top > 0) & (right < width) & (bottom < height)
    dropped = np.flatnonzero(drop)
    if len(dropped) > MAX_BOX_CLEARS:  # many specks: one lookup over the whole image
        keep = ~drop
        keep[0] = False
        return keep[labels]
    result = mask.copy()
    for label in dropped.tolist():  # clear each small component inside its bounding box
        x, y, w, h = stats[label, :4]
        result[y : y + h, x : x + w][labels[y : y + h, x : x + w] == label] = False
    return result


def mask_to_polygon(mask: np.ndarray, downsample: float) -> BaseGeometry:
    """Level-0 (Multi)Polygon of a mask: outlines through the boundary pixels'
    centres, holes kept; empty Polygon for an empty mask."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return Polygon()

    def ring(index: int) -> np.ndarray | None:
        points = contours[index].reshape(-1, 2).astype(np.float64)
        return (points + 0.5) * downsample if len(points) >= 3 else None

    parts: list[BaseGeometry] = []
    for index, (_, _, first_child, parent) in enumerate(hierarchy[0]):
        if parent != -1:
            continue  # a hole: handled with its outer contour
        shell = ring(index)
        if shell is None:
            continue
        holes = []
        child = first_child
        while child != -1:
            hole = ring(child)
            if hole is not None:
                holes.append(hole)
            child = hierarchy[0][child][0]
        polygon = shapely.make_valid(Polygon(shell, holes))
        if polygon.area > 0:
            parts.append(polygon)
    if not parts:
        return Polygon()
    merged = shapely.union_all(parts)
    polygons = [g for g in getattr(merged, "geoms", [merged]) if isinstance(g, Polygon) and g.area > 0]
    return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)


@dataclass(frozen=True, eq=False)
class TissueMask:
    """Where the tissue is. ``mask[r, c]`` covers level-0 pixels from
    ``(c * downsample, r * downsample)``; ``mpp`` is µm per mask pixel.
    ``polygon`` (level-0 outlines) is traced on first use: the weak-set filter
    needs only the fractions, and tracing costs as much as the Otsu steps."""

    mask: np.ndarray
    downsample: float
    mpp: float | None = None
    threshold: float | None = None
    _integral: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # cv2.integral: the same (H + 1, W + 1) zero-padded table, ~10x faster than two numpy cumsums.
        if self.mask.size:
            integral = cv2.integral(self.mask.astype(np.uint8), sdepth=cv2.CV_64F)
        else:
            integral = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.float64)
        object.__setattr__(self, "_integral", integral)

    @cached_property
    def polygon(self) -> BaseGeometry:
        """Level-0 (Multi)Polygon of the mask (empty Polygon when there is no tissue)."""
        return mask_to_polygon(self.mask, self.downsample)

    @property
    def tissue_pixels(self) -> int:
        return int(self.mask.sum())

    @property
    def area_mm2(self) -> float | None:
        if self.mpp is None:
            return None
        return self.tissue_pixels * self.mpp * self.mpp / 1e6

    @property
    def fraction_of_slide(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def _cumulative(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Tissue area left of u and above v (mask px). The integral of a
        piecewise-constant mask is bilinear inside each pixel, so bilinear
        interpolation of the integral image is exact at fractional bounds."""
        height, width = self.mask.shape
        u = np.clip(u, 0.0, width)
        v = np.clip(v, 0.0, height)
        col = np.clip(np.floor(u).astype(np.int64), 0, max(width - 1, 0))
        row = np.clip(np.floor(v).astype(np.int64), 0, max(height - 1, 0))
        tu, tv = u - col, v - row
        table = self._integral
        return (
            (1 - tu) * (1 - tv) * table[row, col]
            + tu * (1 - tv) * table[row, col + 1]
            + (1 - tu) * tv * table[row + 1, col]
            + tu * tv * table[row + 1, col + 1]
        )

    def _box_fractions(
        self, x: np.ndarray, y: np.ndarray, width: np.ndarray, height: np.ndarray
    ) -> np.ndarray:
        if self.mask.size == 0:
            return np.zeros(np.broadcast(x, y, width, height).shape)
        u0, v0 = x / self.downsample, y / self.downsample
        u1, v1 = (x + width) / self.downsample, (y + height) / self.downsample
        inside = (
            self._cumulative(u1, v1)
            - self._cumulative(u0, v1)
            - self._cumulative(u1, v0)
            + self._cumulative(u0, v0)
        )
        area = np.maximum((u1 - u0) * (v1 - v0), 1e-12)
        return np.clip(inside / area, 0.0, 1.0)

    def fraction(self, x: float, y: float, width: float, height: float) -> float:
        """Tissue fraction of the level-0 box; the part outside the slide counts as no tissue."""
        return float(self._box_fractions(*(np.asarray(v, np.float64) for v in (x, y, width, height))))

    def fractions(self, origins: np.ndarray, extent: float) -> np.ndarray:
        """Tissue fractions of square level-0 boxes with top-left ``origins`` (N, 2)."""
        origins = np.asarray(origins, np.float64).reshape(-1, 2)
        extent_array = np.full(len(origins), float(extent))
        return self._box_fractions(origins[:, 0], origins[:, 1], extent_array, extent_array)


def detect_tissue(
    slide: Slide,
    target_mpp: float = DEFAULT_TARGET_MPP,
    min_region_um2: float = DEFAULT_MIN_REGION_UM2,
    min_hole_um2: float = DEFAULT_MIN_HOLE_UM2,
) -> TissueMask:
    """Tissue of ``slide`` from a thumbnail at about ``target_mpp`` (needs the slide's MPP)."""
    image, downsample = slide.thumbnail(target_mpp)
    mask_mpp = downsample * slide.spec.mpp
    mask, threshold = tissue_mask_from_rgb(image, mask_mpp, min_region_um2, min_hole_um2)
    return TissueMask(
        mask=mask,
        downsample=downsample,
        mpp=mask_mpp,
        threshold=threshold,
    )
