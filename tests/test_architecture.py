"""docs/architecture.md's module map names every module, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _listed() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return {match.group(1) for match in re.finditer(r"^\| `([^`]+\.py)`", text, re.MULTILINE)}


def _modules() -> set[str]:
    package = {str(path.relative_to(ROOT / "wsi_tools")) for path in (ROOT / "wsi_tools").rglob("*.py")}
    pipelines = {str(path.relative_to(ROOT)) for path in (ROOT / "pipelines").glob("*.py")}
    return package | pipelines


def test_the_module_map_lists_every_module() -> None:
    missing = sorted(_modules() - _listed())
    assert not missing, f"add to docs/architecture.md: {missing}"


def test_the_module_map_lists_no_module_that_is_gone() -> None:
    gone = sorted(_listed() - _modules())
    assert not gone, f"remove from docs/architecture.md: {gone}"
