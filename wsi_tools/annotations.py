"""ASAP XML annotations in and out, and label maps.

Reading (:func:`read_asap_xml`)
    The XML is parsed with a hardened lxml parser: no entity resolution, no
    network, no DTD loading, no huge trees. A DOCTYPE that declares entities
    is refused before anything is expanded (the "billion laughs" bomb fails in
    milliseconds). Malformed XML raises :class:`AnnotationError` naming the
    file and line.

    Geometry is in level-0 pixels, as ASAP writes it. Per ASAP type:

    * ``Polygon``: the vertices in ``Order`` order (not file order).
    * ``Spline``: ASAP draws a curve through its control points; here **the
      control points are used as the polygon's vertices** (no interpolation),
      so curved edges become straight segments between the clicked points.
    * ``Rectangle``: its 4 corners as a polygon (2 corners: their box).
    * ``Dot``: a shapely ``Point``; ``PointSet``: a ``MultiPoint``.
    * ``None`` and ``Measurement``: skipped with a warning (no region).

    Coordinates may use a decimal comma ("12,5"), as ASAP writes under some
    locales. Invalid polygons (self-intersections) are repaired with
    ``shapely.make_valid``, keeping only the polygonal parts, and the repair is
    recorded as a warning naming the annotation. Annotations with fewer than 3
    distinct vertices or zero area are dropped with a warning; with the slide's
    size given, annotations outside the slide are reported.

Groups
    ``PartOfGroup`` on an annotation names its group; ``PartOfGroup`` on a
    ``Group`` inside ``AnnotationGroups`` names the parent group. Each
    annotation keeps its ``group_chain`` (own group, parent, grandparent...);
    cycles are cut and reported.

Label maps (:func:`load_label_map`, :func:`label_annotations`)
    YAML with ``labels:`` (group name -> integer label) and an optional
    ``exclude:`` (groups whose areas are cut out of every labelled area).
    Matching is case-insensitive and follows the group chain: the first group
    of the chain that the map names decides. Groups the map does not know
    raise an error listing them all unless ``ignore_unknown=True``.

Writing (:func:`write_asap_xml`)
    ASAP-compatible XML with every group used declared (colours, parents) and
    ``Order`` on every coordinate. ASAP has no holes: a polygon's holes are
    dropped with a ``UserWarning``; a multi-polygon becomes one annotation per
    part.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings as python_warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import yaml
from lxml import etree
from shapely.geometry import MultiPoint, MultiPolygon, Point, Polygon, box
from shapely.geometry.base import BaseGeometry

from wsi_tools.config_file import packaged_config
from wsi_tools.errors import AnnotationError, ConfigError

ANNOTATION_TYPES = ("polygon", "spline", "rectangle", "dot", "pointset")
POLYGONAL_TYPES = frozenset({"polygon", "spline", "rectangle"})
SKIPPED_TYPES = frozenset({"none", "measurement"})
ASAP_TYPE_NAMES = {
    "polygon": "Polygon",
    "spline": "Spline",
    "rectangle": "Rectangle",
    "dot": "Dot",
    "pointset": "PointSet",
}
ASAP_NO_GROUP = "None"  # ASAP's PartOfGroup value for "in no group"
UNGROUPED = "<no group>"  # how annotations without a group show in reports
DEFAULT_ANNOTATION_COLOR = "#F4FA58"  # ASAP's own default
GROUP_PALETTE = ("#FF0000", "#00A000", "#0000FF", "#FF00FF", "#00A0A0", "#A05000", "#808080")

LABEL_MAP_DIR = packaged_config("labels")
DEFAULT_LABEL_MAP = LABEL_MAP_DIR / "lymphatic_invasion.yaml"
LABEL_RANGE = (0, 127)  # the patch store keeps labels as int8; negatives are reserved

# Entity declarations are refused before parsing: with them a few hundred
# bytes can expand to gigabytes, and ASAP never writes a DOCTYPE. The raw
# bytes are searched in the encodings annotation files come in.
_SCANNED_ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Annotation:
    """One ASAP annotation as a shapely geometry in level-0 pixels."""

    name: str
    type: str  # one of ANNOTATION_TYPES
    group: str | None
    group_chain: tuple[str, ...]  # (own group, parent group, ...)
    geometry: BaseGeometry
    color: str | None = None
    label: int | None = None

    @property
    def is_polygonal(self) -> bool:
        return self.type in POLYGONAL_TYPES

    @property
    def area(self) -> float:
        return float(self.geometry.area)


@dataclass(frozen=True)
class AnnotationGroup:
    """A group from ``AnnotationGroups`` (``declared=False``: only referenced)."""

    name: str
    parent: str | None
    color: str | None
    declared: bool = True


@dataclass
class AnnotationSet:
    """Everything read from one ASAP XML file."""

    path: Path
    annotations: list[Annotation]
    groups: dict[str, AnnotationGroup]
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.annotations)

    def __iter__(self):
        return iter(self.annotations)

    def group_colors(self) -> dict[str, str | None]:
        """Group name -> colour, as ``write_asap_xml(groups=...)`` takes it."""
        return {name: group.color for name, group in self.groups.items()}


@dataclass(frozen=True)
class GroupMatch:
    """Which group of a chain a label map matched, and its label (None: excluded)."""

    group: str
    label: int | None

    @property
    def excluded(self) -> bool:
        return self.label is None


@dataclass(frozen=True)
class LabelMap:
    """Group name -> label, plus exclusion groups; matched case-insensitively."""

    labels: Mapping[str, int]
    exclude: frozenset[str]
    source: str

    def __post_init__(self) -> None:
        # Keys are stored case-folded so that lookups are case-insensitive.
        labels: dict[str, int] = {}
        for name, label in self.labels.items():
            key = _group_key(name)
            if key in labels and labels[key] != label:
                raise ConfigError(
                    f"{self.source}: group {name!r} is given labels {labels[key]} and {label} "
                    "(names are matched case-insensitively); keep one"
                )
            labels[key] = label
        exclude = frozenset(_group_key(name) for name in self.exclude)
        both = sorted(exclude & labels.keys())
        if both:
            raise ConfigError(
                f"{self.source}: groups {', '.join(both)} are both labelled and excluded; "
                "remove them from `labels:` or from `exclude:`"
            )
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "exclude", exclude)

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.labels.items())), self.exclude, self.source))

    def match(self, group_chain: Sequence[str]) -> GroupMatch | None:
        """The first group of the chain that the map names, or None."""
        for group in group_chain:
            key = _group_key(group)
            if key in self.exclude:
                return GroupMatch(group, None)
            if key in self.labels:
                return GroupMatch(group, self.labels[key])
        return None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (recorded with extracted patches)."""
        return {
            "labels": dict(sorted(self.labels.items())),
            "exclude": sorted(self.exclude),
            "source": self.source,
        }


