"""``wsi-tools extract | verify | export | import-png``: slides into the patch store and back out."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from fractions import Fraction

from wsi_tools.errors import ConfigError

BACKEND_CHOICES = ("auto", "openslide", "tiffslide")
EXIT_PROBLEMS = 1

EXTRACT_DESCRIPTION = """\
Cut 512 x 512 px patches at 2.0 µm/px (×5) out of one slide into a zarr patch
store (format: docs/store.md), with full provenance.

  --set hard   one patch per annotated region of --annotations (ASAP XML),
               centred on the region's bounding box and shifted inside the
               slide, labelled by the label map. A negative patch whose window
               reaches into any positive annotation is dropped and counted.
               --cover tiles regions larger than one patch instead (a grid at
               one-patch steps centred on the region's bounding box, keeping
               windows that meet the region). Windows reaching into an
               exclusion area of the label map are dropped.
  --set weak   every patch labelled 0 (a slide-level negative): the
               non-overlapping grid from the slide's (0, 0), windows with at
               least --min-tissue tissue, then a random --fraction of them
               drawn from (--seed, slide id), so reruns and any number of
               workers give the same patches.

A slide already complete in the store is skipped unless --overwrite. The
slide is written under a temporary name and appears only when complete.
Prints one summary line; exit status 2 on bad input (message names the file).
"""

VERIFY_DESCRIPTION = """\
Check a patch store: every slide group is complete, its arrays agree in
length, every image chunk is present, passes its crc32c and decompresses;
lists temporary groups left by interrupted writes. Exit status 0 when all is
well, 1 when anything is wrong (each problem is printed), 2 when STORE is not
a patch store.
"""

EXPORT_DESCRIPTION = """\
Write the store as the paper's Zenodo-style PNG dataset:
  DIR/hard_labeled_dataset/{pos|neg}_{slide_id}_{x}-{y}.png
  DIR/weakly_labeled_dataset/{slide_id}_{x}-{y}.png
  DIR/metadata.csv   (file, slide, x, y, label, set, mpp, patch_size)
