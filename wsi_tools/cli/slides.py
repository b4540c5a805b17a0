"""``wsi-tools info``, ``check`` and ``tissue``: what is in a slide, whether it is sound, and where its tissue is."""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from typing import TYPE_CHECKING, Any

from wsi_tools.cli._common import add_command
from wsi_tools.errors import ConfigError
from wsi_tools.slide._check import DEFAULT_TILES_PER_LEVEL

if TYPE_CHECKING:
    from wsi_tools.slide import Slide

BACKEND_CHOICES = ("auto", "openslide", "tiffslide")

INFO_DESCRIPTION = """\
Print what a slide holds: backend, vendor, level-0 dimensions, every pyramid
level (size, downsample, µm/px), the level-0 resolution (mpp; null when the
slide records none), objective power, and a cheap file fingerprint (size plus
SHA-256 of the first and last MiB). Works on slides without MPP; warnings
(AppMag disagreeing with MPP, x and y resolution differing) are printed too.
The coarsest level is decoded as a check: a damaged file exits with status 2.
"""

CHECK_DESCRIPTION = """\
A preflight for an archive: check each slide file before a long run.

Opening a TIFF-based slide (.svs, .tif) already checks its structure: the
chain of TIFF directories and every tile's bytes must lie inside the file (a
truncated copy fails there). check then decodes --tiles tiles of every page
(pyramid levels, thumbnail, label, macro), always including the first and the
last, with the JPEG decoder's warnings (premature end of data, corrupt Huffman
data) counted as damage; other formats are read box by box through OpenSlide.

TIFF has no checksum: a flipped bit that still leaves a valid JPEG stream
cannot be seen by any reader. Everything the file structure and the decoder
can tell is caught.

One line per slide (ok / DAMAGED and the first problem); exit status 0 when
every slide is sound, 1 when any is damaged, 2 on bad usage. batch --check
runs the same check on each slide before extracting it.
"""

TISSUE_DESCRIPTION = """\
Find the tissue (Otsu threshold on HSV saturation of a thumbnail at --mpp
µm/px, then median blur, morphological close and open, regions smaller than
--min-region-um2 dropped, holes smaller than --min-hole-um2 filled), print its
area in mm², and write a QC picture with the tissue contour and, with
--annotations, the annotations in one colour per group.

Needs the slide's resolution: a slide without MPP needs --slide-mpp X.
"""


def _add_slide_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "slide", metavar="SLIDE", help="whole-slide image (Aperio .svs or any OpenSlide format)"
    )
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="reader: auto tries tiffslide for .svs/.tif/.tiff and falls back to OpenSlide (default: auto)",
    )
    parser.add_argument(
        "--slide-mpp",
        type=float,
        default=None,
        metavar="X",
        help="level-0 resolution in µm/px, overriding (or standing in for) the slide's own MPP "
        "(default: the slide's MPP)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    info = add_command(
        subparsers,
        "info",
        "print a slide's levels, dimensions, mpp, objective, vendor, backend and fingerprint",
        INFO_DESCRIPTION,
    )
    _add_slide_options(info)
    info.add_argument(
        "--json", action="store_true", help="print one JSON object instead of text (default: text)"
    )
    info.set_defaults(func=run_info)

    check = add_command(
        subparsers,
        "check",
        "check slide files for truncation and damaged tiles before a run",
        CHECK_DESCRIPTION,
    )
    check.add_argument("slides", metavar="SLIDE", nargs="*", help="slide files to check")
    check.add_argument(
        "--manifest",
        metavar="CSV",
        default=None,
        help="also check every slide of a batch manifest (default: none)",
    )
    check.add_argument(
        "--tiles",
        type=tiles_option,
        default=DEFAULT_TILES_PER_LEVEL,
        metavar="N|all",
        help=f"tiles to decode per page, or all (default: {DEFAULT_TILES_PER_LEVEL})",
    )
    check.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="reader that opens each slide (default: auto)",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object per slide (default: text)")
    check.set_defaults(func=run_check)

    tissue = add_command(
        subparsers,
        "tissue",
        "detect tissue, print its area in mm² and write a QC picture",
        TISSUE_DESCRIPTION,
    )
    _add_slide_options(tissue)
    tissue.add_argument("--out", required=True, metavar="PNG", help="QC picture to write (required)")
    tissue.add_argument(
        "--annotations", metavar="XML", default=None, help="ASAP XML to draw on the picture (default: none)"
    )
    tissue.add_argument(
        "--mpp",
        type=float,
        default=8.0,
        metavar="UM",
        help="resolution of the thumbnail tissue is found on, µm/px; 8-16 works well (default: 8)",
    )
    tissue.add_argument(
        "--min-region-um2",
        type=float,
        default=None,
        metavar="A",
        help="drop tissue regions smaller than this many µm² (default: 20000)",
    )
    tissue.add_argument(
        "--min-hole-um2",
        type=float,
        default=None,
        metavar="A",
        help="fill holes in the tissue smaller than this many µm² (default: 20000)",
    )
    tissue.add_argument(
        "--json", action="store_true", help="print one JSON object instead of text (default: text)"
    )
    tissue.set_defaults(func=run_tissue)


def _open(args: argparse.Namespace, require_mpp: bool) -> Slide:
    from wsi_tools.slide import open_slide

    # Warnings are shown once, by this command, not by Python's warning machinery.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_slide(args.slide, backend=args.backend, mpp=args.slide_mpp, require_mpp=require_mpp)


