"""Writing ASAP XML that ASAP opens: every group declared, ``Order`` on every coordinate."""

from __future__ import annotations

import warnings as python_warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import shapely
from lxml import etree
from shapely.geometry import MultiPoint, MultiPolygon, Point, Polygon

from wsi_tools._atomic import write_atomically
from wsi_tools.annotations._model import (
    ASAP_NO_GROUP,
    ASAP_TYPE_NAMES,
    DEFAULT_ANNOTATION_COLOR,
    GROUP_PALETTE,
    Annotation,
)
from wsi_tools.errors import AnnotationError


def write_asap_xml(
    annotations: Sequence[Annotation],
    path: str | Path,
    groups: Mapping[str, str | None] | None = None,
) -> Path:
    """Write annotations as ASAP XML; ``groups`` maps extra group names to colours.

    Every group used (and every parent in a group chain) is declared in
    ``AnnotationGroups``. The file is written atomically.
    """
    path = Path(path)
    colors = dict(groups or {})
    root = etree.Element("ASAP_Annotations")
    container = etree.SubElement(root, "Annotations")
    for annotation in annotations:
        for name, asap_type, points in _asap_parts(annotation, path):
            element = etree.SubElement(
                container,
                "Annotation",
                Name=name,
                Type=asap_type,
                PartOfGroup=annotation.group or ASAP_NO_GROUP,
                Color=annotation.color or DEFAULT_ANNOTATION_COLOR,
            )
            coordinates = etree.SubElement(element, "Coordinates")
            for order, (x, y) in enumerate(points):
                etree.SubElement(
                    coordinates, "Coordinate", Order=str(order), X=_format_number(x), Y=_format_number(y)
                )
    group_container = etree.SubElement(root, "AnnotationGroups")
    for index, (name, parent) in enumerate(_groups_to_declare(annotations, colors, path).items()):
        color = colors.get(name) or GROUP_PALETTE[index % len(GROUP_PALETTE)]
        group = etree.SubElement(
            group_container, "Group", Name=name, PartOfGroup=parent or ASAP_NO_GROUP, Color=color
        )
        etree.SubElement(group, "Attributes")
    data = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    write_atomically(path, data)
    return path


def _groups_to_declare(
    annotations: Sequence[Annotation], colors: Mapping[str, str | None], path: Path
) -> dict[str, str | None]:
    """Group name -> parent, for every group in any chain plus the named extras."""
    parents: dict[str, str | None] = {}
    for annotation in annotations:
        chain = annotation.group_chain
        if annotation.group and (not chain or chain[0] != annotation.group):
            chain = (annotation.group,)
        for position, name in enumerate(chain):
            parents.setdefault(name, chain[position + 1] if position + 1 < len(chain) else None)
    for name in colors:
        parents.setdefault(name, None)
    if ASAP_NO_GROUP in parents:
        raise AnnotationError(f"{path}: a group named {ASAP_NO_GROUP!r} means 'no group' to ASAP; rename it")
    return parents


def _asap_parts(annotation: Annotation, path: Path) -> list[tuple[str, str, list[tuple[float, float]]]]:
    """(name, ASAP type, vertices) per part; multi-polygons split into parts."""
    geometry = annotation.geometry
    if geometry.is_empty:
        raise AnnotationError(
            f"{path}: annotation {annotation.name!r} has an empty geometry; nothing to write"
        )
    if isinstance(geometry, Point):
        return [(annotation.name, "Dot", [(geometry.x, geometry.y)])]
    if isinstance(geometry, MultiPoint):
        return [(annotation.name, "PointSet", [(p.x, p.y) for p in geometry.geoms])]
    if isinstance(geometry, Polygon | MultiPolygon):
        polygons = list(shapely.get_parts(geometry))
        asap_type = ASAP_TYPE_NAMES.get(annotation.type, "Polygon") if annotation.is_polygonal else "Polygon"
        parts = []
        for index, polygon in enumerate(polygons, start=1):
            if polygon.interiors:
                python_warnings.warn(
                    f"{path}: annotation {annotation.name!r} has holes, which ASAP cannot store; dropped",
                    UserWarning,
                    stacklevel=3,
                )
            vertices = list(polygon.exterior.coords)[:-1]  # ASAP closes rings itself
            part_type = asap_type if asap_type != "Rectangle" or len(vertices) == 4 else "Polygon"
            name = annotation.name if len(polygons) == 1 else f"{annotation.name} part {index}"
            parts.append((name, part_type, vertices))
        return parts
    raise AnnotationError(
        f"{path}: annotation {annotation.name!r} is a {geometry.geom_type}, which ASAP has no type for"
    )


def _format_number(value: float) -> str:
    """Shortest text that reads back as the same float ("12" for 12.0)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
