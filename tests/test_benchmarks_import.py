"""The benchmark scripts name only wsi_tools modules and names that exist: a refactor
that moves a module must move the benchmarks with it."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_a_benchmark_imports_only_what_exists(script: Path) -> None:
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("wsi_tools"):
                    assert importlib.util.find_spec(alias.name), f"{script.name}: no module {alias.name}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wsi_tools"):
            module = importlib.import_module(str(node.module))
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                exists = hasattr(module, alias.name) or importlib.util.find_spec(name) is not None
                assert exists, f"{script.name}: {node.module} has no {alias.name}"