@dataclass
class LabeledAnnotations:
    """Annotations sorted by a label map, exclusion areas already cut out."""

    labeled: list[Annotation]  # label set, in file order
    excluded: list[Annotation]  # annotations of exclusion groups
    unlabelled: list[Annotation]  # groups unknown to the map (kept only when ignored)
    excluded_geometry: BaseGeometry | None  # union of exclusion areas
    unknown_groups: list[str]
    label_map: LabelMap
    warnings: list[str] = field(default_factory=list)

    @property
    def positives(self) -> list[Annotation]:
        return [annotation for annotation in self.labeled if annotation.label and annotation.label > 0]

    @property
    def negatives(self) -> list[Annotation]:
        return [annotation for annotation in self.labeled if annotation.label == 0]

    @property
    def positive_region(self) -> BaseGeometry | None:
        """Union of the positive areas (points carry no area and are left out)."""
        return polygonal_union(self.positives)

    @property
    def negative_region(self) -> BaseGeometry | None:
        return polygonal_union(self.negatives)


# --------------------------------------------------------------------------- reading


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
            _check_inside_slide(annotation, slide_dimensions, warnings)
        annotations.append(annotation)
    chains = _group_chains(groups, warnings)
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


def _group_key(name: str) -> str:
    return name.strip().casefold()


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


def _group_chains(groups: Mapping[str, AnnotationGroup], warnings: list[str]) -> dict[str, tuple[str, ...]]:
    """(group, parent, ...) for every group, cutting cycles with a warning."""
    chains: dict[str, tuple[str, ...]] = {}
    for name in groups:
        chain: list[str] = []
        current: str | None = name
        while current is not None:
            if current in chain:
                warnings.append(
                    f"group {name!r}: the PartOfGroup chain {' -> '.join([*chain, current])} is a cycle; "
                    f"it is cut after {chain[-1]!r}"
                )
                break
            chain.append(current)
            parent = groups.get(current)
            current = parent.parent if parent else None
        chains[name] = tuple(chain)
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
    geometry = _build_geometry(kind, points, where, warnings)
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
        usable = bool(np.isfinite(rows).all())
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
    return value


def _build_geometry(kind: str, points: np.ndarray, where: str, warnings: list[str]) -> BaseGeometry | None:
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
        reason = shapely.is_valid_reason(polygon)
        polygon = polygonal_part(shapely.make_valid(polygon))
        parts = len(shapely.get_parts(polygon))
        repair = (
            f"{where}: invalid {kind} ({reason}) repaired with make_valid into {parts} part(s), "
            f"area {polygon.area:.1f} px²"
        )
    if polygon.is_empty or polygon.area == 0:  # e.g. collinear vertices: nothing left to repair
        warnings.append(f"{where}: degenerate {kind} with zero area; skipped")
        return None
    if repair:
        warnings.append(repair)
    return polygon


