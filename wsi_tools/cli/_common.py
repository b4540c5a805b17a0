"""Flags and output shared by the commands."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import yaml


def add_command(
    subparsers: argparse._SubParsersAction, name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """A sub-command whose ``--help`` keeps its description's layout."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=summary, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return parser


def add_print_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective config as YAML (after the file, every --set and the flags) and exit",
    )


def print_config(config: Mapping[str, Any]) -> int:
    print(yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True), end="")
    return 0


# The extraction settings a command line may give: every ExtractionConfig field but
# ``set`` (a positional choice of ``extract``, a manifest column of ``batch``).
EXTRACTION_FLAGS = (
    "patch_size",
    "fraction",
    "seed",
    "min_tissue",
    "cover",
    "label_map",
    "ignore_unknown_groups",
    "backend",
    "slide_mpp",
    "tolerance",
    "threads",
    "compression",
)


def add_extraction_flags(
    parser: argparse._ActionsContainer,
    *,
    skip: tuple[str, ...] = (),
    defaults: Mapping[str, Any] | None = None,
) -> tuple[str, ...]:
    """ExtractionConfig's flags, with ``--mpp`` or ``--magnification`` for ``target_mpp``;
    returns the config fields flagged (for :func:`extraction_flags_given`)."""
    from wsi_tools.extract import ExtractionConfig
    from wsi_tools.options import add_flags, number_flag

    resolution = parser.add_mutually_exclusive_group()
    add_flags(resolution, ExtractionConfig, ("target_mpp",), flags={"target_mpp": "--mpp"})
    resolution.add_argument(
        "--magnification",
        type=number_flag,
        metavar="M",
        help="the target as a magnification instead of --mpp: 10/M µm/px (×5 = 2.0)",
    )
    names = tuple(name for name in EXTRACTION_FLAGS if name not in skip)
    add_flags(parser, ExtractionConfig, names, defaults=defaults)
    return ("target_mpp", *names)


def extraction_flags_given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The extraction settings given on the command line (``--magnification`` as its
    ``target_mpp``)."""
    from wsi_tools.errors import ConfigError
    from wsi_tools.geometry import mpp_for_magnification

    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.magnification is not None:
        if args.magnification <= 0:
            raise ConfigError(f"--magnification must be positive (e.g. 5), got {args.magnification:g}")
        given["target_mpp"] = mpp_for_magnification(args.magnification)
    return given
