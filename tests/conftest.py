"""Shared fixtures: real public files from ../shared/data/real and tiny generated slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi_tools.testing.synth import synthetic_tissue, write_aperio_svs

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.fail(f"real test data missing: expected {REAL_DATA} (../shared/data/real beside the repo)")
    return REAL_DATA


@pytest.fixture(scope="session")
def generated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("generated")


@pytest.fixture(scope="session")
def slide_x20_image() -> np.ndarray:
    """Level-0 pixels of the ×20 fixture (kept for independent reference reads)."""
    return synthetic_tissue(3072, 2560, seed=20)


@pytest.fixture(scope="session")
def slide_x20(generated_dir: Path, slide_x20_image: np.ndarray) -> Path:
    """A ×20 Aperio SVS, 0.5 µm/px, levels at 1, 4, 16: ×5 has a native level."""
    return write_aperio_svs(generated_dir / "x20.svs", slide_x20_image, mpp=0.5, app_mag=20)


@pytest.fixture(scope="session")
def slide_x40(generated_dir: Path) -> Path:
    """A ×40 Aperio SVS, 0.25 µm/px, levels at 1, 4, 16: ×5 needs a resample."""
    image = synthetic_tissue(4096, 3072, seed=40)
    return write_aperio_svs(generated_dir / "x40.svs", image, mpp=0.25, app_mag=40)


@pytest.fixture(scope="session")
def slide_no_mpp(generated_dir: Path) -> Path:
    image = synthetic_tissue(1024, 1024, seed=3)
    return write_aperio_svs(generated_dir / "no_mpp.svs", image, mpp=None, app_mag=None)
