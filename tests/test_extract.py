"""Extraction into the store: pixels, the grid rule, the hard-set rules,
determinism, crash safety and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
from shapely.geometry import Polygon, box

from wsi_tools.annotations import Annotation, write_asap_xml
from wsi_tools.cli import main
from wsi_tools.errors import AnnotationError, ConfigError, MissingMppError
from wsi_tools.extract import TISSUE_MPP, ExtractionConfig, extract_slide
from wsi_tools.geometry import TilingConfig, grid_origins
from wsi_tools.slide import open_slide
from wsi_tools.store import PatchStore, SlideWriter
from wsi_tools.testing.synth import synthetic_tissue, write_aperio_svs
from wsi_tools.tissue import detect_tissue

P = 128  # small patches keep the tests fast; the rules do not depend on the size


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def weak(**overrides: object) -> ExtractionConfig:
    settings: dict = {"set": "weak", "patch_size": P, "fraction": 1.0, "min_tissue": 0.0}
    settings.update(overrides)
    return ExtractionConfig(**settings)


def reference_patch(slide_path: Path, x: int, y: int, extent: float, size: int) -> np.ndarray:
    """Independent read: OpenSlide at level 0, shrunk with INTER_AREA."""
    with openslide.OpenSlide(str(slide_path)) as slide:
        n = round(extent)
        region = np.asarray(slide.read_region((int(x), int(y)), 0, (n, n)).convert("RGB"))
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)


def stored(store_path: Path, slide_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    store = PatchStore(store_path)
    coords = store.coords(slide_id)
    return (
        coords,
        store.read_patches(slide_id, range(len(coords))),
        store.labels(slide_id),
        store.slide_attrs(slide_id),
    )


# --------------------------------------------------------------------------- pixels


@pytest.mark.parametrize(("mpp", "app_mag", "level", "scale"), [(0.5, 20, 1, 1.0), (0.25, 40, 1, 2.0)])
def test_patches_match_an_independent_level0_reference(
    tmp_path: Path, mpp: float, app_mag: int, level: int, scale: float
) -> None:
    # Quality 98: at the fixtures' Q90 the pyramid's own JPEG loss alone is ~2.4 MAD.
    image = synthetic_tissue(round(1024 / mpp), round(768 / mpp), seed=app_mag)  # 4 x 3 windows
    slide_path = write_aperio_svs(tmp_path / f"x{app_mag}.svs", image, mpp=mpp, app_mag=app_mag, quality=98)
    extract_slide(slide_path, tmp_path / "s.zarr", weak(), slide_id="s")
    coords, patches, _, attrs = stored(tmp_path / "s.zarr", "s")
    assert (attrs["level"], attrs["resample_scale"], attrs["effective_mpp"]) == (level, scale, 2.0)
    extent = attrs["patch_extent_level0"]
    assert extent == pytest.approx(P * 2.0 / mpp)
    references = np.stack([reference_patch(slide_path, x, y, extent, P) for x, y in coords])
    assert len(coords) == 12
    assert mad(patches, references) <= 2.0
    # Right place: a reference two target pixels off is clearly worse.
    shift = round(2 * extent / P)
    x, y = coords[len(coords) // 2]
    misplaced = reference_patch(slide_path, x + shift, y + shift, extent, P)
    assert (
        mad(patches[len(coords) // 2], misplaced)
        > mad(patches[len(coords) // 2], references[len(coords) // 2]) + 2
    )
    # Span reads give exactly what per-window reads give.
    with open_slide(slide_path) as slide:
        for (x, y), patch in zip(coords, patches, strict=True):
            assert np.array_equal(slide.read(int(x), int(y), P, 2.0)[0], patch)


def test_cmu1_patch_matches_openslide_reference(real_data: Path, tmp_path: Path) -> None:
    slide_path = real_data / "CMU-1-Small-Region.svs"
    extract_slide(slide_path, tmp_path / "s.zarr", weak(patch_size=512), slide_id="cmu")
    coords, patches, _, attrs = stored(tmp_path / "s.zarr", "cmu")
    assert len(coords) == 1 and attrs["mpp"] == pytest.approx([0.499, 0.499])
    assert attrs["patch_extent_level0"] == pytest.approx(512 * 2.0 / 0.499)
    reference = reference_patch(slide_path, *coords[0], attrs["patch_extent_level0"], 512)
    assert mad(patches[0], reference) <= 2.0


# --------------------------------------------------------------------------- weak set


def test_weak_grid_rule_tissue_filter_and_fraction(slide_x40: Path, tmp_path: Path) -> None:
    with open_slide(slide_x40) as slide:
        spec = slide.spec
        grid = grid_origins(spec, TilingConfig(2.0, 64))
        fractions = detect_tissue(slide, target_mpp=TISSUE_MPP).fractions(grid, 512.0)
    assert len(grid) == 8 * 6  # 4096 x 3072 at 0.25 µm/px, 64 px at 2.0 µm/px = 512 level-0 px

    extract_slide(slide_x40, tmp_path / "all.zarr", weak(patch_size=64), slide_id="s")
    coords, _, labels, attrs = stored(tmp_path / "all.zarr", "s")
    assert np.array_equal(coords, grid)  # origin (0, 0), step one window, row-major
    assert set(labels.tolist()) == {0}
    assert attrs["counts"]["grid_windows"] == 48

    extract_slide(slide_x40, tmp_path / "tissue.zarr", weak(patch_size=64, min_tissue=0.5), slide_id="s")
    coords, _, _, attrs = stored(tmp_path / "tissue.zarr", "s")
    eligible = grid[fractions >= 0.5]
    assert 0 < len(eligible) < len(grid)
    assert np.array_equal(coords, eligible)
    assert attrs["counts"]["dropped_low_tissue"] == len(grid) - len(eligible)
    assert np.allclose(PatchStore(tmp_path / "tissue.zarr").tissue_fraction("s"), fractions[fractions >= 0.5])

    extract_slide(
        slide_x40, tmp_path / "third.zarr", weak(patch_size=64, min_tissue=0.5, fraction=1 / 3), slide_id="s"
    )
    coords, _, _, attrs = stored(tmp_path / "third.zarr", "s")
    assert len(coords) == round(len(eligible) / 3)
    assert {tuple(c) for c in coords} <= {tuple(c) for c in eligible}
    order = coords[:, 1] * 10**6 + coords[:, 0]
    assert np.all(np.diff(order) > 0)  # sorted row-major
    assert attrs["counts"]["dropped_fraction"] == len(eligible) - len(coords)


def test_weak_selection_is_deterministic_whatever_the_order(
    slide_x40: Path, slide_x20: Path, tmp_path: Path
) -> None:
    config = weak(patch_size=64, min_tissue=0.3, fraction=0.4, seed=7)
    first, second = tmp_path / "first.zarr", tmp_path / "second.zarr"
    for path in (slide_x40, slide_x20):
        extract_slide(path, first, config)
    for path in (slide_x20, slide_x40):  # other order, as another worker would
        extract_slide(path, second, config)
    for slide_id in ("x40", "x20"):
        coords_a, patches_a, _, _ = stored(first, slide_id)
        coords_b, patches_b, _, _ = stored(second, slide_id)
        assert np.array_equal(coords_a, coords_b) and np.array_equal(patches_a, patches_b)
    extract_slide(
        slide_x40, tmp_path / "seed8.zarr", weak(patch_size=64, min_tissue=0.3, fraction=0.4, seed=8)
    )
    assert not np.array_equal(stored(tmp_path / "seed8.zarr", "x40")[0], stored(first, "x40")[0])


# --------------------------------------------------------------------------- hard set


def polygon(name: str, group: str, bounds: tuple[float, float, float, float]) -> Annotation:
    return Annotation(name=name, type="polygon", group=group, group_chain=(group,), geometry=box(*bounds))


def test_hard_set_rules(slide_x20: Path, tmp_path: Path) -> None:
    # slide_x20 is 3072 x 2560 at 0.5 µm/px: a 128 px patch at 2.0 µm/px spans 512 level-0 px.
    annotations = [
        polygon("pos", "LI_positive", (1000, 1000, 1200, 1150)),  # window (844, 819)
        polygon("far", "LI_negative", (2400, 300, 2500, 400)),  # window (2194, 94): kept
        polygon("touching", "LI_negative", (1300, 1000, 1400, 1100)),  # window (1094, 794) overlaps pos
        polygon("corner", "LI_negative", (10, 10, 60, 60)),  # centred at (35, 35): shifted to (0, 0)
        polygon("edge", "LI_negative", (700, 1050, 788, 1100)),  # window ends at x=1000: touches pos only
        Annotation(
            "pos dot", "dot", "LI+", ("LI+",), Polygon([(3000, 2500), (3060, 2500), (3060, 2550)]).centroid
        ),
    ]
    xml = write_asap_xml(annotations, tmp_path / "slide.xml")
    result = extract_slide(
        slide_x20, tmp_path / "s.zarr", ExtractionConfig(set="hard", patch_size=P), annotation_path=xml
    )
    coords, patches, labels, attrs = stored(tmp_path / "s.zarr", "x20")
    assert coords.tolist() == [[844, 819], [2194, 94], [0, 0], [488, 819], [2560, 2048]]
    assert labels.tolist() == [1, 0, 0, 0, 1]
    assert result.counts["dropped_neg_touches_pos"] == 1
    assert result.counts["kept"] == 5 and result.counts["positive"] == 2 and result.counts["negative"] == 3
    assert attrs["counts"] == result.counts
    assert attrs["set"] == "hard" and attrs["label_map"]["labels"]["li_positive"] == 1
    assert attrs["annotations"] == str(xml.resolve())
    with open_slide(slide_x20) as slide:
        assert np.array_equal(patches[0], slide.read(844, 819, P, 2.0)[0])


def test_hard_set_cover_and_exclusion(slide_x20: Path, tmp_path: Path) -> None:
    big = polygon("big", "LI_negative", (100, 1700, 1300, 2300))  # 1200 x 600 level-0 px
    artifact = polygon("pen", "artifact", (2300, 200, 2350, 250))
    far = polygon("far", "LI_negative", (2400, 300, 2500, 400))  # its window covers the pen mark
    xml = write_asap_xml([big, artifact, far], tmp_path / "slide.xml")
    label_map = tmp_path / "map.yaml"
    label_map.write_text("labels: {LI_negative: 0, LI_positive: 1}\nexclude: [artifact]\n")

    once = extract_slide(
        slide_x20,
        tmp_path / "once.zarr",
        ExtractionConfig(set="hard", patch_size=P, label_map=str(label_map)),
        annotation_path=xml,
    )
    assert once.n_patches == 1 and once.counts["dropped_excluded"] == 1  # far's window meets the pen mark

    covered = extract_slide(
        slide_x20,
        tmp_path / "cover.zarr",
        ExtractionConfig(set="hard", patch_size=P, label_map=str(label_map), cover=True),
        annotation_path=xml,
    )
    coords, _, labels, _ = stored(tmp_path / "cover.zarr", "x20")
    assert covered.n_patches == 3 * 2  # ceil(1200 / 512) x ceil(600 / 512) windows centred on the box
    assert set(labels.tolist()) == {0}
    region = big.geometry
    for x, y in coords:
        window = box(x, y, x + 512, y + 512)
        assert window.intersection(region).area > 0
    assert coords[:, 0].min() >= 0 and (coords[:, 0].max() + 512) <= 3072
    assert len({tuple(c) for c in coords}) == len(coords)


def test_hard_set_input_errors_write_nothing(slide_x20: Path, slide_no_mpp: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    unknown = write_asap_xml([polygon("a", "Tumor", (10, 10, 90, 90))], tmp_path / "unknown.xml")
    with pytest.raises(AnnotationError, match="Tumor"):
        extract_slide(slide_x20, store, ExtractionConfig(set="hard", patch_size=P), annotation_path=unknown)
    with pytest.raises(ConfigError, match="--annotations"):
        extract_slide(slide_x20, store, ExtractionConfig(set="hard", patch_size=P))
    with pytest.raises(MissingMppError, match="--slide-mpp"):
        extract_slide(slide_no_mpp, store, weak())
    with pytest.raises(ConfigError, match="fraction"):
        extract_slide(slide_x20, store, weak(fraction=0))
    store_now = PatchStore(store, mode="a")
    assert store_now.slide_ids(include_incomplete=True) == [] and store_now.leftovers() == []


# --------------------------------------------------------------------------- crash safety and reruns


def test_failure_mid_slide_then_rerun(
    slide_x40: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_path = tmp_path / "s.zarr"
    original = SlideWriter.write_encoded
    calls = {"n": 0}

    def fail_second_write(self: SlideWriter, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("injected failure")
        original(self, *args, **kwargs)

    monkeypatch.setattr(SlideWriter, "write_encoded", fail_second_write)
    with pytest.raises(OSError, match="injected"):
        extract_slide(slide_x40, store_path, weak(patch_size=64))
    assert not store_path.exists()  # the store was created for this slide: nothing is left
    assert calls["n"] == 2

    monkeypatch.setattr(SlideWriter, "write_encoded", original)
    result = extract_slide(slide_x40, store_path, weak(patch_size=64))
    store = PatchStore(store_path)
    assert result.status == "complete" and store.slide_ids() == ["x40"] and store.verify().ok
    again = extract_slide(slide_x40, store_path, weak(patch_size=64))
    assert again.status == "skipped" and again.n_patches == result.n_patches
    replaced = extract_slide(slide_x40, store_path, weak(patch_size=64, fraction=0.5), overwrite=True)
    assert (
        replaced.status == "complete" and PatchStore(store_path).n_patches("x40") == replaced.n_patches < 48
    )


# --------------------------------------------------------------------------- CLI


def test_cli_extract_verify_and_bad_inputs(
    slide_x40: Path, real_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "s.zarr"
    qc = tmp_path / "qc"
    code = main(
        [
            "extract",
            str(slide_x40),
            "--out",
            str(store),
            "--set",
            "weak",
            "--patch-size",
            "64",
            "--fraction",
            "1/2",
            "--min-tissue",
            "0.3",
            "--slide-id",
            "case 1/a",
            "--qc",
            str(qc),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("case_1_a: extracted ") and "patches" in out
    assert (qc / "case_1_a.png").stat().st_size > 1000
    attrs = PatchStore(store).slide_attrs("case_1_a")
    assert attrs["params"]["fraction"] == 0.5 and attrs["params"]["min_tissue"] == 0.3

    assert main(["verify", str(store)]) == 0
    assert "1 slides" in capsys.readouterr().out
    shard = next(path for path in (store / "slides/case_1_a/images/c").rglob("*") if path.is_file())
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x55
    shard.write_bytes(bytes(data))
    assert main(["verify", str(store), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["problems"]

    tcga = real_data / "TCGA-CR-7395-01A-01-TS1-crop.svs"
    assert main(["extract", str(tcga), "--out", str(store), "--set", "weak"]) == 2
    assert "--slide-mpp" in capsys.readouterr().err
    code = main(
        [
            "extract",
            str(tcga),
            "--out",
            str(store),
            "--set",
            "weak",
            "--slide-mpp",
            "0.25",
            "--patch-size",
            "256",
            "--magnification",
            "5",
            "--json",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["status"] == "complete" and summary["n_patches"] >= 1
    for broken in ("openslide-unreadable.svs", "histolab-broken.svs"):
        assert main(["extract", str(real_data / broken), "--out", str(store), "--set", "weak"]) == 2
        assert broken in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nowhere.zarr"), "--remove-leftovers"]) == 2
    assert not (tmp_path / "nowhere.zarr").exists()


def test_cli_help_lists_every_option_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # help wraps lines
    for option in (
        "--annotations",
        "--label-map",
        "--mpp",
        "--magnification",
        "--patch-size",
        "--fraction",
        "--seed",
        "--min-tissue",
        "--cover",
        "--slide-id",
        "--backend",
        "--slide-mpp",
        "--qc",
        "--overwrite",
    ):
        assert option in text
    # Flags and their defaults come from ExtractionConfig's fields, as every command's do.
    assert "(default 512)" in text and "(default 1/3)" in text and "(default 0.5)" in text


def test_a_failed_extract_into_a_new_store_leaves_nothing(slide_no_mpp: Path, tmp_path: Path) -> None:
    store = tmp_path / "new.zarr"
    with pytest.raises(MissingMppError):
        extract_slide(slide_no_mpp, store, weak())
    with pytest.raises(ConfigError):
        extract_slide(slide_no_mpp, store, ExtractionConfig(set="hard", patch_size=P))
    assert not store.exists()