def run_info(args: argparse.Namespace) -> int:
    with _open(args, require_mpp=False) as slide:
        slide.check_readable()  # a damaged file fails here (exit 2), not hours into a batch
        summary = slide.describe()
    print(json.dumps(summary) if args.json else format_info(summary))
    return 0


def tiles_option(text: str) -> int | None:
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--tiles takes a whole number of at least 1 or 'all', got {text!r}")
    return value


def run_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wsi_tools.slide import check_slide

    paths = [Path(slide) for slide in args.slides]
    if args.manifest:
        from wsi_tools.batch.manifest import read_manifest

        paths += [entry.slide_path for entry in read_manifest(args.manifest).entries]
    if not paths:
        raise ConfigError("check needs slide files or --manifest CSV")
    damaged = 0
    for path in paths:
        result = check_slide(path, tiles=args.tiles, backend=args.backend)
        damaged += not result.ok
        print(json.dumps(dataclasses.asdict(result)) if args.json else result.line(), flush=True)
    if not args.json:
        print(
            f"{len(paths) - damaged} of {len(paths)} slides sound"
            + (f", {damaged} damaged" if damaged else "")
        )
    return 1 if damaged else 0


def format_info(summary: dict[str, Any]) -> str:
    mpp = summary["mpp"]
    if mpp is None:
        mpp_text = "none recorded (null): pass --slide-mpp X to extract from this slide"
    else:
        source = "override" if summary["mpp_source"] == "override" else "slide"
        mpp_text = f"{mpp['x']:g} x {mpp['y']:g} µm/px (from the {source})"
    objective = summary["objective_power"]
    width, height = summary["dimensions"]
    lines = [
        f"slide        {summary['path']}",
        f"backend      {summary['backend']}"
        + (f" ({summary['backend_choice']})" if summary.get("backend_choice") else ""),
        f"vendor       {summary['vendor'] or 'unknown'}",
        f"dimensions   {width} x {height} px (level 0)",
        f"mpp          {mpp_text}",
        f"objective    {f'{objective:g}x' if objective else 'unknown'}",
        f"fingerprint  {summary['fingerprint']}",
        f"levels       {summary['level_count']}",
        "  level      width     height  downsample   µm/px",
    ]
    for level in summary["levels"]:
        level_mpp = "-" if level["mpp"] is None else f"{level['mpp']:.4g}"
        lines.append(
            f"  {level['level']:>5} {level['width']:>10} {level['height']:>10} "
            f"{level['downsample']:>11.4f} {level_mpp:>7}"
        )
    lines += [f"warning: {message}" for message in summary["warnings"]]
    return "\n".join(lines)


def run_tissue(args: argparse.Namespace) -> int:
    from wsi_tools.tissue import DEFAULT_MIN_HOLE_UM2, DEFAULT_MIN_REGION_UM2, detect_tissue
    from wsi_tools.viz.qc import render_overview

    if not args.mpp > 0:
        raise ConfigError(f"--mpp must be a positive µm/px, got {args.mpp}")
    for option, value in (("--min-region-um2", args.min_region_um2), ("--min-hole-um2", args.min_hole_um2)):
        if value is not None and value < 0:
            raise ConfigError(f"{option} must be zero or more µm², got {value}")
    with _open(args, require_mpp=True) as slide:
        annotations = None
        annotation_warnings: list[str] = []
        if args.annotations:
            from wsi_tools.annotations import read_annotations

            aset = read_annotations(args.annotations, slide_dimensions=slide.dimensions)
            annotations, annotation_warnings = aset.annotations, aset.warnings
        tissue = detect_tissue(
            slide,
            target_mpp=args.mpp,
            min_region_um2=DEFAULT_MIN_REGION_UM2 if args.min_region_um2 is None else args.min_region_um2,
            min_hole_um2=DEFAULT_MIN_HOLE_UM2 if args.min_hole_um2 is None else args.min_hole_um2,
        )
        out = render_overview(slide, args.out, tissue=tissue, annotations=annotations, target_mpp=args.mpp)
        regions = (
            len(getattr(tissue.polygon, "geoms", [tissue.polygon])) if not tissue.polygon.is_empty else 0
        )
        summary: dict[str, Any] = {
            "slide": str(slide.path),
            "tissue_area_mm2": round(tissue.area_mm2 or 0.0, 6),
            "tissue_fraction": round(tissue.fraction_of_slide, 6),
            "regions": regions,
            "saturation_threshold": tissue.threshold,
            "mask_mpp": tissue.mpp,
            "annotations": None if annotations is None else len(annotations),
            "out": str(out),
            "warnings": [*slide.warnings, *annotation_warnings],
        }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"tissue: {summary['tissue_area_mm2']:.3f} mm² ({summary['tissue_fraction']:.1%} of the slide) "
        f"in {regions} region{'s' if regions != 1 else ''} (saturation threshold {tissue.threshold:g}, "
        f"mask at {tissue.mpp:.2f} µm/px)"
    )
    if annotations is not None:
        print(f"annotations: {len(annotations)} drawn from {args.annotations}")
    print(f"QC picture: {out}")
    for message in summary["warnings"]:
        print(f"warning: {message}")
    return 0
