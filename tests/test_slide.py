"""Slides: metadata, physical-resolution reads against independent references,
backend agreement, bad inputs, pickling and forking."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import tifffile

from wsi_tools.errors import ConfigError, MissingMppError, SlideReadError, UnsupportedSlideError
from wsi_tools.slide import Slide, file_fingerprint, open_slide
from wsi_tools.testing.synth import synthetic_tissue, write_aperio_svs

CMU = "CMU-1-Small-Region.svs"
TCGA = "TCGA-CR-7395-01A-01-TS1-crop.svs"


def mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def openslide_reference(path: Path, x: int, y: int, level0_size: int, out_size: int) -> np.ndarray:
    """Independent reference: OpenSlide level-0 read of the covering area, INTER_AREA down."""
    with openslide.OpenSlide(str(path)) as reference:
        rgba = np.asarray(reference.read_region((x, y), 0, (level0_size, level0_size)))
    assert rgba[..., 3].min() == 255, "the reference window must lie inside the slide"
    return cv2.resize(rgba[..., :3], (out_size, out_size), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------- real slides


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
def test_cmu_metadata(real_data: Path, backend: str) -> None:
    with open_slide(real_data / CMU, backend=backend) as slide:
        assert slide.backend == ("tiffslide" if backend == "auto" else backend)
        assert slide.mpp == pytest.approx((0.499, 0.499))
        assert slide.dimensions == (2220, 2967)
        assert slide.objective_power == 20
        assert slide.vendor == "aperio"
        assert slide.level_count == 1
        assert slide.warnings == []
        size, digest = slide.fingerprint.split("-")
        assert int(size) == (real_data / CMU).stat().st_size and len(digest) == 64
        assert json.loads(json.dumps(slide.describe()))["mpp"] == {"x": 0.499, "y": 0.499}


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_cmu_read_at_2um_matches_reference(real_data: Path, backend: str) -> None:
    x, y = 100, 300
    with open_slide(real_data / CMU, backend=backend) as slide:
        patch, plan = slide.read(x, y, 512, target_mpp=2.0)
    assert patch.shape == (512, 512, 3) and patch.dtype == np.uint8
    assert plan.level == 0 and plan.resampled
    assert plan.resample_scale == pytest.approx(2.0 / 0.499)
    assert plan.effective_mpp == 2.0
    reference = openslide_reference(real_data / CMU, x, y, round(512 * 2.0 / 0.499), 512)
    assert mad(patch, reference) <= 2.0
    assert patch.std() > 10  # real tissue, not a blank


def test_tcga_without_mpp_fails_with_the_fix(real_data: Path) -> None:
    with pytest.raises(MissingMppError) as caught:
        open_slide(real_data / TCGA)
    message = str(caught.value)
    assert TCGA in message and "--slide-mpp" in message and "mpp=" in message


def test_tcga_with_override_and_info_mode(real_data: Path) -> None:
    with open_slide(real_data / TCGA, require_mpp=False) as slide:
        assert slide.mpp is None and slide.mpp_source is None
        assert slide.describe()["mpp"] is None
        assert slide.level_dimensions == ((4443, 3567), (2221, 1783))
        with pytest.raises(MissingMppError):
            slide.spec  # noqa: B018 - the property is what raises
    with open_slide(real_data / TCGA, mpp=0.25) as slide:
        assert slide.mpp == (0.25, 0.25) and slide.mpp_source == "override"
        patch, plan = slide.read(1000, 1000, 256, target_mpp=1.0)
        assert patch.shape == (256, 256, 3)
        assert plan.level == 1 and plan.resampled  # JPEG 2000 level 1 at ~0.5 µm/px, shrunk by 2


@pytest.mark.parametrize(
    ("name", "target", "origin"),
    [
        (CMU, 0.499, (700, 900)),
        (CMU, 2.0, (0, 0)),
        (TCGA, 0.25, (2001, 1501)),
        (TCGA, 0.5, (2001, 1501)),  # level 1 at a non-integer downsample (2.0005)
        (TCGA, 2.0, (3000, 2000)),
    ],
)
def test_backends_agree_on_real_slides(real_data: Path, name: str, target: float, origin: tuple) -> None:
    mpp = 0.25 if name == TCGA else None
    with (
        open_slide(real_data / name, backend="openslide", mpp=mpp) as a,
        open_slide(real_data / name, backend="tiffslide", mpp=mpp) as b,
    ):
        patch_a, plan_a = a.read(*origin, 384, target)
        patch_b, plan_b = b.read(*origin, 384, target)
    assert plan_a == plan_b
    assert patch_a.std() > 5
    assert mad(patch_a, patch_b) < 1.0


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_unreadable_tile_raises_and_slide_stays_usable(real_data: Path, backend: str) -> None:
    with open_slide(real_data / "openslide-unreadable.svs", backend=backend) as slide:
        for _ in range(2):  # the error repeats cleanly instead of poisoning the handle
            with pytest.raises(SlideReadError, match=r"openslide-unreadable\.svs.*region x=0 y=0 16x16"):
                slide.read_level(0, 0, 0, 16, 16)
        assert slide.dimensions == (16, 16)


def test_not_a_tiff_is_unsupported(real_data: Path) -> None:
    with pytest.raises(UnsupportedSlideError, match="histolab-broken.svs"):
        open_slide(real_data / "histolab-broken.svs")
    with pytest.raises(UnsupportedSlideError, match="no such slide file"):
        open_slide(real_data / "missing.svs")


# --------------------------------------------------------------------------- generated slides


def stored_level(path: Path, level: int) -> np.ndarray:
    """A pyramid level as tifffile decodes it: an independent look at the stored pixels."""
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[level].asarray()


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_x20_native_level_read_matches_level0_reference(
    slide_x20: Path, slide_x20_image: np.ndarray, backend: str
) -> None:
    x, y = 400, 320
    with open_slide(slide_x20, backend=backend) as slide:
        patch, plan = slide.read(x, y, 512, target_mpp=2.0)
    assert (plan.level, plan.level_downsample, plan.resampled) == (1, 4.0, False)
    assert plan.effective_mpp == pytest.approx(2.0)
    # The read is exactly the stored level-1 pixels at (x/4, y/4) ...
    stored = stored_level(slide_x20, 1)[y // 4 : y // 4 + 512, x // 4 : x // 4 + 512]
    assert mad(patch, stored) < 0.5
    # ... which differ from level 0 + INTER_AREA only by the fixture's own JPEG
    # loss (Q90, 4:2:0 chroma on a texture of 1-px nuclei: about 2.4 over the level).
    reference = cv2.resize(
        slide_x20_image[y : y + 2048, x : x + 2048], (512, 512), interpolation=cv2.INTER_AREA
    )
    assert mad(patch, reference) <= mad(stored, reference) + 0.05
    assert mad(patch, reference) <= 3.5
    misplaced = cv2.resize(
        slide_x20_image[y + 8 : y + 2056, x + 8 : x + 2056], (512, 512), interpolation=cv2.INTER_AREA
    )
    assert mad(patch, misplaced) > mad(patch, reference) + 3  # two level-1 px off is clearly worse


def test_native_level_read_at_high_quality_matches_level0_reference(tmp_path: Path) -> None:
    image = synthetic_tissue(2048, 1536, seed=7)
    path = write_aperio_svs(tmp_path / "q98.svs", image, mpp=0.5, app_mag=20, quality=98)
    x, y = 400, 320
    with open_slide(path) as slide:
        patch, plan = slide.read(x, y, 256, target_mpp=2.0)
    assert (plan.level, plan.resampled) == (1, False)
    reference = cv2.resize(image[y : y + 1024, x : x + 1024], (256, 256), interpolation=cv2.INTER_AREA)
    assert mad(patch, reference) <= 2.0


def test_x20_coarse_read_from_level1_matches_level0_reference(
    slide_x20: Path, slide_x20_image: np.ndarray
) -> None:
    x, y = 800, 640  # 4.0 µm/px: level 1 (2.0) shrunk by 2
    with open_slide(slide_x20) as slide:
        patch, plan = slide.read(x, y, 200, target_mpp=4.0)
    assert (plan.level, plan.resample_scale) == (1, 2.0)
    reference = cv2.resize(
        slide_x20_image[y : y + 1600, x : x + 1600], (200, 200), interpolation=cv2.INTER_AREA
    )
    assert mad(patch, reference) <= 2.0


def test_x20_resampled_read_matches_level0_reference(slide_x20: Path, slide_x20_image: np.ndarray) -> None:
    x, y = 96, 1000  # 1.0 µm/px: level 0 (0.5) shrunk by 2, level 1 (2.0) is too coarse
    with open_slide(slide_x20) as slide:
        patch, plan = slide.read(x, y, 300, target_mpp=1.0)
    assert (plan.level, plan.resample_scale) == (0, 2.0)
    region = slide_x20_image[y : y + 600, x : x + 600]
    reference = cv2.resize(region, (300, 300), interpolation=cv2.INTER_AREA)
    assert mad(patch, reference) <= 2.0


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_x40_read_at_2um_from_level1_matches_reference(slide_x40: Path, backend: str) -> None:
    x, y = 1000, 600
    with open_slide(slide_x40, backend=backend) as slide:
        assert slide.mpp == (0.25, 0.25) and slide.objective_power == 40
        patch, plan = slide.read(x, y, 256, target_mpp=2.0)
    assert (plan.level, plan.resample_scale, plan.effective_mpp) == (1, 2.0, 2.0)
    reference = openslide_reference(slide_x40, x, y, 2048, 256)
    assert mad(patch, reference) <= 2.0


@pytest.mark.parametrize("target", [0.25, 0.5, 1.0, 2.0, 4.0, 6.0])
def test_backends_agree_on_generated_slides(slide_x40: Path, target: float) -> None:
    with open_slide(slide_x40, backend="openslide") as a, open_slide(slide_x40, backend="tiffslide") as b:
        patch_a, _ = a.read_region(1234, 567, 200, 150, target)
        patch_b, _ = b.read_region(1234, 567, 200, 150, target)
    assert mad(patch_a, patch_b) < 1.0


def test_exact_shapes_and_white_padding(slide_x20: Path) -> None:
    with open_slide(slide_x20) as slide:
        width, height = slide.dimensions
        block, _ = slide.read_region(17, 33, 123, 77, target_mpp=1.3)
        assert block.shape == (77, 123, 3) and block.dtype == np.uint8
        outside, _ = slide.read(width + 10, 0, 64, target_mpp=2.0)
        assert (outside == 255).all()
        corner, _ = slide.read(-256, -256, 128, target_mpp=2.0)  # 64 px outside, 64 inside
        assert (corner[:64] == 255).all() and (corner[:, :64] == 255).all()
        assert (corner[64:, 64:] != 255).any()
        edge = slide.read_level(0, width - 10, height - 10, 20, 20)
        assert (edge[10:] == 255).all() and (edge[:, 10:] == 255).all()
        with pytest.raises(ConfigError, match="finer than"):
            slide.read(0, 0, 16, target_mpp=0.1)


def test_thumbnail(slide_x40: Path) -> None:
    with open_slide(slide_x40) as slide:
        image, downsample = slide.thumbnail(8.0)  # from level 2 (4 µm/px) shrunk by 2
        assert image.shape == (96, 128, 3) and downsample == pytest.approx(32.0)
        image, downsample = slide.thumbnail(4.0)  # level 2 as is
        assert image.shape == (192, 256, 3) and downsample == pytest.approx(16.0)


@pytest.mark.parametrize(("fixture", "target"), [("slide_x40", 8.0), ("slide_x20", 4.0), ("slide_x20", 16.0)])
def test_thumbnail_shrunk_tile_by_tile_equals_the_whole_level_shrunk(
    fixture: str, target: float, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Integer factors take the tile-by-tile path (partial edge tiles included);
    its pixels equal reading the level and shrinking it whole."""
    from wsi_tools.slide import _tiffslide, _tile_decoder

    path = request.getfixturevalue(fixture)
    calls: list[int] = []
    original = _tile_decoder.TileDecoder.shrink_level

    def counted(self, level: int, factor: int):  # type: ignore[no-untyped-def]
        calls.append(factor)
        return original(self, level, factor)

    monkeypatch.setattr(_tile_decoder.TileDecoder, "shrink_level", counted)
    with open_slide(path, backend="tiffslide") as slide:
        tiled, downsample = slide.thumbnail(target)
    assert calls and calls[0] > 1  # the tile path ran
    monkeypatch.setattr(_tiffslide.TiffSlideBackend, "shrink_level", lambda self, level, factor: None)
    with open_slide(path, backend="tiffslide") as slide:
        whole, whole_downsample = slide.thumbnail(target)
    assert downsample == whole_downsample and np.array_equal(tiled, whole)


