"""Writing QuPath GeoJSON (v0.4+ conventions) that QuPath imports as annotations.

A ``FeatureCollection`` of ``Feature`` objects, each with
``properties.objectType: "annotation"``, ``properties.classification:
{name, color: [r, g, b]}`` (the annotation's group and colour) and, where
given, ``properties.measurements`` as a name -> number mapping. Polygons keep
their holes; rings are closed; a multi-polygon of one part is written as a
Polygon. Coordinates are level-0 pixels, as QuPath's image coordinates are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, mapping

from wsi_tools._atomic import write_atomically
from wsi_tools.annotations._model import DEFAULT_ANNOTATION_COLOR, Annotation
from wsi_tools.errors import AnnotationError


def hex_to_rgb(color: str | None) -> list[int]:
    """``"#F4FA58"`` -> ``[244, 250, 88]`` (the default annotation colour when absent)."""
    text = (color or DEFAULT_ANNOTATION_COLOR).lstrip("#")
    if len(text) != 6:
        text = DEFAULT_ANNOTATION_COLOR.lstrip("#")
    return [int(text[i : i + 2], 16) for i in (0, 2, 4)]


def _geometry(annotation: Annotation, path: Path) -> dict[str, Any]:
    geometry = annotation.geometry
    if geometry.is_empty:
        raise AnnotationError(
            f"{path}: annotation {annotation.name!r} has an empty geometry; nothing to write"
        )
    if isinstance(geometry, MultiPolygon) and len(geometry.geoms) == 1:
        geometry = geometry.geoms[0]
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        geometry = shapely.orient_polygons(geometry)  # RFC 7946: exteriors anticlockwise
    return dict(mapping(geometry))


def write_qupath_geojson(
    annotations: Sequence[Annotation],
    path: str | Path,
    measurements: Sequence[Mapping[str, float]] | None = None,
) -> Path:
    """Write ``annotations`` (with ``measurements[i]`` for annotation ``i``) as QuPath GeoJSON."""
    path = Path(path)
    if measurements is not None and len(measurements) != len(annotations):
        raise ValueError("give one measurements mapping per annotation")
    features = []
    for index, annotation in enumerate(annotations):
        properties: dict[str, Any] = {"objectType": "annotation", "name": annotation.name}
        if annotation.group:
            properties["classification"] = {"name": annotation.group, "color": hex_to_rgb(annotation.color)}
        if measurements is not None:
            properties["measurements"] = {str(k): float(v) for k, v in measurements[index].items()}
        features.append(
            {"type": "Feature", "geometry": _geometry(annotation, path), "properties": properties}
        )
    data = json.dumps({"type": "FeatureCollection", "features": features}, indent=1)
    write_atomically(path, data)
    return path
