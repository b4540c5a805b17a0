"""Tissue detection on slides whose tissue is known, blank slides, real slides; QC pictures."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from shapely.geometry import MultiPolygon, Point, box

from wsi_tools.annotations import Annotation
from wsi_tools.slide import open_slide
from wsi_tools.testing.synth import BACKGROUND, write_aperio_svs
from wsi_tools.tissue import MIN_SATURATION, TissueMask, detect_tissue, mask_to_polygon, tissue_mask_from_rgb
from wsi_tools.viz.qc import GROUP_PALETTE, PATCH_COLOURS, group_colours, render_overview

MPP = 0.5  # µm/px of the designed slide: 1 µm² = 4 px²

# Level-0 boxes (x0, y0, x1, y1) of the designed slide.
MAIN = (300, 400, 1500, 1600)  # 600 x 600 µm of tissue ...
BIG_HOLE = (500, 600, 900, 1000)  # ... with a 200 x 200 µm hole (40 000 µm², kept) ...
SMALL_HOLE = (1200, 1300, 1300, 1400)  # ... and a 50 x 50 µm one (2 500 µm², filled)
ISLAND = (1700, 300, 2100, 700)  # 200 x 200 µm: kept
SPECK = (200, 1900, 260, 1960)  # 30 x 30 µm: dust, dropped


def _fill(image: np.ndarray, rect: tuple[int, int, int, int], colour: np.ndarray) -> None:
    x0, y0, x1, y1 = rect
    image[y0:y1, x0:x1] = colour[y0:y1, x0:x1]


@pytest.fixture(scope="module")
def designed_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    height, width = 2304, 2304
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    stain = np.clip(np.array([215, 150, 195]) + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(
        np.uint8
    )
    glass = np.full_like(image, BACKGROUND)
    for rect in (MAIN, ISLAND, SPECK):
        _fill(image, rect, stain)
    for rect in (BIG_HOLE, SMALL_HOLE):
        _fill(image, rect, glass)
    return write_aperio_svs(tmp_path_factory.mktemp("tissue") / "designed.svs", image, mpp=MPP, app_mag=20)


@pytest.fixture(scope="module")
def designed_tissue(designed_slide: Path) -> TissueMask:
    with open_slide(designed_slide) as slide:
        return detect_tissue(slide)  # 8 µm/px: level 2 (ds 16) as is


def _fraction(tissue: TissueMask, rect: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = rect
    return tissue.fraction(x0, y0, x1 - x0, y1 - y0)


def test_fraction_on_known_tissue(designed_tissue: TissueMask) -> None:
    tissue = designed_tissue
    assert tissue.mask.shape == (144, 144) and tissue.downsample == 16 and tissue.mpp == pytest.approx(8.0)
    assert _fraction(tissue, (1000, 450, 1400, 1200)) > 0.97  # deep inside the main block
    assert _fraction(tissue, (1750, 350, 2050, 650)) > 0.97  # inside the island
    assert _fraction(tissue, (1700, 1700, 2200, 2200)) < 0.02  # glass
    assert _fraction(tissue, (560, 660, 840, 940)) < 0.03  # inside the big hole: not tissue
    assert _fraction(tissue, SMALL_HOLE) > 0.97  # the small hole is filled
    assert _fraction(tissue, SPECK) < 0.02  # the speck is dropped
    assert _fraction(tissue, (1300, 800, 1700, 1200)) == pytest.approx(0.5, abs=0.06)  # straddles the edge
    # A box half outside the slide counts the outside as no tissue.
    assert _fraction(tissue, (-200, 0, 200, 400)) < 0.02
    assert _fraction(tissue, (1400, 500, 1600, 700)) == pytest.approx(0.5, abs=0.06)


def test_fractions_vectorised_and_exact_at_subpixel_bounds(designed_tissue: TissueMask) -> None:
    rng = np.random.default_rng(1)
    origins = rng.uniform(-300, 2300, (200, 2))
    extent = 237.3
    vectorised = designed_tissue.fractions(origins, extent)
    single = [designed_tissue.fraction(x, y, extent, extent) for x, y in origins]
    np.testing.assert_allclose(vectorised, single, atol=1e-12)
    # Against a brute-force count on a 4x upsampled mask, boxes on quarter-pixel bounds.
    fine = np.kron(designed_tissue.mask, np.ones((4, 4))).astype(bool)
    quarter = designed_tissue.downsample / 4
    for col, row, side in [(70, 90, 23), (250, 130, 41), (-6, 10, 50), (560, 570, 30), (75, 101, 1)]:
        brute = fine[max(row, 0) : row + side, max(col, 0) : col + side].sum() / side**2
        got = designed_tissue.fraction(col * quarter, row * quarter, side * quarter, side * quarter)
        assert got == pytest.approx(brute, abs=1e-9)
    assert 0 < designed_tissue.fraction(70 * quarter, 90 * quarter, 23 * quarter, 23 * quarter) < 1


def test_polygon_has_the_regions_and_the_big_hole(designed_tissue: TissueMask) -> None:
    polygon = designed_tissue.polygon
    assert isinstance(polygon, MultiPolygon) and len(polygon.geoms) == 2
    main = max(polygon.geoms, key=lambda p: p.area)
    assert len(main.interiors) == 1  # the big hole; the small one was filled
    assert main.contains(Point(1100, 800)) and not main.contains(Point(700, 800))
    minx, miny, maxx, maxy = main.bounds
    assert minx == pytest.approx(MAIN[0], abs=24) and maxx == pytest.approx(MAIN[2], abs=24)
    assert miny == pytest.approx(MAIN[1], abs=24) and maxy == pytest.approx(MAIN[3], abs=24)
    expected_px = (1200 * 1200 - 400 * 400) + 400 * 400
    assert polygon.area == pytest.approx(expected_px, rel=0.08)
    assert designed_tissue.area_mm2 == pytest.approx(expected_px * MPP**2 / 1e6, rel=0.08)
    island = box(*ISLAND)
    assert polygon.intersection(island).area / island.area > 0.8


def test_contour_shortcut_agrees_with_the_labelling() -> None:
    """Whenever the contours say the clean-up has nothing to do, the exact
    labelling (both passes) returns the mask unchanged; masks with specks,
    lines, rings and holes are drawn at random."""
    from wsi_tools import tissue

    rng = np.random.default_rng(0)
    taken = 0
    for _ in range(600):
        height, width = (int(v) for v in rng.integers(8, 64, 2))
        mask = np.zeros((height, width), np.uint8)
        for _ in range(int(rng.integers(1, 6))):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            kind = int(rng.integers(0, 4))
            if kind == 0:
                cv2.circle(mask, (x, y), int(rng.integers(1, 12)), 255, -1)
            elif kind == 1:
                cv2.line(mask, (x, y), (int(rng.integers(0, width)), int(rng.integers(0, height))), 255, 1)
            elif kind == 2:
                cv2.circle(mask, (x, y), int(rng.integers(1, 5)), 0, -1)  # a hole, perhaps
            else:
                mask[rng.random((height, width)) < 0.02] = 255
        min_region, min_hole = float(rng.integers(1, 50)), float(rng.integers(1, 50))
        if tissue._already_clean(mask, min_region):
            taken += 1
            cleaned = tissue._drop_small_components(mask > 0, min_region, connectivity=8)
            gaps = tissue._drop_small_components(~cleaned, min_hole, connectivity=4, keep_border=True)
            assert np.array_equal(cleaned | ~gaps, mask > 0)
    assert taken > 50  # the shortcut is exercised, not only the labelling


def test_component_bound_holds_and_many_components_are_labelled_right() -> None:
    """The raster-order bound is never below the true count (so 16-bit labels
    never wrap), and 80,000 components (a 4-connected checkerboard) take the
    32-bit path and are all dropped or all kept as they should be."""
    from wsi_tools import tissue

    rng = np.random.default_rng(1)
    for _ in range(200):
        mask = rng.random(tuple(int(v) for v in rng.integers(1, 40, 2))) < rng.random()
        for connectivity in (4, 8):
            count = cv2.connectedComponents(mask.view(np.uint8), connectivity=connectivity)[0] - 1
            assert tissue._max_components(mask, connectivity) >= count
    checker = (np.indices((400, 400)).sum(axis=0) % 2).astype(bool)
    assert tissue._max_components(checker, 4) == 80_000
    assert not tissue._drop_small_components(checker, 2, connectivity=4).any()
    assert np.array_equal(tissue._drop_small_components(checker, 1, connectivity=4), checker)
    assert np.array_equal(tissue._drop_small_components(checker, 80_000, connectivity=8), checker)


def test_generated_slide_matches_its_ground_truth(slide_x20: Path, slide_x20_image: np.ndarray) -> None:
    with open_slide(slide_x20) as slide:
        tissue = detect_tissue(slide, target_mpp=8.0)
    truth = (slide_x20_image != BACKGROUND).any(axis=2).astype(np.float32)
    truth = cv2.resize(truth, tissue.mask.shape[::-1], interpolation=cv2.INTER_AREA) > 0.5
    intersection = (truth & tissue.mask).sum()
    union = (truth | tissue.mask).sum()
    assert intersection / union > 0.9


@pytest.mark.parametrize("grey", [BACKGROUND, 255, 128, 0])
def test_blank_slide_has_no_tissue(tmp_path: Path, grey: int) -> None:
    rng = np.random.default_rng(grey)
    image = np.clip(grey + rng.normal(0, 2, (1024, 1024, 1)), 0, 255).repeat(3, axis=2).astype(np.uint8)
    path = write_aperio_svs(tmp_path / "blank.svs", image, mpp=0.5, app_mag=20)
    with open_slide(path) as slide:
        tissue = detect_tissue(slide)
    assert not tissue.mask.any()
    assert tissue.polygon.is_empty and tissue.area_mm2 == 0.0
    assert tissue.fraction(0, 0, 1024, 1024) == 0.0
    assert tissue.threshold >= MIN_SATURATION
    assert (tissue.fractions(np.array([[0, 0], [500, 500]]), 300) == 0).all()


def test_all_tissue_image_is_all_tissue() -> None:
    pink = np.zeros((64, 64, 3), np.uint8) + np.array([215, 150, 195], np.uint8)
    mask, threshold = tissue_mask_from_rgb(pink, mpp=8.0)
    assert mask.all() and threshold == MIN_SATURATION  # Otsu has nothing to split
    polygon = mask_to_polygon(mask, downsample=16)
    assert polygon.area == pytest.approx((63 * 16) ** 2)  # through the border pixels' centres


def test_real_slide_tissue(real_data: Path) -> None:
    with open_slide(real_data / "CMU-1-Small-Region.svs") as slide:
        tissue = detect_tissue(slide)
    assert 0.2 < tissue.fraction_of_slide < 0.5
    assert tissue.fraction(0, 0, 400, 400) < 0.02  # glass, top left
    assert tissue.fraction(900, 2000, 300, 300) > 0.95  # epidermis and dermis
    assert tissue.polygon.within(box(-20, -20, 2240, 2990))


# --------------------------------------------------------------------------- QC pictures


def _colour_pixels(image: np.ndarray, hex_colour: str, tolerance: int = 40) -> int:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image[..., :3].astype(int) - rgb).max(axis=2) < tolerance).sum())


def test_overview_draws_tissue_annotations_and_patches(
    designed_slide: Path, designed_tissue: TissueMask, tmp_path: Path
) -> None:
    annotations = [
        Annotation("a", "polygon", "LI_positive", ("LI_positive",), box(1000, 450, 1400, 900)),
        Annotation("b", "polygon", "LI_negative", ("LI_negative",), box(1750, 350, 2050, 650)),
        Annotation("c", "dot", "LI_negative", ("LI_negative",), Point(1100, 1400)),
    ]
    patches = [(1000, 450, 256.0, "pos"), (1800, 400, 256.0, "neg"), (400, 1100, 256.0, "weak")]
    with open_slide(designed_slide) as slide:
        out = render_overview(
            slide,
            tmp_path / "qc" / "overview.png",
            tissue=designed_tissue,
            annotations=annotations,
            patches=patches,
        )
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[0] >= 900 and image.shape[1] >= 700  # a small slide is drawn large enough to read
    colours = group_colours(annotations)
    assert set(colours) == {"LI_negative", "LI_positive"} and len(set(colours.values())) == 2
    assert not set(colours.values()) & set(PATCH_COLOURS.values())
    for colour in (*PATCH_COLOURS.values(), *colours.values()):
        assert _colour_pixels(image, colour) > 30, colour
    assert _colour_pixels(image, GROUP_PALETTE[2]) == 0  # unused palette colours stay out


def test_overview_without_overlays(slide_x40: Path, tmp_path: Path) -> None:
    with open_slide(slide_x40) as slide:
        out = render_overview(slide, tmp_path / "plain.png", target_mpp=16.0)
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[1] >= 900 and _colour_pixels(image, PATCH_COLOURS["pos"]) == 0