def test_missing_mpp_on_generated_slide(slide_no_mpp: Path) -> None:
    with pytest.raises(MissingMppError, match="no_mpp.svs"):
        open_slide(slide_no_mpp)
    with open_slide(slide_no_mpp, mpp=0.5) as slide:
        assert slide.spec.mpp == 0.5
    with pytest.raises(ConfigError, match="positive"):
        open_slide(slide_no_mpp, mpp=-1.0)


def test_appmag_disagreement_warns(tmp_path: Path) -> None:
    path = write_aperio_svs(
        tmp_path / "odd.svs", synthetic_tissue(256, 256, seed=1), mpp=0.25, app_mag=20, downsamples=(1,)
    )
    with pytest.warns(UserWarning, match="AppMag 20"), open_slide(path) as slide:
        assert slide.mpp == (0.25, 0.25)
        assert len(slide.warnings) == 1 and "AppMag 20" in slide.warnings[0]


def test_anisotropic_mpp_raises_unless_overridden(tmp_path: Path) -> None:
    path = tmp_path / "aniso.tif"
    tifffile.imwrite(
        path,
        np.full((512, 512, 3), 200, np.uint8),
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        resolution=(1e4 / 0.5, 1e4 / 0.6),  # px per cm: 0.5 x 0.6 µm/px
        resolutionunit="CENTIMETER",
    )
    for backend in ("openslide", "tiffslide"):
        with pytest.raises(MissingMppError, match="x and y resolution differ"):
            open_slide(path, backend=backend)
        with pytest.warns(UserWarning, match="differ"):
            slide = open_slide(path, backend=backend, require_mpp=False)
        assert slide.mpp == pytest.approx((0.5, 0.6))
        with pytest.raises(MissingMppError):
            slide.spec  # noqa: B018
        assert open_slide(path, backend=backend, mpp=0.55).spec.mpp == 0.55


