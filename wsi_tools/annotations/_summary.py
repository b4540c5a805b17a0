"""What an annotation file holds, per group and per label (``wsi-tools annotations``)."""

from __future__ import annotations

from typing import Any

from wsi_tools.annotations._model import (
    UNGROUPED,
    Annotation,
    AnnotationGroup,
    AnnotationSet,
    LabeledAnnotations,
)


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
