"""Checks and repairs every annotation reader shares: coordinates that fit a slide,
invalid polygons made valid in bounded time, annotations outside the slide."""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

from wsi_tools.annotations._model import Annotation, polygonal_part
from wsi_tools.errors import AnnotationError

# A level-0 pixel index: the largest slides are ~10^6 px wide.
MAX_COORDINATE = 1e9
# Bounds on repairing an invalid polygon (see repair_polygon).
LINEWORK_CROSSINGS = 64
MAX_REPAIR_CROSSINGS = 20_000
MAX_REPAIR_VERTICES = 20_000


def repair_polygon(polygon: BaseGeometry, where: str, kind: str) -> tuple[BaseGeometry, str]:
    """An invalid polygon made valid, and what was done, for the reader's warning
    (``invalid polygon (Self-intersection...) repaired with make_valid into 2
    part(s), area ... px²``); errors name ``where``.

    Bounded in time: GEOS's default repair (the linework method) is exact for the
    few crossings of a slipped hand but grows far faster than the number of
    crossings: 500 random vertices (27,000 crossings) take over a minute. So: few
    crossings, linework; more, the structure method (the area the rings enclose;
    0.5 s at 27,000); past a limit, or past a vertex limit where even counting
    costs too much, an error."""
    rings = _rings(polygon)
    vertices = sum(len(ring) - 1 for ring in rings)
    if vertices > MAX_REPAIR_VERTICES:
        raise AnnotationError(
            f"{where}: invalid {kind} with {vertices} vertices; repairs are limited to "
            f"{MAX_REPAIR_VERTICES} vertices. Fix or simplify it in the annotation tool"
        )
    crossings = _segment_crossings(rings, stop_after=MAX_REPAIR_CROSSINGS)
    if crossings > MAX_REPAIR_CROSSINGS:
        raise AnnotationError(
            f"{where}: invalid {kind} whose edges cross each other more than {MAX_REPAIR_CROSSINGS} times "
            f"({vertices} vertices): not a drawn outline. Fix or redraw it in the annotation tool"
        )
    reason = shapely.is_valid_reason(polygon)
    if crossings <= LINEWORK_CROSSINGS:
        repaired, method = polygonal_part(shapely.make_valid(polygon)), ""
    else:
        repaired = polygonal_part(shapely.make_valid(polygon, method="structure"))
        method = f" (structure method: {crossings} self-crossings)"
    return repaired, (
        f"invalid {kind} ({reason}) repaired with make_valid{method} into "
        f"{len(shapely.get_parts(repaired))} part(s), area {repaired.area:.1f} px²"
    )


def _rings(geometry: BaseGeometry) -> list[np.ndarray]:
    """Every ring's closed (n+1, 2) coordinates: exteriors and holes of every part."""
    rings = []
    for part in shapely.get_parts(geometry):
        if isinstance(part, Polygon):
            rings += [np.asarray(part.exterior.coords)] + [np.asarray(r.coords) for r in part.interiors]
    return rings


def _segment_crossings(rings: list[np.ndarray], stop_after: int) -> int:
    """How many pairs of edges cross (counting stops past ``stop_after``)."""
    if not rings:
        return 0
    starts = np.concatenate([ring[:-1] for ring in rings])
    ends = np.concatenate([ring[1:] for ring in rings])
    segments = shapely.linestrings(np.stack([starts, ends], axis=1))
    tree = shapely.STRtree(segments)
    found = 0
    for start in range(0, len(segments), 32):
        pairs = tree.query(segments[start : start + 32], predicate="crosses")
        found += int((pairs[0] + start < pairs[1]).sum())  # each pair once
        if found > stop_after:
            break
    return found


def check_inside_slide(
    annotation: Annotation, slide_dimensions: tuple[int, int], warnings: list[str]
) -> None:
    width, height = slide_dimensions
    slide_box = box(0, 0, width, height)
    where = f"annotation {annotation.name!r}"
    if not annotation.geometry.intersects(slide_box):
        warnings.append(f"{where} lies entirely outside the slide ({width}x{height} px)")
    elif not slide_box.covers(annotation.geometry):
        warnings.append(f"{where} extends beyond the slide ({width}x{height} px)")
