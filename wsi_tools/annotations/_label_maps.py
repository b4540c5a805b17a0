"""Label maps: YAML group-to-label maps, and labelling an annotation set with one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml
from shapely.geometry.base import BaseGeometry

from wsi_tools.annotations._model import (
    DEFAULT_LABEL_MAP,
    LABEL_MAP_DIR,
    LABEL_RANGE,
    UNGROUPED,
    Annotation,
    AnnotationSet,
    LabeledAnnotations,
    LabelMap,
    polygonal_part,
    polygonal_union,
)
from wsi_tools.errors import AnnotationError, ConfigError, problem_list

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
            f"{label_map.source}: {problem_list([repr(g) for g in unknown_groups], str(aset.path))}; add them to its `labels:` or "
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
