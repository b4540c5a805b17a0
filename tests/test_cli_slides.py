"""``wsi-tools info`` and ``wsi-tools tissue`` through the CLI entry point."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import Point, box

from wsi_tools.annotations import Annotation, write_asap_xml
from wsi_tools.cli import build_parser, main
from wsi_tools.testing.synth import synthetic_tissue, write_aperio_svs

CMU = "CMU-1-Small-Region.svs"
TCGA = "TCGA-CR-7395-01A-01-TS1-crop.svs"


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_info_text_on_cmu(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "info", real_data / CMU)
    assert code == 0 and err == ""
    assert re.search(r"mpp\s+0\.499 x 0\.499 µm/px", out)
    assert re.search(r"dimensions\s+2220 x 2967 px", out)
    assert re.search(r"objective\s+20x", out)
    assert re.search(r"backend\s+tiffslide", out) and re.search(r"vendor\s+aperio", out)
    assert re.search(r"fingerprint\s+\d+-[0-9a-f]{64}", out)


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_info_json_on_cmu(real_data: Path, capsys: pytest.CaptureFixture[str], backend: str) -> None:
    code, out, _ = run(capsys, "info", real_data / CMU, "--json", "--backend", backend)
    assert code == 0
    info = json.loads(out)  # exactly one JSON object
    assert info["mpp"] == {"x": 0.499, "y": 0.499}
    assert info["dimensions"] == [2220, 2967] and info["level_count"] == 1
    assert info["objective_power"] == 20 and info["vendor"] == "aperio" and info["backend"] == backend
    assert info["levels"] == [{"level": 0, "width": 2220, "height": 2967, "downsample": 1.0, "mpp": 0.499}]


def test_info_on_tcga_without_mpp(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "info", real_data / TCGA, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["mpp"] is None and info["mpp_source"] is None and info["objective_power"] is None
    assert [level["width"] for level in info["levels"]] == [4443, 2221]
    code, out, _ = run(capsys, "info", real_data / TCGA)
    assert code == 0 and "--slide-mpp" in out and "null" in out
    code, out, _ = run(capsys, "info", real_data / TCGA, "--json", "--slide-mpp", "0.25")
    info = json.loads(out)
    assert info["mpp"] == {"x": 0.25, "y": 0.25} and info["mpp_source"] == "override"
    assert info["levels"][1]["mpp"] == pytest.approx(0.50013, abs=1e-4)


def test_tcga_tissue_needs_mpp_then_works(
    real_data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_png = tmp_path / "tcga.png"
    code, out, err = run(capsys, "tissue", real_data / TCGA, "--out", out_png)
    assert code == 2 and out == "" and not out_png.exists()
    one_line_error(err, TCGA, "no microns-per-pixel", "--slide-mpp X")
    code, out, err = run(capsys, "tissue", real_data / TCGA, "--out", out_png, "--slide-mpp", "0.25")
    assert code == 0, err
    area = float(re.search(r"tissue: ([\d.]+) mm²", out).group(1))
    slide_mm2 = 4443 * 3567 * 0.25**2 / 1e6
    assert 0.3 * slide_mm2 < area < 0.9 * slide_mm2
    with Image.open(out_png) as picture:
        assert picture.size[0] >= 900


@pytest.mark.parametrize("command", ["info", "tissue"])
@pytest.mark.parametrize(
    ("name", "needle"),
    [("openslide-unreadable.svs", "cannot read level 0 region"), ("histolab-broken.svs", "cannot be opened")],
)
def test_bad_slides_exit_2_with_one_line(
    real_data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, name: str, needle: str
) -> None:
    extra = ["--out", tmp_path / "qc.png"] if command == "tissue" else []
    code, out, err = run(capsys, command, real_data / name, *extra)
    assert code == 2 and out == ""
    one_line_error(err, f"wsi-tools {command}: error:", name, needle)


def test_missing_file_and_bad_options_exit_2(
    real_data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "info", tmp_path / "nope.svs")
    assert code == 2
    one_line_error(err, "nope.svs", "no such slide file")
    code, _, err = run(capsys, "tissue", real_data / CMU, "--out", tmp_path / "x.png", "--mpp", "0")
    assert code == 2
    one_line_error(err, "--mpp must be a positive")
    code, _, err = run(capsys, "info", real_data / CMU, "--slide-mpp", "-2")
    assert code == 2
    one_line_error(err, "positive number of µm/px")


def test_tissue_with_annotations(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    slide = write_aperio_svs(tmp_path / "s.svs", synthetic_tissue(1536, 1280, seed=9), mpp=0.5, app_mag=20)
    xml = write_asap_xml(
        [
            Annotation("p", "polygon", "LI_positive", ("LI_positive",), box(200, 200, 700, 600)),
            Annotation("n", "polygon", "LI_negative", ("LI_negative",), box(900, 700, 1300, 1100)),
            Annotation("d", "dot", "LI_negative", ("LI_negative",), Point(400, 1000)),
        ],
        tmp_path / "s.xml",
    )
    out_png = tmp_path / "qc" / "s.png"
    code, out, err = run(capsys, "tissue", slide, "--out", out_png, "--annotations", xml, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["annotations"] == 3 and summary["regions"] >= 1
    assert 0.2 < summary["tissue_fraction"] < 0.8
    assert summary["tissue_area_mm2"] == pytest.approx(
        summary["tissue_fraction"] * 1536 * 1280 * 0.25 / 1e6, rel=1e-3
    )
    picture = np.asarray(Image.open(out_png).convert("RGB"))
    # Both group colours are on the picture (orange and purple from the QC palette).
    for rgb in ((0xF5, 0x82, 0x31), (0x91, 0x1E, 0xB4)):
        assert (np.abs(picture.astype(int) - rgb).max(axis=2) < 40).sum() > 30
    code, out, _ = run(capsys, "tissue", slide, "--out", out_png, "--annotations", tmp_path / "missing.xml")
    assert code == 2


def test_appmag_warning_is_printed_once(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    slide = write_aperio_svs(
        tmp_path / "odd.svs", synthetic_tissue(256, 256, seed=2), mpp=0.25, app_mag=20, downsamples=(1,)
    )
    code, out, err = run(capsys, "info", slide)
    assert code == 0 and err == ""
    assert out.count("warning: ") == 1 and "AppMag 20" in out


@pytest.mark.parametrize("command", ["info", "tissue"])
def test_help_explains_every_option(command: str) -> None:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    parser = subparsers.choices[command]
    help_text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and ("default" in action.help or "required" in action.help), action.dest
            assert action.option_strings[0] in help_text
