"""``wsi-tools manifest`` and ``wsi-tools batch``: a slide archive into one patch store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsi_tools.batch.settings import BATCH_DEFAULTS, PER_SLIDE_KEYS
from wsi_tools.cli._common import (
    add_command,
    add_extraction_flags,
    add_print_config,
    extraction_flags_given,
    print_config,
)

MANIFEST_DESCRIPTION = """\
Write a batch manifest (CSV) for a folder of slides. A slide (any format the
backends read: .svs, .tif, .ndpi, .mrxs, ...; searched recursively) with an
annotation file of the same stem beside it (ASAP .xml, else QuPath .geojson or
.json) is a hard-set slide; every slide under --weak-dir is a weak-set slide; any other
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


def register(subparsers: argparse._SubParsersAction) -> None:
    manifest = add_command(
        subparsers, "manifest", "write a batch manifest CSV for a folder of slides", MANIFEST_DESCRIPTION
    )
    manifest.add_argument(
        "dir", type=Path, help="folder of slides; a slide with SAME_STEM.xml beside it is hard"
    )
    manifest.add_argument(
        "--out", type=Path, required=True, help="manifest CSV to write (replaced if present)"
    )
    manifest.add_argument("--weak-dir", type=Path, help="folder of weak-set slides (no annotations needed)")
    manifest.set_defaults(func=_manifest)

    batch = add_command(
        subparsers, "batch", "extract every slide of a manifest into a patch store on Dask", BATCH_DESCRIPTION
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
    cluster.add_argument(
        "--check",
        action="store_true",
        help="check each slide file first as wsi-tools check does (structure, sampled tiles decoded "
        "strictly); a damaged one fails before extraction (default: off)",
    )
    cluster.add_argument("--qc", type=Path, help="folder for one QC overview PNG per slide (default: none)")
    cluster.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)"
    )
    settings = batch.add_argument_group(
        "extraction settings",
        "Each flag overrides --config; an unset flag keeps the config's value, or the built-in "
        "default shown (configs/extract.yaml holds the same values).",
    )
    flagged = add_extraction_flags(settings, skip=PER_SLIDE_KEYS, defaults=BATCH_DEFAULTS)
    add_print_config(batch)
    batch.set_defaults(func=_batch, extraction_flags=flagged)


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

    overrides = extraction_flags_given(args, args.extraction_flags)
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
        check=args.check,
        qc_dir=str(args.qc.resolve()) if args.qc else None,
        progress=not args.no_progress,
    )
    report = run_batch(manifest, args.out, settings, options)
    for warning in report.warnings:
        print(f"wsi-tools batch: warning: {warning}", file=sys.stderr)
    Console(width=max(100, Console().width)).print(summary_table(report))
    print(f"report: {Path(report.run_dir) / 'report.md'}")
    return report.exit_code
