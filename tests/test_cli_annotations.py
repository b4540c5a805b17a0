"""``wsi-tools annotations``: summaries, JSON, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsi_tools.cli import main

CAMELYON17 = "camelyon17-patient_004_node_4.xml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["annotations", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_text_summary_with_a_matching_map(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, str(real_data / CAMELYON17), "--label-map", "camelyon")
    assert code == 0 and err == ""
    assert "3 annotation(s) in 1 group(s)" in out
    group_row = next(line for line in out.splitlines() if line.strip().startswith("Tumor"))
    assert group_row.split()[:2] == ["Tumor", "3"] and "polygon 3" in group_row
    label_row = next(line for line in out.splitlines() if line.strip().startswith("label 1"))
    assert label_row.split()[2] == "3" and label_row.split()[3] == group_row.split()[2]  # same area
    assert "camelyon.yaml" in out and "Warnings: none" in out and "note:" not in out


def test_json_is_one_object(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(real_data / CAMELYON17), "--json")
    assert code == 0 and len(out.strip().splitlines()) == 1
    summary = json.loads(out)
    assert summary["annotations"] == 3
    assert summary["groups"]["Tumor"]["count"] == 3 and summary["groups"]["Tumor"]["area_px2"] > 0
    # The default map does not know "Tumor": listed, not fatal.
    assert summary["label_map"].endswith("lymphatic_invasion.yaml")
    assert summary["labels"] == {
        "0": {"count": 0, "area_px2": 0.0, "groups": []},
        "1": {"count": 0, "area_px2": 0.0, "groups": []},
    }
    assert summary["unknown_groups"] == ["Tumor"] and summary["unlabelled"]["count"] == 3
    assert summary["unknown_groups_ignored"] is False


def test_unknown_groups_get_a_note(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(real_data / CAMELYON17))
    assert code == 0
    assert "note: groups unknown to the map: Tumor; extraction refuses them" in out
    code, out, _ = run(capsys, str(real_data / CAMELYON17), "--ignore-unknown")
    assert code == 0 and "note: groups unknown to the map are ignored: Tumor" in out


def test_repair_warning_is_printed(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(real_data / "camelyon16-tumor_001.xml"), "--label-map", "camelyon")
    assert code == 0
    assert "Warnings (1)" in out and "'Annotation 1'" in out and "make_valid" in out


def test_slide_option_reports_annotations_outside(
    real_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # CAMELYON17 coordinates lie far outside the 2220x2967 CMU region.
    code, out, _ = run(
        capsys, str(real_data / CAMELYON17), "--json", "--slide", str(real_data / "CMU-1-Small-Region.svs")
    )
    assert code == 0
    warnings = json.loads(out)["warnings"]
    assert len(warnings) == 3 and all("entirely outside the slide (2220x2967 px)" in w for w in warnings)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '<?xml version="1.0"?>\n<ASAP_Annotations>\n<Annotations>\n</ASAP_Annotations>\n',
            "malformed XML at line 4",
        ),
        ('<!DOCTYPE a [<!ENTITY x "y">]><ASAP_Annotations/>', "declares XML entities"),
    ],
)
def test_bad_xml_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "bad annotations.xml"
    path.write_text(content)
    code, out, err = run(capsys, str(path))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("wsi-tools annotations: error: ") and str(path) in err and message in err


def test_bad_label_map_exits_2(real_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    label_map = tmp_path / "map.yaml"
    label_map.write_text("labels: {Tumor: yes}\n")
    code, _, err = run(capsys, str(real_data / CAMELYON17), "--label-map", str(label_map))
    assert code == 2 and str(label_map) in err and "must be an integer" in err


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["annotations", "--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    for option in ("--json", "--label-map", "--ignore-unknown", "--slide"):
        assert option in text
    assert text.count("(default") >= 4 and "lymphatic_invasion.yaml" in text


def test_a_closed_pipe_is_a_quiet_exit_not_a_traceback(real_data: Path) -> None:
    """`wsi-tools annotations X --json | head -c 10`: the reader goes away mid-output."""
    import subprocess
    import sys

    code = "import sys; from wsi_tools.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [
        sys.executable,
        "-c",
        code,
        "annotations",
        str(real_data / "camelyon16-tumor_001.xml"),
        "--json",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # nobody reads: the first write fails with EPIPE
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141 and "Traceback" not in err, err
