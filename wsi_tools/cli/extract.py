"""``wsi-tools extract | verify | export | import-png``: slides into the patch store and back out."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from wsi_tools.cli._common import (
    add_command,
    add_extraction_flags,
    add_print_config,
    extraction_flags_given,
    print_config,
)

EXIT_PROBLEMS = 1

EXTRACT_DESCRIPTION = """\
Cut 512 x 512 px patches at 2.0 µm/px (×5) out of one slide into a zarr patch
store (format: docs/store.md), with full provenance.

  --set hard   one patch per annotated region of --annotations (ASAP XML or QuPath GeoJSON),
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


def register(subparsers: argparse._SubParsersAction) -> None:
    extract = add_command(
        subparsers,
        "extract",
        "extract a slide's hard (annotated) or weak (grid) patch set into a zarr store",
        EXTRACT_DESCRIPTION,
    )
    extract.add_argument(
        "slide", metavar="SLIDE", help="whole-slide image (Aperio .svs or any OpenSlide format)"
    )
    extract.add_argument(
        "--out", required=True, metavar="STORE", help="patch store directory, created if missing"
    )
    extract.add_argument("--set", required=True, choices=("hard", "weak"), help="which patch set (required)")
    extract.add_argument(
        "--annotations",
        metavar="FILE",
        help="ASAP XML or QuPath GeoJSON; required for --set hard (default: none)",
    )
    extract.add_argument(
        "--slide-id",
        metavar="ID",
        help="group name in the store; path separators and leading dots are replaced "
        "(default: the slide's file name without suffix)",
    )
    settings = extract.add_argument_group("extraction settings")
    flagged = add_extraction_flags(settings)
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
    add_print_config(extract)
    extract.set_defaults(func=run_extract, extraction_flags=flagged)

    verify = add_command(
        subparsers,
        "verify",
        "check a patch store (shapes, every chunk's checksum, status, leftovers)",
        VERIFY_DESCRIPTION,
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

    export = add_command(
        subparsers,
        "export",
        "write the store as the Zenodo-style PNG dataset with metadata.csv",
        EXPORT_DESCRIPTION,
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

    import_png = add_command(
        subparsers,
        "import-png",
        "read a Zenodo-style PNG/JPEG dataset into a patch store",
        IMPORT_DESCRIPTION,
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
    from wsi_tools.extract import ExtractionConfig, extract_slide, why_empty
    from wsi_tools.options import to_plain

    config = ExtractionConfig(set=args.set, **extraction_flags_given(args, args.extraction_flags))
    if args.print_config:
        return print_config(to_plain(config))
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
    skipped = result.status == "skipped"
    verb = "skipped (already complete from the same inputs; --overwrite to redo)" if skipped else "extracted"
    timing = (
        ""
        if skipped
        else f" in {result.seconds:.1f} s ({result.n_patches / max(result.seconds, 1e-9):.0f}/s)"
    )
    line = (
        f"{result.slide_id}: {verb} {result.n_patches} patches "
        f"({result.counts.get('positive', 0)} pos, {result.counts.get('negative', 0)} neg"
        + (f"; dropped: {dropped}" if dropped else "")
        + f"){timing} -> {result.store_path}"
        + (f"; QC {result.qc_path}" if result.qc_path else "")
    )
    print(line)
    if result.n_patches == 0 and not skipped:
        print(
            f"wsi-tools extract: warning: {result.slide_id}: no patch was kept ({why_empty(result.counts)}); "
            "see the QC picture (--qc DIR) for where the windows fell",
            file=sys.stderr,
        )
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
