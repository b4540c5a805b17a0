"""Reading QuPath GeoJSON exports as annotations, hardened as the ASAP reader is.

QuPath (v0.2 to v0.5) exports a ``FeatureCollection``, a single ``Feature`` or
a list of features. Per feature:

* ``properties.objectType`` ``"annotation"`` (or, in older exports, no
  objectType and an ``id`` other than ``PathDetectionObject``) is read;
  detections, cells and tiles are skipped, counted in one warning.
* The class is ``properties.classification.name`` (a string ``classification``
  in some exports); without one, the older ``properties.name`` is used with a
  warning; without either, the annotation is unclassified and skipped with a
  warning. The class is the annotation's group, mapped by the same label maps.
* ``Polygon`` and ``MultiPolygon`` keep their holes; ``Point`` and
  ``MultiPoint`` are points; lines have no area and are skipped with a warning;
  a ``GeometryCollection`` keeps its polygons.

Coordinates are level-0 pixels, as QuPath's image coordinates are. Invalid
polygons are repaired (and reported) exactly as for ASAP XML; files over
``MAX_GEOJSON_BYTES`` and coordinates beyond any slide are refused.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPoint, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_tools.annotations._geometry_checks import MAX_COORDINATE, check_inside_slide, repair_polygon
from wsi_tools.annotations._model import Annotation, AnnotationGroup, AnnotationSet
from wsi_tools.errors import AnnotationError

# Annotation exports are kilobytes to megabytes; a whole-slide cell export is
# gigabytes of detections, which this reader would skip anyway.
MAX_GEOJSON_BYTES = 256 * 2**20
SKIPPED_OBJECT_TYPES = frozenset({"detection", "cell", "tile", "tma_core"})


def read_qupath_geojson(path: str | Path, slide_dimensions: tuple[int, int] | None = None) -> AnnotationSet:
    """Read a QuPath GeoJSON export; see the module docstring."""
    path = Path(path)
    features = _features(_load(path), path)
    warnings: list[str] = []
    skipped: Counter[str] = Counter()
    annotations: list[Annotation] = []
    groups: dict[str, AnnotationGroup] = {}
    for index, feature in enumerate(features):
        where = f"{path}: feature {index}"
        annotation = _annotation(feature, index, where, warnings, skipped)
        if annotation is None:
            continue
        if slide_dimensions is not None:
            check_inside_slide(annotation, slide_dimensions, warnings)
        if annotation.group and annotation.group not in groups:
            groups[annotation.group] = AnnotationGroup(annotation.group, None, annotation.color)
        annotations.append(annotation)
    if skipped:
        warnings.append(
            "skipped "
            + ", ".join(f"{count} {kind}" for kind, count in sorted(skipped.items()))
            + " (only classified annotations are read)"
        )
    if not features:
        warnings.append("the file holds no features")
    return AnnotationSet(path=path, annotations=annotations, groups=groups, warnings=warnings)


def _load(path: Path) -> Any:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AnnotationError(f"{path}: no such annotation file; check the path") from None
    if size > MAX_GEOJSON_BYTES:
        raise AnnotationError(
            f"{path}: {size / 2**20:.0f} MiB is more than the {MAX_GEOJSON_BYTES // 2**20} MiB a GeoJSON "
            "annotation file may have; export the annotations only (no detections) from QuPath"
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise AnnotationError(
            f"{path}: not UTF-8 text at byte {error.start}; export it again from QuPath"
        ) from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except AnnotationError as error:
        raise AnnotationError(f"{path}: {error}") from None
    except json.JSONDecodeError as error:
        raise AnnotationError(
            f"{path}: malformed GeoJSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    except RecursionError:
        raise AnnotationError(f"{path}: GeoJSON nested too deeply to be an annotation export") from None


def _no_constant(name: str) -> float:
    raise AnnotationError(f"the file holds {name}; coordinates must be finite numbers")


def _features(document: Any, path: Path) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict) and document.get("type") == "FeatureCollection":
        features = document.get("features")
        if not isinstance(features, list):
            raise AnnotationError(f"{path}: a FeatureCollection without a features list")
        return features
    if isinstance(document, dict) and document.get("type") == "Feature":
        return [document]
    kind = document.get("type") if isinstance(document, dict) else type(document).__name__
    raise AnnotationError(
        f"{path}: not a GeoJSON Feature or FeatureCollection (found {kind!r}); export the annotations "
        "from QuPath (File > Export objects as GeoJSON)"
    )


def _annotation(
    feature: Any, index: int, where: str, warnings: list[str], skipped: Counter[str]
) -> Annotation | None:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise AnnotationError(f"{where}: not a GeoJSON Feature")
    properties = feature.get("properties") or {}
    if not isinstance(properties, dict):
        raise AnnotationError(f"{where}: properties is not an object")
    object_type = str(properties.get("objectType") or "").lower()
    if object_type in SKIPPED_OBJECT_TYPES or feature.get("id") == "PathDetectionObject":
        skipped[f"{object_type or 'detection'}(s)"] += 1
        return None
    name = str(properties.get("name") or f"feature {index}")
    group, color = _classification(properties, where, warnings)
    if group is None:
        skipped["unclassified annotation(s)"] += 1
        return None
    named = f"{where} ({name!r})" if properties.get("name") else where
    geometry, kind = _geometry(feature.get("geometry"), named, warnings)
    if geometry is None:
        return None
    return Annotation(name, kind, group, (group,), geometry, color)


def _classification(
    properties: dict[str, Any], where: str, warnings: list[str]
) -> tuple[str | None, str | None]:
    classification = properties.get("classification")
    if isinstance(classification, str) and classification.strip():
        return classification.strip(), None
    if isinstance(classification, dict) and str(classification.get("name") or "").strip():
        return str(classification["name"]).strip(), _colour(classification)
    if properties.get("name"):
        warnings.append(
            f"{where}: no classification; its name {properties['name']!r} is used as the class (older exports)"
        )
        return str(properties["name"]).strip(), None
    return None, None


def _colour(classification: dict[str, Any]) -> str | None:
    colour = classification.get("color")
    if isinstance(colour, list) and len(colour) == 3 and all(isinstance(c, int) for c in colour):
        return "#" + "".join(f"{max(0, min(255, c)):02X}" for c in colour)
    packed = classification.get("colorRGB")  # QuPath <= 0.3: a packed signed int
    if isinstance(packed, int):
        return f"#{packed & 0xFFFFFF:06X}"
    return None


def _geometry(data: Any, where: str, warnings: list[str]) -> tuple[BaseGeometry | None, str]:
    if not isinstance(data, dict) or "type" not in data:
        raise AnnotationError(f"{where}: no geometry")
    try:
        geometry = shapely.geometry.shape(data)
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        OverflowError,
        shapely.errors.GEOSException,
    ) as error:
        raise AnnotationError(f"{where}: invalid {data.get('type')} geometry ({error})") from None
    coordinates = shapely.get_coordinates(geometry)
    if len(coordinates) and not (
        np.isfinite(coordinates).all() and (np.abs(coordinates) <= MAX_COORDINATE).all()
    ):
        raise AnnotationError(
            f"{where}: coordinates beyond any slide (|value| <= {MAX_COORDINATE:.0e} level-0 px)"
        )
    if geometry.is_empty:
        warnings.append(f"{where}: empty geometry; skipped")
        return None, ""
    if isinstance(geometry, Point):
        return geometry, "dot"
    if isinstance(geometry, MultiPoint):
        return geometry, "pointset"
    polygons = [part for part in shapely.get_parts(geometry) if isinstance(part, Polygon | MultiPolygon)]
    if not polygons:
        warnings.append(f"{where}: a {geometry.geom_type} has no area; skipped")
        return None, ""
    polygons = [_valid(part, where, warnings) for part in polygons]
    polygon = shapely.union_all(polygons) if len(polygons) > 1 else polygons[0]
    if polygon.is_empty or not math.isfinite(polygon.area) or polygon.area == 0:
        warnings.append(f"{where}: degenerate polygon with zero area; skipped")
        return None, ""
    return polygon, "polygon"


def _valid(polygon: BaseGeometry, where: str, warnings: list[str]) -> BaseGeometry:
    if polygon.is_valid:
        return polygon
    repaired, repair = repair_polygon(polygon, where, "polygon")
    warnings.append(f"{where}: {repair}")
    return repaired
