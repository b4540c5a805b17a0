"""Flags and output shared by the commands."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import yaml


def add_print_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective config as YAML (after the file, every --set and the flags) and exit",
    )


def print_config(config: Mapping[str, Any]) -> int:
    print(yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True), end="")
    return 0
