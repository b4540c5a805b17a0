"""The annotation data: annotations, groups, sets, label maps and labelled sets, and the constants of the ASAP format."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_tools.config_file import packaged_config
from wsi_tools.errors import ConfigError

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
            key = group_key(name)
            if key in labels and labels[key] != label:
                raise ConfigError(
                    f"{self.source}: group {name!r} is given labels {labels[key]} and {label} "
                    "(names are matched case-insensitively); keep one"
                )
            labels[key] = label
        exclude = frozenset(group_key(name) for name in self.exclude)
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
            key = group_key(group)
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


def group_key(name: str) -> str:
    return name.strip().casefold()


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