x and y are the level-0 pixel coordinates of each patch's top-left corner.
"""

IMPORT_DESCRIPTION = """\
Read a Zenodo-style dataset (the layout `wsi-tools export` writes, or the
public PNG release) into a patch store, one group per slide and set, so that
training reads from the store. Accepts .png, .jpg and RGBA or grey images
(converted to RGB). Slide ids come from the file names, parsed from the right
(ids may contain underscores). Names that do not parse are listed and skipped.
"""


def _fraction(text: str) -> float:
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    extract = subparsers.add_parser(
        "extract",
        help="extract a slide's hard (annotated) or weak (grid) patch set into a zarr store",
        description=EXTRACT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    extract.add_argument(
        "slide", metavar="SLIDE", help="whole-slide image (Aperio .svs or any OpenSlide format)"
    )
    extract.add_argument(
        "--out", required=True, metavar="STORE", help="patch store directory, created if missing"
    )
    extract.add_argument("--set", required=True, choices=("hard", "weak"), help="which patch set (required)")
    extract.add_argument(
        "--annotations", metavar="XML", help="ASAP XML; required for --set hard (default: none)"
    )
    extract.add_argument(
        "--label-map",
        metavar="FILE",
        help="YAML mapping annotation groups to labels, or a name in configs/labels "
        "(default: lymphatic_invasion: LI_positive/LI+/positive -> 1, LI_negative/LI-/negative -> 0)",
    )
    extract.add_argument(
        "--ignore-unknown-groups",
        action="store_true",
        help="skip annotations in groups the label map does not name, instead of failing (default: fail)",
    )
    resolution = extract.add_mutually_exclusive_group()
    resolution.add_argument(
        "--mpp", type=float, default=None, metavar="UM", help="target resolution in µm/px (default: 2.0)"
    )
    resolution.add_argument(
        "--magnification",
        type=float,
        default=None,
        metavar="M",
        help="target as a magnification, 10/M µm/px (×5 = 2.0); alternative to --mpp",
    )
    extract.add_argument(
        "--patch-size", type=int, default=512, metavar="P", help="patch side in px (default: 512)"
    )
    extract.add_argument(
        "--fraction",
        type=_fraction,
        default=Fraction(1, 3),
        metavar="F",
        help="weak set: share of the tissue windows kept, e.g. 0.25 or 1/3 (default: 1/3)",
    )
    extract.add_argument("--seed", type=int, default=0, help="weak set: random seed (default: 0)")
    extract.add_argument(
        "--min-tissue",
        type=float,
        default=0.5,
        metavar="T",
        help="weak set: least tissue fraction of a window (default: 0.5)",
    )
    extract.add_argument(
        "--cover",
        action="store_true",
        help="hard set: tile regions larger than one patch (default: one patch)",
    )
    extract.add_argument(
        "--slide-id",
        metavar="ID",
        help="group name in the store; path separators and leading dots are replaced "
        "(default: the slide's file name without suffix)",
    )
    extract.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="reader: auto tries tiffslide for .svs/.tif/.tiff, then OpenSlide (default: auto)",
    )
    extract.add_argument(
        "--slide-mpp",
        type=float,
        default=None,
        metavar="X",
        help="level-0 µm/px for slides without MPP, or to override it (default: the slide's MPP)",
    )
    extract.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        metavar="R",
        help="a level within this relative distance of the target is read as is (default: 0.05)",
    )
    extract.add_argument(
        "--threads",
        type=int,
        default=2,
        metavar="N",
        help="threads that read and encode patches (default: 2)",
    )
    extract.add_argument(
        "--compression",
        choices=("fast", "compact"),
        default="fast",
        help="patch zstd: fast (negative level, Huffman literals) or compact "
        "(level 1: 1-7 %% smaller, encoding ~40 %% slower) (default: fast)",
    )
    extract.add_argument(
        "--qc",
        metavar="DIR",
        help="write DIR/<slide_id>.png: thumbnail, tissue contour, patch boxes (default: none)",
    )
    extract.add_argument(
        "--overwrite", action="store_true", help="replace the slide if already complete (default: skip it)"
    )
    extract.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object (default: one line of text)"
    )
    extract.set_defaults(func=run_extract)

    verify = subparsers.add_parser(
        "verify",
        help="check a patch store (shapes, every chunk's checksum, status, leftovers)",
        description=VERIFY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("store", metavar="STORE", help="patch store directory")
    verify.add_argument(
        "--quick", action="store_true", help="check checksums only, do not decompress (default: decompress)"
    )
    verify.add_argument(
        "--remove-leftovers",
        action="store_true",
        help="delete temporary groups of interrupted writes first; only when nothing writes to the store "
        "(default: only list them)",
    )
    verify.add_argument(
        "--json", action="store_true", help="print the report as one JSON object (default: text)"
    )
    verify.set_defaults(func=run_verify)

    export = subparsers.add_parser(
        "export",
        help="write the store as the Zenodo-style PNG dataset with metadata.csv",
        description=EXPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("store", metavar="STORE", help="patch store directory")
    export.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    export.add_argument(
        "--slides", nargs="+", metavar="ID", help="only these slide ids (default: all complete)"
    )
    export.add_argument(
        "--png-level",
        type=int,
        default=6,
        metavar="L",
        help="PNG compression 0-9; 1 is ~4x faster and 5-15%% larger (default: 6)",
    )
    export.add_argument(
        "--threads", type=int, default=2, metavar="N", help="PNG writing threads (default: 2)"
    )
    export.set_defaults(func=run_export)

    import_png = subparsers.add_parser(
        "import-png",
        help="read a Zenodo-style PNG/JPEG dataset into a patch store",
        description=IMPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    import_png.add_argument(
        "source", metavar="DIR", help="folder holding hard_labeled_dataset/, weakly_labeled_dataset/"
    )
    import_png.add_argument(
        "--out", required=True, metavar="STORE", help="patch store directory, created if missing"
    )
    import_png.add_argument(
        "--mpp",
        type=float,
        default=None,
        metavar="UM",
        help="µm/px of the patches, recorded in the store (default: from DIR/metadata.csv if present, else unknown)",
    )
    import_png.add_argument(
        "--overwrite", action="store_true", help="replace slides already in the store (default: skip them)"
    )
    import_png.add_argument(
        "--threads", type=int, default=2, metavar="N", help="decoding threads (default: 2)"
    )
    import_png.set_defaults(func=run_import)


def _progress() -> bool:
    return sys.stderr.isatty()


def run_extract(args: argparse.Namespace) -> int:
    from wsi_tools.extract import ExtractionConfig, extract_slide
    from wsi_tools.geometry import mpp_for_magnification

    if args.magnification is not None:
        if args.magnification <= 0:
            raise ConfigError(f"--magnification must be positive, got {args.magnification}")
        target = mpp_for_magnification(args.magnification)
    else:
        target = 2.0 if args.mpp is None else args.mpp
    config = ExtractionConfig(
        set=args.set,
        target_mpp=target,
        patch_size=args.patch_size,
        fraction=float(args.fraction),
        seed=args.seed,
        min_tissue=args.min_tissue,
        cover=args.cover,
        label_map=args.label_map,
        ignore_unknown_groups=args.ignore_unknown_groups,
        backend=args.backend,
        slide_mpp=args.slide_mpp,
        tolerance=args.tolerance,
        threads=args.threads,
        compression=args.compression,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = extract_slide(
            args.slide,
            args.out,
            config,
            annotation_path=args.annotations,
            slide_id=args.slide_id,
            overwrite=args.overwrite,
            qc_dir=args.qc,
            progress=_progress(),
        )
    for message in dict.fromkeys(str(item.message) for item in caught):
        print(f"wsi-tools extract: warning: {message}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    **result.__dict__,
                    "store_path": str(result.store_path),
                    "qc_path": str(result.qc_path) if result.qc_path else None,
                }
            )
        )
        return 0
    dropped = ", ".join(
        f"{key.removeprefix('dropped_')} {value}"
        for key, value in result.counts.items()
        if key.startswith("dropped_") and value
    )
    rate = result.n_patches / result.seconds if result.seconds > 0 else 0.0
    verb = "skipped (already complete; --overwrite to redo)" if result.status == "skipped" else "extracted"
    line = (
        f"{result.slide_id}: {verb} {result.n_patches} patches "
        f"({result.counts.get('positive', 0)} pos, {result.counts.get('negative', 0)} neg"
        + (f"; dropped: {dropped}" if dropped else "")
        + f") in {result.seconds:.1f} s ({rate:.0f}/s) -> {result.store_path}"
        + (f"; QC {result.qc_path}" if result.qc_path else "")
    )
    print(line)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from wsi_tools.store import PatchStore

    store = PatchStore(args.store)  # refuses a path that is not a store, never creates one
    if args.remove_leftovers:
        store = PatchStore(args.store, mode="a")
    removed = store.remove_leftovers() if args.remove_leftovers else []
    report = store.verify(decode=not args.quick, progress=_progress())
    if args.json:
        print(json.dumps({**report.as_dict(), "removed_leftovers": removed}))
        return 0 if report.ok else EXIT_PROBLEMS
    for name in removed:
        print(f"removed leftover slides/{name}")
    for problem in report.problems:
        print(f"problem: {problem}")
    for name in report.leftovers:
        print(f"leftover: slides/{name} (an interrupted or running write; --remove-leftovers deletes it)")
    status = "OK" if report.ok else f"{len(report.problems)} problem(s), {len(report.leftovers)} leftover(s)"
    print(f"{store.path}: {report.slides_checked} slides, {report.patches_checked} patches checked: {status}")
    return 0 if report.ok else EXIT_PROBLEMS


def run_export(args: argparse.Namespace) -> int:
    from wsi_tools.export import export_png

    result = export_png(
        args.store,
        args.out,
        slide_ids=args.slides,
        png_level=args.png_level,
        threads=args.threads,
        progress=_progress(),
    )
    print(
        f"exported {result.n_files} patches of {result.n_slides} slides to {result.out_dir} "
        f"({result.bytes_written / 2**20:.1f} MiB PNG) in {result.seconds:.1f} s"
    )
    return 0


def run_import(args: argparse.Namespace) -> int:
    from wsi_tools.export import import_png

    result = import_png(
        args.source,
        args.out,
        mpp=args.mpp,
        overwrite=args.overwrite,
        threads=args.threads,
        progress=_progress(),
    )
    for name in result.skipped_files[:20]:
        print(
            f"wsi-tools import-png: warning: name does not follow the layout, skipped: {name}",
            file=sys.stderr,
        )
    if len(result.skipped_files) > 20:
        print(
            f"wsi-tools import-png: warning: ... and {len(result.skipped_files) - 20} more", file=sys.stderr
        )
    done = [slide for slide in result.slides if slide.status == "complete"]
    skipped = [slide for slide in result.slides if slide.status == "skipped"]
    print(
        f"imported {sum(s.n_patches for s in done)} patches into {len(done)} slide groups of {result.store_path}"
        + (f"; {len(skipped)} already complete, skipped (--overwrite to redo)" if skipped else "")
        + (f"; {len(result.skipped_files)} files skipped" if result.skipped_files else "")
        + f" in {result.seconds:.1f} s"
    )
    return 0