def polygonal_part(geometry: BaseGeometry) -> BaseGeometry:
    """Only the polygons of a geometry (make_valid may add lines and points)."""
    polygons: list[Polygon] = []
    for part in shapely.get_parts(geometry):
        if isinstance(part, Polygon):
            polygons.append(part)
        elif isinstance(part, MultiPolygon):
            polygons.extend(part.geoms)
        elif part.geom_type == "GeometryCollection":
            polygons.extend(shapely.get_parts(polygonal_part(part)))
    polygons = [polygon for polygon in polygons if not polygon.is_empty]
    if not polygons:
        return Polygon()
    if len(polygons) == 1:
        return polygons[0]
    merged = MultiPolygon(polygons)
    return merged if merged.is_valid else shapely.union_all(polygons)


def polygonal_union(annotations: Iterable[Annotation]) -> BaseGeometry | None:
    """Union of the polygonal annotations' areas, or None when there is none."""
    geometries = [a.geometry for a in annotations if a.is_polygonal and not a.geometry.is_empty]
    return shapely.union_all(geometries) if geometries else None


def _check_inside_slide(
    annotation: Annotation, slide_dimensions: tuple[int, int], warnings: list[str]
) -> None:
    width, height = slide_dimensions
    slide_box = box(0, 0, width, height)
    where = f"annotation {annotation.name!r}"
    if not annotation.geometry.intersects(slide_box):
        warnings.append(f"{where} lies entirely outside the slide ({width}x{height} px)")
    elif not slide_box.covers(annotation.geometry):
        warnings.append(f"{where} extends beyond the slide ({width}x{height} px)")


# --------------------------------------------------------------------------- label maps

_LABEL_MAP_KEYS = frozenset({"labels", "exclude", "description"})


def available_label_maps() -> list[str]:
    """Names of the label maps shipped in configs/labels (usable instead of a path)."""
    return sorted(p.stem for p in LABEL_MAP_DIR.glob("*.yaml"))


def resolve_label_map_path(path: str | Path | None) -> Path:
    """A label map file: the project default, a path, or a name from configs/labels."""
    if path is None:
        return DEFAULT_LABEL_MAP
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    named = LABEL_MAP_DIR / f"{path}.yaml"
    if candidate.suffix == "" and candidate.name == str(path) and named.is_file():
        return named
    raise ConfigError(
        f"{path}: no such label map; give a YAML file or one of: {', '.join(available_label_maps()) or 'none'}"
    )


def load_label_map(path: str | Path | None = None) -> LabelMap:
    """Load a label map YAML (None: configs/labels/lymphatic_invasion.yaml)."""
    resolved = resolve_label_map_path(path)
    try:
        data = yaml.safe_load(resolved.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{resolved}: cannot read the label map ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{resolved}: invalid YAML{where}: {getattr(error, 'problem', error)}") from None
    example = "e.g. `labels: {LI_positive: 1, LI_negative: 0}`"
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict) or not data["labels"]:
        raise ConfigError(
            f"{resolved}: a label map needs a `labels:` mapping of group name to label, {example}"
        )
    unknown_keys = sorted(str(key) for key in data if key not in _LABEL_MAP_KEYS)
    if unknown_keys:
        raise ConfigError(
            f"{resolved}: unknown keys {', '.join(unknown_keys)}; a label map has `labels:` and optional `exclude:`"
        )
    labels: dict[str, int] = {}
    for name, label in data["labels"].items():
        if not isinstance(name, str):
            raise ConfigError(f"{resolved}: group name {name!r} in `labels:` is not text; quote it")
        if isinstance(label, bool) or not isinstance(label, int):
            raise ConfigError(
                f"{resolved}: label of group {name!r} must be an integer, got {label!r}; {example}"
            )
        low, high = LABEL_RANGE
        if not low <= label <= high:
            raise ConfigError(f"{resolved}: label {label} of group {name!r} is outside {low}..{high}")
        labels[name] = label
    exclude = data.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(name, str) for name in exclude):
        raise ConfigError(f"{resolved}: `exclude:` must be a list of group names, e.g. `exclude: [artefact]`")
    return LabelMap(labels=labels, exclude=frozenset(exclude), source=str(resolved))


