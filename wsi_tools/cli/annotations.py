"""``wsi-tools annotations``: what an ASAP XML or QuPath GeoJSON file holds, per group and per label."""

from __future__ import annotations

import argparse
import json
from typing import Any

from wsi_tools.cli._common import add_command

DESCRIPTION = """\
Read an ASAP XML or QuPath GeoJSON annotation file (chosen by its content) and
print the count and total area (level-0 px², overlapping annotations counted
twice) per group and per label, then the warnings (repaired polygons,
degenerate or skipped annotations, annotations outside the slide). In GeoJSON
a feature's classification is its group; detections and unclassified objects
are skipped with a warning.

Labels come from a label map (YAML: `labels:` group -> integer, optional
`exclude:` groups cut out of the others), matched case-insensitively along the
group chain (own group, then parent groups). Groups the map does not know are
listed as unlabelled with a note: extraction refuses them unless told to
ignore them. The command exits 0 whenever the file can be read, and 2 (one line
naming the file) when it is malformed, hostile or missing.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "annotations",
        "summarise an ASAP XML or QuPath GeoJSON annotation file per group and label",
        DESCRIPTION,
    )
    parser.add_argument("xml", metavar="FILE", help="ASAP XML or QuPath GeoJSON annotation file")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of text (default: text)"
    )
    parser.add_argument(
        "--label-map",
        metavar="FILE",
        default=None,
        help="label map YAML, or the name of one in configs/labels (e.g. camelyon) "
        "(default: configs/labels/lymphatic_invasion.yaml)",
    )
    parser.add_argument(
        "--ignore-unknown",
        "--ignore-unknown-groups",
        dest="ignore_unknown",
        action="store_true",
        help="treat groups unknown to the label map as ignored, as extraction would with this option "
        "(default: list them with a note that extraction refuses them)",
    )
    parser.add_argument(
        "--slide",
        metavar="SLIDE",
        default=None,
        help="slide the annotations belong to: warns about annotations outside its level-0 area "
        "(default: no check)",
    )
    parser.set_defaults(func=run_annotations)


def run_annotations(args: argparse.Namespace) -> int:
    from wsi_tools.annotations import label_annotations, load_label_map, read_annotations, summarize

    dimensions = _slide_dimensions(args.slide) if args.slide else None
    label_map = load_label_map(args.label_map)
    aset = read_annotations(args.xml, slide_dimensions=dimensions)
    # Labelled leniently so that the summary always prints; the note says what extraction would do.
    labeled = label_annotations(aset, label_map, ignore_unknown=True)
    summary = summarize(aset, labeled)
    summary["unknown_groups_ignored"] = bool(args.ignore_unknown)
    if args.json:
        print(json.dumps(summary, indent=None))
    else:
        print(format_summary(summary))
    return 0


def _slide_dimensions(path: str) -> tuple[int, int]:
    from wsi_tools.slide import open_slide

    with open_slide(path, require_mpp=False) as slide:
        width, height = slide.dimensions
    return int(width), int(height)


def format_summary(summary: dict[str, Any]) -> str:
    """The text report of :func:`wsi_tools.annotations.summarize` output."""
    groups: dict[str, dict[str, Any]] = summary["groups"]
    label_rows: list[tuple[str, dict[str, Any]]] = []
    if "labels" in summary:
        label_rows = [(f"label {label}", entry) for label, entry in summary["labels"].items()]
        label_rows += [("excluded", summary["excluded"]), ("unlabelled", summary["unlabelled"])]
    width = max(
        [len("Groups"), *(len(name) + 2 for name in groups), *(len(name) + 2 for name, _ in label_rows)]
    )
    lines = [
        f"{summary['path']}: {summary['annotations']} annotation(s) in {len(groups)} group(s), "
        f"total area {summary['area_px2']:,.0f} px²",
        "",
        f"{'Groups':<{width}} {'count':>7} {'area (px²)':>16}  {'parent':<12} types",
    ]
    for name, entry in groups.items():
        types = ", ".join(f"{kind} {count}" for kind, count in entry["types"].items()) or "-"
        undeclared = "" if entry["declared"] else " (not declared)"
        lines.append(
            f"  {name:<{width - 2}} {entry['count']:>7} {entry['area_px2']:>16,.0f}  "
            f"{entry['parent'] or '-':<12} {types}{undeclared}"
        )
    if "labels" in summary:
        lines += ["", f"Labels (map: {summary['label_map']})"]
        for name, entry in label_rows:
            lines.append(
                f"  {name:<{width - 2}} {entry['count']:>7} {entry['area_px2']:>16,.0f}  {', '.join(entry['groups'])}"
            )
        unknown = summary["unknown_groups"]
        if unknown and summary.get("unknown_groups_ignored"):
            lines.append(f"note: groups unknown to the map are ignored: {', '.join(unknown)}")
        elif unknown:
            lines.append(
                f"note: groups unknown to the map: {', '.join(unknown)}; extraction refuses them unless you add "
                "them to the map's `labels:` or `exclude:`, pass another --label-map, or use --ignore-unknown-groups"
            )
    warnings = summary["warnings"]
    lines += ["", f"Warnings ({len(warnings)})" if warnings else "Warnings: none"]
    lines += [f"  - {warning}" for warning in warnings]
    return "\n".join(line.rstrip() for line in lines)
