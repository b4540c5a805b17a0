"""The README's measured figures are what ``benchmarks/results/*.json`` give."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RENDER = ROOT / "benchmarks" / "render.py"


def _check(readme: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RENDER), "--check", "--readme", str(readme)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_readme_figures_are_rendered_from_the_recorded_json() -> None:
    completed = _check(ROOT / "README.md")
    assert completed.returncode == 0, completed.stderr


def test_a_figure_typed_by_hand_fails_the_check(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- figures:benchmarks -->")
    digit = next(i for i in range(start, len(text)) if text[i].isdigit())
    tampered = text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1 :]
    readme = tmp_path / "README.md"
    readme.write_text(tampered)
    completed = _check(readme)
    assert completed.returncode == 1
    assert "render.py" in completed.stderr


def test_a_readme_without_its_sections_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no figures here\n")
    completed = _check(readme)
    assert completed.returncode != 0
    assert "figures:demo" in completed.stderr