def label_annotations(
    aset: AnnotationSet, label_map: LabelMap, ignore_unknown: bool = False
) -> LabeledAnnotations:
    """Give each annotation its label by following its group chain through the map.

    Exclusion areas are cut out of every labelled annotation (those left empty
    are dropped with a warning). Annotations in groups the map does not know
    raise :class:`AnnotationError` listing every such group, unless
    ``ignore_unknown`` keeps them aside in ``unlabelled``.
    """
    labeled: list[Annotation] = []
    excluded: list[Annotation] = []
    unlabelled: list[Annotation] = []
    warnings: list[str] = []
    for annotation in aset.annotations:
        found = label_map.match(annotation.group_chain)
        if found is None:
            unlabelled.append(annotation)
        elif found.excluded:
            if not annotation.is_polygonal:
                warnings.append(f"annotation {annotation.name!r} in exclusion group has no area; ignored")
            excluded.append(annotation)
        else:
            labeled.append(replace(annotation, label=found.label))
    unknown_groups = sorted({annotation.group or UNGROUPED for annotation in unlabelled})
    if unknown_groups and not ignore_unknown:
        raise AnnotationError(
            f"{aset.path}: {len(unlabelled)} annotation(s) in groups unknown to the label map "
            f"{label_map.source}: {', '.join(repr(g) for g in unknown_groups)}; add them to its `labels:` or "
            "`exclude:`, use another map (--label-map), or ignore them (--ignore-unknown-groups, "
            "ignore_unknown=True)"
        )
    excluded_geometry = polygonal_union(excluded)
    if excluded_geometry is not None:
        labeled = _cut_out(labeled, excluded_geometry, warnings)
    return LabeledAnnotations(
        labeled=labeled,
        excluded=excluded,
        unlabelled=unlabelled,
        excluded_geometry=excluded_geometry,
        unknown_groups=unknown_groups,
        label_map=label_map,
        warnings=warnings,
    )


def _cut_out(annotations: list[Annotation], excluded: BaseGeometry, warnings: list[str]) -> list[Annotation]:
    kept: list[Annotation] = []
    for annotation in annotations:
        if not annotation.geometry.intersects(excluded):
            kept.append(annotation)
            continue
        remaining = annotation.geometry.difference(excluded)
        if annotation.is_polygonal:
            remaining = polygonal_part(remaining)
        if remaining.is_empty or (annotation.is_polygonal and remaining.area == 0):
            warnings.append(f"annotation {annotation.name!r} lies entirely in excluded areas; dropped")
            continue
        kept.append(replace(annotation, geometry=remaining))
    return kept


# --------------------------------------------------------------------------- summary


def summarize(aset: AnnotationSet, labeled: LabeledAnnotations | None = None) -> dict[str, Any]:
    """Counts and areas (level-0 px², overlaps counted twice) per group and per label."""
    groups: dict[str, dict[str, Any]] = {}
    for group in aset.groups.values():
        groups[group.name] = _group_entry(group)
    for annotation in aset.annotations:
        name = annotation.group or UNGROUPED
        entry = groups.setdefault(name, _group_entry(None))
        _add(entry, annotation)
        entry["types"][annotation.type] = entry["types"].get(annotation.type, 0) + 1
    summary: dict[str, Any] = {
        "path": str(aset.path),
        "annotations": len(aset.annotations),
        "area_px2": sum(a.area for a in aset.annotations),
        "groups": groups,
        "warnings": list(aset.warnings),
    }
    if labeled is not None:
        # Every label of the map is listed, with zero counts where nothing has it.
        labels = {str(label): _label_entry() for label in sorted(set(labeled.label_map.labels.values()))}
        for annotation in labeled.labeled:
            _add(labels[str(annotation.label)], annotation)
        summary["label_map"] = labeled.label_map.source
        summary["labels"] = labels
        summary["excluded"] = _label_entry()
        for annotation in labeled.excluded:
            _add(summary["excluded"], annotation)
        summary["unlabelled"] = _label_entry()
        for annotation in labeled.unlabelled:
            _add(summary["unlabelled"], annotation)
        summary["unknown_groups"] = list(labeled.unknown_groups)
        summary["warnings"].extend(labeled.warnings)
    return summary


def _group_entry(group: AnnotationGroup | None) -> dict[str, Any]:
    return {
        "count": 0,
        "area_px2": 0.0,
        "types": {},
        "parent": group.parent if group else None,
        "color": group.color if group else None,
        "declared": group.declared if group else False,
    }


def _label_entry() -> dict[str, Any]:
    return {"count": 0, "area_px2": 0.0, "groups": []}


def _add(entry: dict[str, Any], annotation: Annotation) -> None:
    entry["count"] += 1
    entry["area_px2"] += annotation.area
    if "groups" in entry:
        name = annotation.group or UNGROUPED
        if name not in entry["groups"]:
            entry["groups"].append(name)


# --------------------------------------------------------------------------- writing


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
    _write_atomically(path, data)
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


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
