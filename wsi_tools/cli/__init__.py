"""``wsi-tools``: one entry point, one sub-module per area.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds
its sub-commands and sets ``func`` on each. Heavy imports (torch, zarr, dask)
stay inside the handlers so that ``wsi-tools --help`` and ``info`` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from wsi_tools import __version__
from wsi_tools.errors import WsiToolsError

COMMAND_MODULES = (
    "wsi_tools.cli.slides",  # info, tissue
    "wsi_tools.cli.annotations",  # annotations
    "wsi_tools.cli.extract",  # extract, verify, export, import-png
    "wsi_tools.cli.batch",  # manifest, batch
    "wsi_tools.cli.train",  # train, evaluate
    "wsi_tools.cli.mining",  # mine, run, ablate, demo
    "wsi_tools.cli.predict",  # predict
)

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell tool killed by a closed pipe reports

DESCRIPTION = """\
Turn Aperio whole-slide images and ASAP XML annotations into a zarr patch
store, train a patch classifier from it, and mine hard negatives
(Lee et al. 2024, J Pathol Clin Res 10:e355).

Typical flow:
  wsi-tools info slide.svs                      what is in a slide
  wsi-tools extract slide.svs --out store.zarr --set hard --annotations slide.xml
  wsi-tools batch manifest.csv --out store.zarr --workers 2
  wsi-tools run --config configs/hnm.yaml --store store.zarr --out runs/hnm
  wsi-tools predict new.svs --checkpoint runs/hnm/seed_0/strong/best.pt --out predictions
  wsi-tools demo --out demo_out                 the whole method on a synthetic cohort

Exit status: 0 success, 2 bad input (the message names the file and the fix),
3 a batch finished but some slides failed, 1 verify or check found damage.
Errors are one line; libraries' own log messages (tifffile, Dask) are shown
only with --verbose.
"""

# Loggers of the libraries underneath: their messages repeat, in their words, what
# the toolkit's one-line error already says (a damaged file logs one line per tag).
QUIET_LOGGERS = (
    "tifffile",
    "tiffslide",
    "imagecodecs",
    "asyncio",
    "distributed",
    "fsspec",
    "numcodecs",
    "zarr",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsi-tools",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wsi-tools {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the log messages of the libraries underneath (tifffile, Dask, ...); default: quiet",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def one_line(message: str) -> str:
    """An error as one line (parsers' messages can hold newlines): scripts and logs
    read errors line by line."""
    return " / ".join(part.strip() for part in message.splitlines() if part.strip())


def show_warnings_as_lines(command: str) -> None:
    """Warnings as ``wsi-tools CMD: warning: ...`` lines, like errors (Python's default
    adds the file, line number and source line of the library)."""

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        print(f"wsi-tools {command}: warning: {one_line(str(message))}", file=sys.stderr)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    if not args.verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    show_warnings_as_lines(args.command)
    try:
        return int(args.func(args) or EXIT_OK)
    except WsiToolsError as error:
        print(f"wsi-tools {args.command}: error: {one_line(str(error))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"wsi-tools {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`wsi-tools annotations X | head`): not an error of ours.
        # stdout is pointed at devnull so that Python's flush at exit stays quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
