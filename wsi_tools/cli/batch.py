"""``wsi-tools manifest`` and ``wsi-tools batch``: a slide archive into one patch store."""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

from wsi_tools.cli._common import add_print_config, print_config

MANIFEST_DESCRIPTION = """\
Write a batch manifest (CSV) for a folder of slides. A slide (*.svs, *.tif,
*.tiff, searched recursively) with an ASAP XML of the same stem beside it is a
hard-set slide; every slide under --weak-dir is a weak-set slide; any other
slide is left out with a warning. Paths are written relative to the manifest's
folder. Columns: slide_path,set,annotation_path,slide_id,mpp,split; fill in mpp
(µm/px) for slides without one and split (train|val|test) to fix the trainer's
split.
"""

BATCH_DESCRIPTION = """\
Extract every slide of a manifest into one zarr patch store on Dask
distributed: one slide per task, run by worker processes that write their
slide straight into the store (so the store must be on storage every worker
sees). The whole manifest is checked before any work starts.

A slide that fails (corrupt file, no MPP, broken XML), runs past --timeout or
kills its process is recorded as failed with its error; the other slides go
on. Slides already complete in the store are skipped, so rerunning the same
command after any interruption (even kill -9) finishes the job and gives the
same store as an uninterrupted run.

Writes STORE/runs/<run_id>/report.json, report.md, config.yaml (the effective
settings) and splits.csv (when the manifest has a split column).
Exit status: 0 every slide complete or skipped, 3 finished but some slides
failed, 2 bad arguments, manifest or config.
"""


def _fraction(text: str) -> float:
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError) as error:
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r} (e.g. 0.25 or 1/3)") from error
    return value


def _add_extraction_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "extraction settings",
        "Each flag overrides --config; an unset flag keeps the config's value, or the built-in "
        "default shown (configs/extract.yaml holds the same values).",
    )
    resolution = group.add_mutually_exclusive_group()
    resolution.add_argument(
        "--mpp", dest="target_mpp", type=float, help="target µm/px of the patches (default 2.0 = ×5)"
    )
    resolution.add_argument(
        "--magnification", type=float, help="target magnification instead of --mpp, e.g. 5"
    )
    group.add_argument(
        "--patch-size", type=int, help="patch side in px at the target resolution (default 512)"
    )
    group.add_argument(
        "--fraction", type=_fraction, help="weak set: share of the tissue windows kept, seeded (default 1/3)"
    )
    group.add_argument("--seed", type=int, help="weak set: seed of the random selection (default 0)")
    group.add_argument(
        "--min-tissue", type=float, help="weak set: minimum tissue fraction of a window (default 0.5)"
    )
    group.add_argument(
        "--cover",
        action=argparse.BooleanOptionalAction,
        help="hard set: tile regions larger than a patch instead of one centred patch (default off)",
    )
    group.add_argument(
        "--label-map",
        help="YAML mapping annotation groups to labels (default configs/labels/lymphatic_invasion.yaml)",
    )
    group.add_argument(
        "--ignore-unknown-groups",
        action=argparse.BooleanOptionalAction,
        help="skip annotation groups the label map does not know instead of failing the slide (default off)",
    )
    group.add_argument(
        "--backend", choices=("auto", "openslide", "tiffslide"), help="slide reader (default auto)"
    )
    group.add_argument(
        "--threads",
        type=int,
        help="threads per slide, each reading and encoding patches (default 1: workers already use every core)",
    )
    group.add_argument(
        "--compression",
        choices=("fast", "compact"),
        help="patch zstd: fast, or compact (level 1: 1-7%% smaller, encoding ~40%% slower) (default fast)",
    )
    group.add_argument(
        "--tolerance",
        type=float,
        help="relative mpp difference under which a pyramid level is read as is (default 0.05)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    manifest = subparsers.add_parser(
        "manifest",
        help="write a batch manifest CSV for a folder of slides",
        description=MANIFEST_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    manifest.add_argument(
        "dir", type=Path, help="folder of slides; a slide with SAME_STEM.xml beside it is hard"
    )
    manifest.add_argument(
        "--out", type=Path, required=True, help="manifest CSV to write (replaced if present)"
    )
    manifest.add_argument("--weak-dir", type=Path, help="folder of weak-set slides (no annotations needed)")
    manifest.set_defaults(func=_manifest)

    batch = subparsers.add_parser(
        "batch",
        help="extract every slide of a manifest into a patch store on Dask",
        description=BATCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument("manifest", type=Path, help="manifest CSV (see `wsi-tools manifest --help`)")
    batch.add_argument(
        "--out", type=Path, required=True, help="patch store (zarr folder; created if missing)"
    )
    batch.add_argument(
        "--config",
        type=Path,
        help="extraction settings YAML, e.g. configs/extract.yaml (default: built-in defaults, the same values)",
    )
    cluster = batch.add_argument_group("cluster and failure handling")
    where = cluster.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        help="worker processes of the local Dask cluster, one slide each at a time (default: every CPU core)",
    )
    where.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="run on an existing Dask cluster instead (see docs/distributed.md); default: a local cluster",
    )
    cluster.add_argument(
        "--timeout",
        type=float,
        help="seconds one slide may take before it is stopped and failed (default: none)",
    )
    cluster.add_argument(
        "--retries",
        type=int,
        default=1,
        help="extra attempts for a slide after a transient-looking I/O error, never after bad input (default 1)",
    )
    cluster.add_argument(
        "--overwrite", action="store_true", help="extract again slides the store already holds complete"
    )
    cluster.add_argument("--qc", type=Path, help="folder for one QC overview PNG per slide (default: none)")
    cluster.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)"
    )
    _add_extraction_flags(batch)
    add_print_config(batch)
    batch.set_defaults(func=_batch)


def _manifest(args: argparse.Namespace) -> int:
    from wsi_tools.batch.manifest import build_manifest, read_manifest

    built = build_manifest(args.dir, args.out, weak_dir=args.weak_dir)
    for reason in built.skipped:
        print(f"wsi-tools manifest: warning: skipped {reason}", file=sys.stderr)
    read_manifest(built.path)  # what we wrote must pass the batch's own checks
    print(
        f"wrote {built.path}: {built.n_hard} hard, {built.n_weak} weak, {len(built.skipped)} skipped slide(s)"
    )
    return 0


def _batch(args: argparse.Namespace) -> int:
    from rich.console import Console

    from wsi_tools.batch.engine import BatchOptions, run_batch
    from wsi_tools.batch.manifest import read_manifest
    from wsi_tools.batch.report import summary_table
    from wsi_tools.batch.settings import load_settings

    overrides = {
        key: getattr(args, key)
        for key in (
            "target_mpp",
            "magnification",
            "patch_size",
            "fraction",
            "seed",
            "min_tissue",
            "cover",
            "label_map",
            "ignore_unknown_groups",
            "backend",
            "tolerance",
            "threads",
            "compression",
        )
    }
    settings = load_settings(args.config, overrides)
    if args.print_config:
        return print_config(settings)
    manifest = read_manifest(args.manifest)
    options = BatchOptions(
        workers=args.workers,
        scheduler=args.scheduler,
        timeout=args.timeout,
        retries=args.retries,
        overwrite=args.overwrite,
        qc_dir=str(args.qc.resolve()) if args.qc else None,
        progress=not args.no_progress,
    )
    report = run_batch(manifest, args.out, settings, options)
    for warning in report.warnings:
        print(f"wsi-tools batch: warning: {warning}", file=sys.stderr)
    Console(width=max(100, Console().width)).print(summary_table(report))
    print(f"report: {Path(report.run_dir) / 'report.md'}")
    return report.exit_code