@pytest.mark.parametrize("mpp", [1e-4, 1e6])
def test_an_implausible_mpp_is_refused_unless_overridden(tmp_path: Path, mpp: float) -> None:
    """1e-4 µm/px would make a 512 px window at ×5 a 10⁷ px read (286 GiB); 1e6 would
    report 10¹² mm² of tissue. Both are unit errors, refused with the fix."""
    path = write_aperio_svs(
        tmp_path / "odd.svs", synthetic_tissue(256, 256, seed=1), mpp=mpp, app_mag=None, downsamples=(1,)
    )
    with pytest.raises(MissingMppError, match="outside the plausible range.*--slide-mpp"):
        open_slide(path)
    with pytest.warns(UserWarning, match="plausible"):
        info_mode = open_slide(path, require_mpp=False)
    with pytest.raises(MissingMppError):
        info_mode.spec  # noqa: B018
    assert open_slide(path, mpp=0.5).spec.mpp == 0.5
    with pytest.raises(ConfigError, match="override .*plausible"):
        open_slide(path, mpp=mpp)


def corrupt_first_tile(path: Path) -> Path:
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0" * count)
    return path


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_corrupt_tile_then_next_read_works(tmp_path: Path, backend: str) -> None:
    image = synthetic_tissue(768, 512, seed=5, tissue_fraction=0.9)
    path = corrupt_first_tile(write_aperio_svs(tmp_path / "bad.svs", image, downsamples=(1,)))
    with open_slide(path, backend=backend) as slide:
        with pytest.raises(SlideReadError, match=r"bad\.svs.*level 0 region x=10 y=20 100x50"):
            slide.read_level(0, 10, 20, 100, 50)
        good = slide.read_level(0, 300, 0, 200, 200)  # tile 2: fine, even on OpenSlide
        assert mad(good, image[0:200, 300:500]) < 3
        with pytest.raises(SlideReadError):
            slide.read(0, 0, 64, target_mpp=0.5)


