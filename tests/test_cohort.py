"""The synthetic lymphatic-invasion cohort: readable slides, valid XMLs, drawn content."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from wsi_tools.annotations import label_annotations, load_label_map, read_asap_xml
from wsi_tools.testing.cohort import CohortConfig, generate_cohort

TINY = CohortConfig(
    n_hard_slides=2,
    n_weak_slides=1,
    width=3072,
    height=2304,
    positives_per_slide=(3, 4),
    negatives_per_slide=(3, 4),
    mimics_per_hard_slide=3,
    mimics_per_weak_slide=12,
    min_region_spacing=500,
    seed=5,
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return generate_cohort(tmp_path_factory.mktemp("cohort"), TINY)


def _read_region(path: Path, x: int, y: int, width: int, height: int) -> np.ndarray:
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        return np.asarray(slide.read_region((x, y), 0, (width, height)).convert("RGB"))


def test_slides_are_aperio_pyramids_with_mpp(cohort):
    import openslide

    assert len(cohort.by_set("hard")) == 2 and len(cohort.by_set("weak")) == 1
    for entry in cohort.slides:
        with openslide.OpenSlide(str(entry.slide_path)) as slide:
            assert slide.properties["openslide.vendor"] == "aperio"
            assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
            assert slide.dimensions == (3072, 2304)
            assert [round(d) for d in slide.level_downsamples] == [1, 4, 16]


def test_manifest_lists_every_slide_with_relative_paths(cohort):
    with cohort.manifest_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["slide_id"] for row in rows] == [s.slide_id for s in cohort.slides]
    for row in rows:
        assert (cohort.root / row["slide_path"]).is_file()
        assert not Path(row["slide_path"]).is_absolute()
        if row["set"] == "hard":
            assert (cohort.root / row["annotation_path"]).is_file()
        else:
            assert row["annotation_path"] == ""


def test_annotations_follow_the_default_label_map(cohort):
    label_map = load_label_map()
    for entry in cohort.by_set("hard"):
        annotations = read_asap_xml(entry.annotation_path, slide_dimensions=(TINY.width, TINY.height))
        assert annotations.warnings == []
        labeled = label_annotations(annotations, label_map)
        assert len(labeled.positives) == entry.n_positive >= 1
        assert len(labeled.negatives) == entry.n_negative >= 1
        assert not labeled.unknown_groups
        everything = [*labeled.positives, *labeled.negatives]
        for i, first in enumerate(everything):
            assert first.geometry.is_valid
            for second in everything[i + 1 :]:
                assert not first.geometry.intersects(second.geometry)


def _dark_purple_share(pixels: np.ndarray) -> float:
    """Share of tumour-nucleus-like pixels: dark, blue above green."""
    r, g, b = (pixels[..., c].astype(int) for c in range(3))
    return float(((r < 120) & (g < 75) & (b > g + 40)).mean())


def test_positive_vessels_hold_tumour_cells_and_negatives_do_not(cohort):
    label_map = load_label_map()
    shares: dict[int, list[float]] = {0: [], 1: []}
    for entry in cohort.by_set("hard"):
        labeled = label_annotations(read_asap_xml(entry.annotation_path), label_map)
        for annotation in [*labeled.positives, *labeled.negatives]:
            x0, y0, x1, y1 = (int(v) for v in annotation.geometry.bounds)
            pixels = _read_region(entry.slide_path, x0, y0, x1 - x0, y1 - y0)
            shares[annotation.label].append(_dark_purple_share(pixels))
    assert min(shares[1]) > 0.03
    assert max(shares[0]) < min(shares[1])


def test_same_seed_gives_the_same_pixels(cohort, tmp_path):
    again = generate_cohort(
        tmp_path, CohortConfig(**{**TINY.__dict__, "n_hard_slides": 1, "n_weak_slides": 0})
    )
    first, second = cohort.by_set("hard")[0], again.by_set("hard")[0]
    np.testing.assert_array_equal(
        _read_region(first.slide_path, 1000, 800, 512, 512),
        _read_region(second.slide_path, 1000, 800, 512, 512),
    )
    assert first.annotation_path.read_bytes() == second.annotation_path.read_bytes()
