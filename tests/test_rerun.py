"""A rerun skips a slide only when it would write the same thing: the same slide
file, the same annotation file and the same output-changing settings. Anything
else under an existing slide id is refused, naming what changed, because
skipping would keep the old result under the new inputs' name. And results that
cannot mean much (no patch, an annotation file for another slide) say so."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from shapely.geometry import box

from wsi_tools.annotations import Annotation, write_asap_xml
from wsi_tools.cli import main
from wsi_tools.testing.synth import synthetic_tissue, write_aperio_svs

FLAGS = ["--mpp", "2.0", "--patch-size", "64"]


def _xml(path: Path, *regions: tuple[str, int, int, int]) -> Path:
    return write_asap_xml(
        [
            Annotation(f"r{i}", "polygon", group, (group,), box(x, y, x + size, y + size))
            for i, (group, x, y, size) in enumerate(regions)
        ],
        path,
    )


@pytest.fixture()
def inputs(tmp_path: Path, slide_x20: Path) -> dict[str, Path]:
    slide = tmp_path / "case.svs"
    shutil.copy(slide_x20, slide)
    return {
        "slide": slide,
        "xml": _xml(tmp_path / "case.xml", ("LI_positive", 1000, 1000, 200), ("LI_negative", 2400, 300, 100)),
        "store": tmp_path / "store.zarr",
    }


def _extract(inputs: dict[str, Path], *extra: str, slide: Path | None = None, xml: Path | None = None) -> int:
    return main(
        [
            "extract",
            str(slide or inputs["slide"]),
            "--out",
            str(inputs["store"]),
            "--set",
            "hard",
            "--annotations",
            str(xml or inputs["xml"]),
            "--slide-id",
            "case",
            *FLAGS,
            *extra,
        ]
    )


def _files(store: Path) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in (store / "slides").rglob("*")}


def test_the_same_inputs_are_skipped_without_a_rate(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _extract(inputs) == 0
    capsys.readouterr()
    before = _files(inputs["store"])
    assert _extract(inputs) == 0
    out = capsys.readouterr().out
    assert "skipped (already complete from the same inputs" in out and "/s)" not in out
    assert _files(inputs["store"]) == before


def test_another_slide_file_under_the_same_id_is_refused(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _extract(inputs) == 0
    before = _files(inputs["store"])
    other = write_aperio_svs(
        tmp_path / "other.svs", synthetic_tissue(3072, 2560, seed=77), mpp=0.5, app_mag=20
    )
    capsys.readouterr()
    assert _extract(inputs, slide=other) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'case' is already in the store" in err and "the slide file" in err and str(other) in err
    assert "--overwrite" in err and "another id" in err
    assert _files(inputs["store"]) == before
    assert _extract(inputs, "--overwrite", slide=other) == 0  # the way out named in the error


def test_a_corrected_annotation_file_is_refused_until_overwrite(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _extract(inputs) == 0
    corrected = _xml(
        tmp_path / "fixed.xml", ("LI_positive", 1010, 1000, 200), ("LI_negative", 2400, 300, 100)
    )
    capsys.readouterr()
    assert _extract(inputs, xml=corrected) == 2
    err = capsys.readouterr().err
    assert "the annotation file" in err and str(corrected) in err
    # The same bytes under another path are the same annotations: skipped.
    shutil.copy(inputs["xml"], tmp_path / "copy.xml")
    assert _extract(inputs, xml=tmp_path / "copy.xml") == 0


def test_a_changed_setting_is_refused(inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert _extract(inputs) == 0
    capsys.readouterr()
    assert _extract(inputs, "--compression", "compact") == 2
    assert "compression 'fast' (now 'compact')" in capsys.readouterr().err
    assert _extract(inputs, "--threads", "3") == 0  # how fast, not what: never compared


def test_a_sanitised_slide_id_is_named(inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "extract",
            str(inputs["slide"]),
            "--out",
            str(inputs["store"]),
            "--set",
            "weak",
            "--slide-id",
            "ward/case",
            *FLAGS,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and captured.out.startswith("ward_case: extracted")
    assert "slide id 'ward/case' is stored as 'ward_case'" in captured.err


def test_an_annotation_file_of_another_slide_is_refused(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Drawn on a bigger slide: two of three regions lie beyond this one's 3072 x 2560 px.
    xml = _xml(
        tmp_path / "other.xml",
        ("LI_positive", 1000, 1000, 200),
        ("LI_negative", 9000, 9000, 100),
        ("LI_positive", 12000, 4000, 100),
    )
    assert _extract(inputs, xml=xml) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(xml) in err and str(inputs["slide"]) in err and "2 of 3" in err
    assert not inputs["store"].exists()  # nothing half-written


def test_no_patch_kept_is_a_warning_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 100 x 100 px at 0.5 µm/px is smaller than one 64 px window at 2 µm/px (256 level-0 px).
    small = write_aperio_svs(tmp_path / "small.svs", synthetic_tissue(100, 100, seed=5), mpp=0.5, app_mag=20)
    code = main(["extract", str(small), "--out", str(tmp_path / "s.zarr"), "--set", "weak", *FLAGS])
    captured = capsys.readouterr()
    assert code == 0 and "extracted 0 patches" in captured.out
    assert "no patch was kept (the slide is smaller than one window" in captured.err


def test_a_batch_slide_without_patches_is_its_own_warning(tmp_path: Path) -> None:
    from wsi_tools.batch.engine import BatchOptions, run_batch
    from wsi_tools.batch.report import report_markdown
    from wsi_tools.batch.settings import load_settings

    small = write_aperio_svs(tmp_path / "small.svs", synthetic_tissue(100, 100, seed=5), mpp=0.5, app_mag=20)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_path,set\n{small},weak\n", encoding="utf-8")
    settings = load_settings(None, {"target_mpp": 2.0, "patch_size": 64})
    report = run_batch(manifest, tmp_path / "s.zarr", settings, BatchOptions(workers=1, progress=False))
    assert report.exit_code == 0 and report.totals["slides_without_patches"] == 1
    assert any("small: kept no patch (the slide is smaller" in warning for warning in report.warnings)
    assert "kept no patch" in report_markdown(report)