# --------------------------------------------------------------------------- lifetime


_INHERITED: dict[str, Slide] = {}


def _read_in_child(key: str) -> tuple[bool, np.ndarray]:
    slide = _INHERITED[key]  # inherited through fork, not pickled
    stale = slide._reader is not None and slide._reader_pid != os.getpid()
    return stale, slide.read(512, 512, 128, target_mpp=2.0)[0]


def test_pickle_and_fork_reopen(slide_x20: Path) -> None:
    slide = open_slide(slide_x20, backend="openslide")
    expected = slide.read(512, 512, 128, target_mpp=2.0)[0]
    clone = pickle.loads(pickle.dumps(slide))
    assert clone._reader is None  # lazily re-opened, never shipped
    assert clone.fingerprint == slide.fingerprint and clone.backend == "openslide"
    assert mad(clone.read(512, 512, 128, target_mpp=2.0)[0], expected) == 0
    _INHERITED["x20"] = slide
    with multiprocessing.get_context("fork").Pool(1) as pool:
        stale, pixels = pool.apply(_read_in_child, ("x20",))
    assert stale  # the child saw the parent's handle and opened its own
    assert mad(pixels, expected) == 0
    slide.close()
    assert slide._reader is None
    assert mad(slide.read(512, 512, 128, target_mpp=2.0)[0], expected) == 0  # re-opens
    slide.close()
    clone.close()


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 100)
    first = file_fingerprint(a)
    assert first == file_fingerprint(a) and first.startswith("100-")
    a.write_bytes(b"x" * 99 + b"y")
    assert file_fingerprint(a) != first


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_threads_share_one_slide(slide_x40: Path, backend: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    origins = [(x, y) for x in range(0, 3500, 700) for y in range(0, 2500, 800)]
    with open_slide(slide_x40, backend=backend) as slide:
        serial = [slide.read(x, y, 96, target_mpp=1.0)[0] for x, y in origins]
        with ThreadPoolExecutor(4) as pool:
            threaded = list(pool.map(lambda origin: slide.read(*origin, 96, target_mpp=1.0)[0], origins))
    for a, b in zip(serial, threaded, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", [CMU, TCGA])
def test_direct_tile_reads_equal_tiffslide_reads(real_data: Path, name: str) -> None:
    """The tiffslide backend decodes tiles itself; every box (inside, across
    and beyond the edges, both TCGA levels) equals tiffslide's own read_region."""
    fast = open_slide(real_data / name, backend="tiffslide", mpp=0.5)
    plain = open_slide(real_data / name, backend="tiffslide", mpp=0.5)
    plain._handle()._tiles = None  # the tiffslide read path
    rng = np.random.default_rng(7)
    with fast, plain:
        assert fast._handle()._tiles is not None and fast._handle()._tiles.handles(0)
        for level in range(fast.level_count):
            width, height = fast.level_dimensions[level]
            downsample = fast.level_downsamples[level]
            for _ in range(12):
                x, y = (int(rng.integers(-200, extent * downsample)) for extent in (width, height))
                size = (int(rng.integers(1, 600)), int(rng.integers(1, 600)))
                a, b = fast.read_level(level, x, y, *size), plain.read_level(level, x, y, *size)
                assert a.shape == (size[1], size[0], 3) and a.dtype == np.uint8 and a.flags.c_contiguous
                np.testing.assert_array_equal(a, b)
        # A whole level in one read equals tifffile's independent decode of that level.
        level = fast.level_count - 1
        np.testing.assert_array_equal(
            fast.read_level(level, 0, 0, *fast.level_dimensions[level]), stored_level(real_data / name, level)
        )


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
@pytest.mark.parametrize(("name", "level"), [(CMU, 0), (TCGA, 0), (TCGA, 1)])
def test_read_level_windows_equal_single_reads(real_data: Path, backend: str, name: str, level: int) -> None:
    """Windows read together (neighbours, a gap, past the right edge) equal
    read_level of each window, on both backends and at TCGA's 2.0005 level."""
    with open_slide(real_data / name, backend=backend, mpp=0.5) as slide:
        downsample = slide.level_downsamples[level]
        width = slide.level_dimensions[level][0] * downsample
        for xs, y in (
            ([100, 400, 700, 1300], 300),
            ([0, 250], 0),
            ([int(width) - 500, int(width) - 200], 700),
        ):
            windows = slide.read_level_windows(level, xs, y, 300, 260)
            assert windows.shape == (len(xs), 260, 300, 3)
            for x, window in zip(xs, windows, strict=True):
                single = slide.read_level(level, x, y, 300, 260)
                if downsample == int(downsample):
                    np.testing.assert_array_equal(window, single)
                else:  # one covering read is cut: its sub-pixel resampling differs slightly
                    assert mad(window, single) < 1.0


def test_every_backend_meets_the_protocol(real_data: Path) -> None:
    from wsi_tools.slide import BACKENDS, SlideBackend, open_backend

    for name in BACKENDS:
        backend = open_backend(real_data / CMU, name)
        try:
            assert isinstance(backend, SlideBackend) and backend.name == name
            assert backend.read(0, 0, 0, 4, 3).shape == (3, 4, 3)
        finally:
            backend.close()


def test_a_fast_decoder_failure_warns_once_and_is_recorded(
    real_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the fast tile decoder cannot serve a slide, tiffslide reads it (same pixels):
    the user is told once, and the slide's provenance says so."""
    from wsi_tools.slide import _tiffslide

    def broken(*args: object) -> None:
        raise RuntimeError("unusual layout")

    monkeypatch.setattr(_tiffslide, "TileDecoder", broken)
    with pytest.warns(UserWarning, match="fast tile decoder unavailable .*unusual layout") as caught:
        slide = open_slide(real_data / CMU, backend="tiffslide")
    assert sum("fast tile decoder" in str(w.message) for w in caught) == 1
    with slide, open_slide(real_data / CMU, backend="openslide") as reference:
        assert slide.describe()["reader_fallback"].startswith("fast tile decoder unavailable")
        assert np.array_equal(
            slide.read_level(0, 100, 100, 64, 64), reference.read_level(0, 100, 100, 64, 64)
        )
        clone = pickle.loads(pickle.dumps(slide))  # a worker re-opens it without warning again
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            clone.read_level(0, 0, 0, 8, 8)
        clone.close()


def test_auto_takes_the_backend_that_sees_the_whole_pyramid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenSlide does not see a SubIFD pyramid; reading level 0 and shrinking it gives
    the same pixels at up to 64x the work, so auto takes the reader with all levels
    whichever it tries first, and info says why."""
    from wsi_tools.slide import _registry

    image = synthetic_tissue(2048, 2048, seed=3)
    options = dict(
        tile=(256, 256), photometric="rgb", compression="jpeg",
        resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER",
    )  # fmt: skip
    path = tmp_path / "subifd.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(image, subifds=2, **options)
        for factor in (4, 16):
            small = cv2.resize(image, (2048 // factor, 2048 // factor), interpolation=cv2.INTER_AREA)
            writer.write(small, subfiletype=1, **options)
    with open_slide(path, backend="openslide") as slide:
        assert slide.level_count == 1
    for order in (("tiffslide", "openslide"), ("openslide", "tiffslide")):
        monkeypatch.setattr(_registry, "backend_order", lambda _path, _backend, order=order: order)
        with open_slide(path) as slide:
            assert slide.backend == "tiffslide" and slide.level_count == 3
            assert slide.backend_choice == "tiffslide is used: it sees 3 pyramid level(s), openslide only 1"
            assert slide.describe()["backend_choice"] == slide.backend_choice
