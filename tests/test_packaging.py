"""The package as a user installs it: a wheel in a fresh venv, run from outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _declared_packages() -> dict[str, Path]:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = setuptools.get("package-dir", {})
    folders = {}
    for name in setuptools["packages"]:
        parent = max((m for m in mapped if name == m or name.startswith(m + ".")), key=len, default=None)
        if parent is None:
            folders[name] = REPO / name.replace(".", "/")
        else:
            folders[name] = REPO / mapped[parent] / name[len(parent) :].lstrip(".").replace(".", "/")
    return folders


def test_every_package_folder_is_declared() -> None:
    declared = _declared_packages()
    for name, folder in declared.items():
        assert (folder / "__init__.py").is_file(), f"{name} -> {folder} has no __init__.py"
    on_disk = {
        ".".join(path.parent.relative_to(REPO / "wsi_tools").parts)
        for path in (REPO / "wsi_tools").rglob("__init__.py")
    }
    names = {"wsi_tools" + (f".{part}" if part else "") for part in on_disk}
    missing = names - set(declared)
    assert not missing, (
        f"packages under wsi_tools/ missing from pyproject's [tool.setuptools] packages: {missing}"
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from the checkout, installed into a fresh venv that borrows the test
    environment's dependencies (a path entry, so its editable wsi_tools is not seen)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root, REPO],
        check=True,
        capture_output=True,
    )
    (wheel,) = root.glob("wsi_tools-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {
        "wsi_tools",
        wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info",
    }
    assert "wsi_tools/py.typed" in names and "wsi_tools/configs/labels/camelyon.yaml" in names
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = Path(
        subprocess.run(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "borrowed.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            venv / "bin" / "python",
            "install",
            "--no-deps",
            "-q",
            wheel,
        ],
        check=True,
        capture_output=True,
    )
    return venv


def _run(venv: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_runs_outside_the_checkout(installed: Path, tmp_path: Path, real_data: Path) -> None:
    python = str(installed / "bin" / "python")
    where = _run(installed, tmp_path, python, "-c", "import wsi_tools; print(wsi_tools.__file__)")
    assert where.returncode == 0, where.stderr
    assert str(REPO) not in where.stdout and "site-packages" in where.stdout

    cli = str(installed / "bin" / "wsi-tools")
    helped = _run(installed, tmp_path, cli, "--help")
    assert helped.returncode == 0 and "wsi-tools" in helped.stdout

    summary = _run(
        installed, tmp_path, cli, "annotations", str(real_data / "camelyon17-patient_004_node_4.xml")
    )
    assert summary.returncode == 0, summary.stderr
    assert "lymphatic_invasion.yaml" in summary.stdout and "site-packages" in summary.stdout

    for command, expected in (("run", "mining:"), ("ablate", "studies:"), ("demo", "cohort:")):
        printed = _run(installed, tmp_path, cli, command, "--print-config", "--set", "mining.alpha=7")
        assert printed.returncode == 0, (command, printed.stderr)
        assert expected in printed.stdout and "alpha: 7" in printed.stdout
        assert "metric: " in printed.stdout


def test_the_public_api_resolves_and_import_stays_light() -> None:
    script = (
        "import sys, wsi_tools\n"
        "heavy = sorted(m for m in ('torch', 'dask', 'distributed', 'zarr', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "missing = [name for name in wsi_tools.__all__ if getattr(wsi_tools, name, None) is None]\n"
        "assert not missing, missing\n"
        "assert issubclass(wsi_tools.SplitLeakError, wsi_tools.WsiToolsError)\n"
        "assert wsi_tools.TrainConfig().epochs == 30\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
