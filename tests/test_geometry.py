"""Pure resolution and grid maths."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_tools.geometry import (
    SlideSpec,
    TilingConfig,
    centred_window,
    grid_origins,
    mpp_for_magnification,
    patch_extent_level0,
    plan_read,
)

X20 = SlideSpec(((40000, 30000), (10000, 7500), (2500, 1875)), (1.0, 4.0, 16.0), 0.5)
X40 = SlideSpec(((40000, 30000), (10000, 7500), (2500, 1875)), (1.0, 4.0, 16.0), 0.25)
CMU = SlideSpec(((2220, 2967),), (1.0,), 0.499)


def test_magnification_maps_to_mpp() -> None:
    assert mpp_for_magnification(5) == 2.0
    assert mpp_for_magnification(20) == 0.5
    with pytest.raises(ValueError):
        mpp_for_magnification(0)


def test_native_level_is_read_as_is() -> None:
    plan = plan_read(X20, 2.0)
    assert (plan.level, plan.resample_scale, plan.effective_mpp) == (1, 1.0, 2.0)


def test_x40_has_no_native_x5_level_and_shrinks_the_finer_one() -> None:
    plan = plan_read(X40, 2.0)
    # level 1 is 1.0 µm/px (finer than 2.0), level 2 is 4.0 (coarser): read level 1, shrink by 2.
    assert plan.level == 1
    assert plan.resample_scale == pytest.approx(2.0)
    assert plan.effective_mpp == 2.0


def test_never_upsamples_from_a_coarser_level() -> None:
    plan = plan_read(X20, 3.0)  # level 2 is 8.0 µm/px, too coarse
    assert plan.level_mpp <= 3.0
    assert plan.level == 1


def test_within_tolerance_reads_level_as_is() -> None:
    plan = plan_read(CMU, 0.5)
    assert plan.level == 0 and not plan.resampled
    assert plan.effective_mpp == pytest.approx(0.499)


def test_target_finer_than_level0_is_refused() -> None:
    with pytest.raises(ValueError, match="upsampling"):
        plan_read(X20, 0.25)


def test_grid_steps_by_patch_extent_from_origin() -> None:
    tiling = TilingConfig(target_mpp=2.0, patch_size=512)
    assert patch_extent_level0(X20, tiling) == pytest.approx(2048)
    origins = grid_origins(X20, tiling)
    assert origins[0].tolist() == [0, 0]
    assert origins[1].tolist() == [2048, 0]  # row-major
    n_cols, n_rows = 40000 // 2048, 30000 // 2048
    assert len(origins) == n_cols * n_rows
    assert origins[:, 0].max() + 2048 <= 40000
    assert origins[:, 1].max() + 2048 <= 30000
    assert np.all(np.diff(np.unique(origins[:, 0])) == 2048)


def test_grid_on_cmu_fits_a_single_patch() -> None:
    origins = grid_origins(CMU, TilingConfig())
    assert origins.tolist() == [[0, 0]]  # 512 px at 2 µm/px is 2052 level-0 px; the slide is 2220 wide


def test_centred_window_shifts_inside_slide() -> None:
    assert centred_window((5000, 5000), 2048, (40000, 30000)) == (3976, 3976)
    assert centred_window((10, 10), 2048, (40000, 30000)) == (0, 0)
    assert centred_window((39990, 29990), 2048, (40000, 30000)) == (40000 - 2048, 30000 - 2048)
    assert centred_window((100, 100), 2048, (1000, 1000)) == (0, 0)
