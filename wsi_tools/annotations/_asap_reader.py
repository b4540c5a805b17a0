"""Reading ASAP XML with a hardened parser: geometry per ASAP type, groups and their chains, repairs as warnings."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
from lxml import etree
from shapely.geometry import MultiPoint, Point, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_tools.annotations._geometry_checks import MAX_COORDINATE, check_inside_slide, repair_polygon
from wsi_tools.annotations._model import (
    ASAP_NO_GROUP,
    ASAP_TYPE_NAMES,
    SKIPPED_TYPES,
    Annotation,
    AnnotationGroup,
    AnnotationSet,
)
from wsi_tools.errors import AnnotationError

# Entity declarations are refused before parsing: with them a few hundred
# bytes can expand to gigabytes, and ASAP never writes a DOCTYPE. The raw
# bytes are searched in the encodings annotation files come in.
# Real files nest groups two or three deep; a chain this long is damage or hostile.
MAX_GROUP_DEPTH = 64
_SCANNED_ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be")


def read_asap_xml(path: str | Path, slide_dimensions: tuple[int, int] | None = None) -> AnnotationSet:
    """Read an ASAP XML file; see the module docstring for what happens to each type.

    ``slide_dimensions`` (level-0 width, height) enables warnings for
    annotations that lie outside the slide.
    """
    path = Path(path)
    root = _parse_hardened(path)
    warnings: list[str] = []
    groups = _read_groups(root, warnings)
    annotations: list[Annotation] = []
    elements = root.findall("Annotations/Annotation")
    if not elements:
        warnings.append("the file holds no Annotation elements")
    for index, element in enumerate(elements):
        annotation = _read_annotation(element, index, path, groups, warnings)
        if annotation is None:
            continue
        if slide_dimensions is not None:
            check_inside_slide(annotation, slide_dimensions, warnings)
        annotations.append(annotation)
    chains = _group_chains(groups, (a.group for a in annotations if a.group), warnings)
    annotations = [replace(a, group_chain=chains[a.group]) if a.group else a for a in annotations]
    return AnnotationSet(path=path, annotations=annotations, groups=groups, warnings=warnings)


def _hardened_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, dtd_validation=False
    )


def _parse_hardened(path: Path) -> etree._Element:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: no such annotation file; check the path") from None
    except OSError as error:
        raise AnnotationError(f"{path}: cannot read the annotation file ({error.strerror})") from None
    for encoding in _SCANNED_ENCODINGS:
        position = data.find("<!ENTITY".encode(encoding))
        if position >= 0:
            line = data.count("\n".encode(encoding), 0, position) + 1
            raise AnnotationError(_entity_message(path, line))
    try:
        root = etree.fromstring(data, parser=_hardened_parser())
    except etree.XMLSyntaxError as error:
        raise AnnotationError(
            f"{path}: malformed XML at line {error.lineno}: {error.msg}; re-export it from ASAP or fix that line"
        ) from None
    # A second guard for encodings the byte search cannot see (UTF-32...).
    dtd = root.getroottree().docinfo.internalDTD
    if dtd is not None and any(True for _ in dtd.iterentities()):
        raise AnnotationError(_entity_message(path, 1))
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(
            f"{path}: not an ASAP annotation file (root element <{root.tag}>, expected <ASAP_Annotations>); "
            "export the annotations from ASAP as XML"
        )
    return root


def _entity_message(path: Path, line: int) -> str:
    return (
        f"{path}: line {line} declares XML entities in a DOCTYPE, which is refused (entities can "
        "expand into huge documents); remove the DOCTYPE, ASAP never writes one"
    )


def _group_ref(value: str | None) -> str | None:
    """A PartOfGroup value as a group name (ASAP writes "None" for no group)."""
    if value is None:
        return None
    value = value.strip()
    return None if value in ("", ASAP_NO_GROUP) else value


def _read_groups(root: etree._Element, warnings: list[str]) -> dict[str, AnnotationGroup]:
    groups: dict[str, AnnotationGroup] = {}
    for element in root.iterfind("AnnotationGroups/Group"):
        name = (element.get("Name") or "").strip()
        if not name:
            warnings.append(f"group at line {element.sourceline} has no Name; ignored")
            continue
        if name in groups:
            warnings.append(
                f"group {name!r} is declared twice (line {element.sourceline}); the first is kept"
            )
            continue
        groups[name] = AnnotationGroup(name, _group_ref(element.get("PartOfGroup")), element.get("Color"))
    # Parents that are only referenced still belong to the chain.
    for group in list(groups.values()):
        if group.parent and group.parent not in groups:
            groups[group.parent] = AnnotationGroup(group.parent, None, None, declared=False)
    return groups


def _group_chains(
    groups: Mapping[str, AnnotationGroup], used: Iterable[str], warnings: list[str]
) -> dict[str, tuple[str, ...]]:
    """(group, parent, ...) for every group an annotation uses: at most
    MAX_GROUP_DEPTH long, a cycle cut before it repeats, one warning each for all
    the cycles and all the over-deep chains (a hostile file can declare thousands)."""
    chains: dict[str, tuple[str, ...]] = {}
    cycles: list[str] = []
    too_deep: list[str] = []
    for name in dict.fromkeys(used):
        chain: list[str] = []
        seen: set[str] = set()
        current: str | None = name
        while current is not None:
            if current in seen:
                cycles.append(" -> ".join([*chain[:6], "..."] if len(chain) > 6 else [*chain, current]))
                break
            if len(chain) == MAX_GROUP_DEPTH:
                too_deep.append(name)
                break
            seen.add(current)
            chain.append(current)
            parent = groups.get(current)
            current = parent.parent if parent else None
        chains[name] = tuple(chain)
    if cycles:
        warnings.append(
            f"the PartOfGroup chains of {len(cycles)} group(s) form a cycle, each cut before it repeats: "
            + "; ".join(cycles[:3])
            + (f"; and {len(cycles) - 3} more" if len(cycles) > 3 else "")
        )
    if too_deep:
        warnings.append(
            f"the PartOfGroup chains of {len(too_deep)} group(s) are deeper than {MAX_GROUP_DEPTH} groups and "
            f"are cut there (first: {too_deep[0]!r}); labels are matched on the first {MAX_GROUP_DEPTH}"
        )
    return chains


def _read_annotation(
    element: etree._Element,
    index: int,
    path: Path,
    groups: dict[str, AnnotationGroup],
    warnings: list[str],
) -> Annotation | None:
    name = element.get("Name") or f"Annotation {index}"
    where = f"annotation {name!r} (line {element.sourceline})"
    raw_type = (element.get("Type") or "").strip()
    kind = raw_type.lower()
    if kind in SKIPPED_TYPES:
        warnings.append(f"{where}: type {raw_type} has no region; skipped")
        return None
    if kind not in ASAP_TYPE_NAMES:
        warnings.append(f"{where}: unknown type {raw_type!r}; skipped")
        return None
    points = _read_coordinates(element, path, where, warnings)
    geometry = _build_geometry(kind, points, where, warnings, path)
    if geometry is None:
        return None
    group = _group_ref(element.get("PartOfGroup"))
    if group is not None and group not in groups:
        groups[group] = AnnotationGroup(group, None, None, declared=False)
    return Annotation(
        name=name,
        type=kind,
        group=group,
        group_chain=(group,) if group else (),
        geometry=geometry,
        color=element.get("Color"),
    )


def _read_coordinates(element: etree._Element, path: Path, where: str, warnings: list[str]) -> np.ndarray:
    """(N, 2) float vertices sorted by ``Order`` (file position breaking ties)."""
    coordinates = element.findall("Coordinates/Coordinate")
    raw = [(c.get("Order"), c.get("X"), c.get("Y")) for c in coordinates]
    try:  # fast path: plain numbers everywhere
        rows = np.array(
            [
                (position if order is None else float(order), float(x), float(y))
                for position, (order, x, y) in enumerate(raw)
            ],
            dtype=np.float64,
        ).reshape(-1, 3)
        usable = bool(np.isfinite(rows).all()) and bool((np.abs(rows[:, 1:]) <= MAX_COORDINATE).all())
    except (TypeError, ValueError):
        usable = False
    if not usable:  # decimal commas, or an error to report with its line
        rows = np.array(
            [
                _parse_coordinate(coordinate, position, path, where)
                for position, coordinate in enumerate(coordinates)
            ],
            dtype=np.float64,
        ).reshape(-1, 3)
    order = np.lexsort((np.arange(len(rows)), rows[:, 0]))
    if len(np.unique(rows[:, 0])) != len(rows):
        warnings.append(f"{where}: repeated Order values; file order used between equal ones")
    return rows[order, 1:]


def _parse_coordinate(
    coordinate: etree._Element, position: int, path: Path, where: str
) -> tuple[float, float, float]:
    what = f"{where}, coordinate at line {coordinate.sourceline}"
    order_text = coordinate.get("Order")
    order = float(position) if order_text is None else _parse_number(order_text, "Order", path, what)
    return (
        order,
        _parse_number(coordinate.get("X"), "X", path, what),
        _parse_number(coordinate.get("Y"), "Y", path, what),
    )


def _parse_number(text: str | None, attribute: str, path: Path, what: str) -> float:
    if text is None:
        raise AnnotationError(f"{path}: {what} has no {attribute} attribute; every Coordinate needs X and Y")
    cleaned = text.strip()
    if "," in cleaned and "." not in cleaned:
        cleaned = cleaned.replace(",", ".")  # decimal comma, as ASAP writes under e.g. a German locale
    try:
        value = float(cleaned)
    except ValueError:
        raise AnnotationError(f"{path}: {what} has {attribute}={text!r}, which is not a number") from None
    if not math.isfinite(value):
        raise AnnotationError(f"{path}: {what} has {attribute}={text!r}; coordinates must be finite")
    if abs(value) > MAX_COORDINATE:
        # Areas and unions of such numbers overflow to inf (and JSON to "Infinity").
        raise AnnotationError(
            f"{path}: {what} has {attribute}={text!r}, beyond any slide (|value| <= {MAX_COORDINATE:.0e} "
            "level-0 px); is the file in other units?"
        )
    return value


def _build_geometry(
    kind: str, points: np.ndarray, where: str, warnings: list[str], path: Path
) -> BaseGeometry | None:
    if len(points) == 0:
        warnings.append(f"{where}: no coordinates; skipped")
        return None
    if kind == "dot":
        if len(points) > 1:
            warnings.append(f"{where}: a Dot with {len(points)} coordinates; the first is used")
        return Point(points[0])
    if kind == "pointset":
        return MultiPoint(points)
    if kind == "rectangle" and len(points) == 2:
        (x0, y0), (x1, y1) = points
        points = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    polygon: BaseGeometry = Polygon(points) if len(points) >= 3 else Polygon()
    if polygon.is_empty or polygon.area == 0 or not polygon.is_valid:
        # Counted only here: the common valid polygon needs no sort of its vertices.
        distinct = len(np.unique(points, axis=0))
        if distinct < 3:
            warnings.append(f"{where}: degenerate {kind} with {distinct} distinct vertices; skipped")
            return None
    repair = None
    if not polygon.is_valid:
        polygon, repair = repair_polygon(polygon, f"{path}: {where}", kind)
    if polygon.is_empty or polygon.area == 0:  # e.g. collinear vertices: nothing left to repair
        warnings.append(f"{where}: degenerate {kind} with zero area; skipped")
        return None
    if repair:
        warnings.append(f"{where}: {repair}")
    return polygon
