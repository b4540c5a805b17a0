"""Manifests (reading, whole-file validation, building) and batch settings; no cluster here."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from wsi_tools.batch.manifest import build_manifest, read_manifest
from wsi_tools.batch.settings import default_settings, load_settings
from wsi_tools.cli import main
from wsi_tools.errors import ConfigError
from wsi_tools.store import sanitize_slide_id

REPO = Path(__file__).resolve().parents[1]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def test_reads_rows_resolving_paths_against_the_manifest_folder(tmp_path: Path) -> None:
    touch(tmp_path / "slides" / "case 1.svs")
    touch(tmp_path / "slides" / "case 1.xml")
    touch(tmp_path / "weak" / "w1.tif")
    manifest = write_csv(
        tmp_path / "m.csv",
        """
slide_path,set,annotation_path,slide_id,mpp,split
# a comment line
slides/case 1.svs,hard,slides/case 1.xml,,,train

weak/w1.tif,WEAK,,custom-id,0.25,
""",
    )
    result = read_manifest(manifest)
    assert [entry.line for entry in result.entries] == [3, 5]
    hard, weak = result.entries
    assert hard.slide_path == tmp_path / "slides" / "case 1.svs"
    assert hard.annotation_path == tmp_path / "slides" / "case 1.xml"
    assert hard.set == "hard" and hard.mpp is None and hard.split == "train"
    assert hard.slide_id == sanitize_slide_id("case 1")  # the stem, sanitised
    assert weak.set == "weak" and weak.slide_id == "custom-id" and weak.mpp == 0.25
    assert weak.annotation_path is None
    assert result.splits() == {hard.slide_id: "train"}


def test_every_problem_is_reported_at_once_with_line_numbers(tmp_path: Path) -> None:
    touch(tmp_path / "a.svs")
    touch(tmp_path / "a.xml")
    touch(tmp_path / "b.svs")
    touch(tmp_path / "sub" / "a.svs")
    manifest = write_csv(
        tmp_path / "m.csv",
        """
slide_path,set,annotation_path,slide_id,mpp,split
a.svs,hard,a.xml,,,
missing.svs,weak,,,,
b.svs,hard,,,,
b.svs,strong,,b2,,
sub/a.svs,weak,,,,
b.svs,weak,,B3,zero,
b.svs,weak,,b3,,
b.svs,hard,nope.xml,b4,,holdout
""",
    )
    with pytest.raises(ConfigError) as caught:
        read_manifest(manifest)
    message = str(caught.value)
    assert str(manifest) in message and "nothing was processed" in message
    expected = [
        "line 3: slide file not found",
        "line 4: set hard needs an annotation_path",
        "line 5: unknown set 'strong'",
        "line 6: duplicate slide id 'a' (line 2",
        "line 7: bad mpp 'zero'",
        "line 8: duplicate slide id 'b3' (line 7 has 'B3')",
        "line 9: annotation file not found",
        "line 9: unknown split 'holdout'",
    ]
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert "line 2:" not in message  # the good row is not blamed
    assert f"{len(expected)} problem(s)" in message


def test_slide_ids_are_sanitised_before_the_duplicate_check(tmp_path: Path) -> None:
    touch(tmp_path / "x.svs")
    touch(tmp_path / "y.svs")
    raw = "../evil/id"
    manifest = write_csv(
        tmp_path / "m.csv",
        f"slide_path,set,slide_id\nx.svs,weak,{raw}\ny.svs,weak,{sanitize_slide_id(raw)}\n",
    )
    with pytest.raises(ConfigError, match="line 3: duplicate slide id"):
        read_manifest(manifest)
    touch(tmp_path / "z.svs")
    write_csv(tmp_path / "one.csv", f"slide_path,set,slide_id\nz.svs,weak,{raw}\n")
    (entry,) = read_manifest(tmp_path / "one.csv").entries
    assert "/" not in entry.slide_id and ".." not in entry.slide_id


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("slide_path,annotation_path\nx.svs,\n", "missing column(s) set"),
        ("slide_path,set,anotation_path\nx.svs,weak,\n", "unknown column(s) 'anotation_path'"),
        ("slide_path,set\n", "no slide rows"),
        ("", "the manifest is empty"),
    ],
)
def test_header_and_empty_manifest_errors(tmp_path: Path, text: str, fragment: str) -> None:
    manifest = write_csv(tmp_path / "m.csv", text)
    with pytest.raises(ConfigError, match="m.csv") as caught:
        read_manifest(manifest)
    assert fragment in str(caught.value)


def test_a_missing_manifest_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="wsi-tools manifest"):
        read_manifest(tmp_path / "nope.csv")


def test_build_manifest_from_folders(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    touch(archive / "p1.svs")
    touch(archive / "p1.xml")
    touch(archive / "deep" / "p2.tiff")
    touch(archive / "deep" / "p2.xml")
    touch(archive / "lonely.svs")  # no XML: skipped with a reason
    touch(archive / "notes.txt")
    weak = tmp_path / "weak"
    touch(weak / "w1.svs")
    touch(weak / "p1.svs")  # same stem as a hard slide: ids made unique
    for other in ("h.ndpi", "m.mrxs", "l.scn", "v.bif"):  # every format the backends open
        touch(weak / other)
    out = tmp_path / "lists" / "manifest.csv"
    built = build_manifest(archive, out, weak_dir=weak)
    assert (built.n_hard, built.n_weak) == (2, 6)
    assert len(built.skipped) == 1 and "lonely.svs" in built.skipped[0]
    rows = list(csv.DictReader(out.open()))
    assert all(not Path(row["slide_path"]).is_absolute() for row in rows)  # portable
    manifest = read_manifest(out)
    by_path = {entry.slide_path: entry for entry in manifest.entries}
    assert by_path[archive / "p1.svs"].set == "hard"
    assert by_path[archive / "p1.svs"].annotation_path == archive / "p1.xml"
    assert by_path[archive / "deep" / "p2.tiff"].slide_id == "p2"
    assert by_path[weak / "w1.svs"].set == "weak" and by_path[weak / "w1.svs"].annotation_path is None
    assert by_path[weak / "h.ndpi"].set == "weak" and by_path[weak / "m.mrxs"].slide_id == "m"
    ids = [entry.slide_id for entry in manifest.entries]
    assert len(set(ids)) == len(ids) == 8


def test_build_manifest_without_slides_fails(tmp_path: Path) -> None:
    touch(tmp_path / "only.svs")
    with pytest.raises(ConfigError, match="--weak-dir"):
        build_manifest(tmp_path, tmp_path / "m.csv")


def test_manifest_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    touch(tmp_path / "a.svs")
    touch(tmp_path / "a.xml")
    touch(tmp_path / "b.svs")
    assert main(["manifest", str(tmp_path), "--out", str(tmp_path / "m.csv")]) == 0
    captured = capsys.readouterr()
    assert "1 hard, 0 weak, 1 skipped" in captured.out
    assert "warning: skipped" in captured.err and "b.svs" in captured.err
    assert main(["manifest", str(tmp_path / "none"), "--out", str(tmp_path / "m2.csv")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_batch_cli_rejects_a_bad_manifest_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_csv(tmp_path / "m.csv", "slide_path,set\nmissing.svs,weak\nalso-missing.svs,weird\n")
    store = tmp_path / "store.zarr"
    assert main(["batch", str(manifest), "--out", str(store)]) == 2
    err = capsys.readouterr().err
    assert "line 2: slide file not found" in err and "line 3: unknown set 'weird'" in err
    assert not store.exists()


def test_batch_help_explains_options_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    text = capsys.readouterr().out
    for option in ("--workers", "--scheduler", "--timeout", "--retries", "--config", "--mpp", "--fraction"):
        assert option in text
    assert "default" in text and "Exit status" in text


def test_the_shipped_config_holds_the_built_in_defaults() -> None:
    assert load_settings(REPO / "configs" / "extract.yaml") == default_settings()
    text = (REPO / "configs" / "extract.yaml").read_text()
    for key in default_settings():
        assert f"\n{key}:" in text  # every key written out and documented


def test_flags_override_the_config(tmp_path: Path) -> None:
    config = write_csv(tmp_path / "c.yaml", "patch_size: 256\nmagnification: 10\nfraction: 1/2\n")
    settings = load_settings(config, {"patch_size": 128, "seed": None, "compression": "compact"})
    assert settings["patch_size"] == 128  # the flag wins
    assert settings["compression"] == "compact"
    assert settings["target_mpp"] == pytest.approx(1.0)  # ×10
    assert settings["fraction"] == 0.5
    assert settings["seed"] == default_settings()["seed"]  # an unset flag keeps the config


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("patch_sise: 256\n", "unknown key 'patch_sise'"),
        # One error format for every config: the key, the value, then what is wrong.
        ("patch_size: big\n", "'patch_size': 'big' (expected an integer)"),
        ("fraction: 2\n", "'fraction': 2.0 (must be in (0, 1])"),
        ("compression: tiny\n", "'compression': 'tiny' (must be one of fast, compact)"),
        ("set: hard\n", "set per slide in the manifest"),
        ("target_mpp: 2\nmagnification: 5\n", "not both"),
        ("backend: pillow\n", "'backend': 'pillow' (must be one of"),
        ("- a list\n", "must be a mapping"),
        ("label_map: missing.yaml\n", "label_map 'missing.yaml': missing.yaml: no such label map"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, fragment: str) -> None:
    config = write_csv(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert fragment in str(caught.value) and "bad.yaml" in str(caught.value)


def test_a_manifest_with_thousands_of_bad_rows_is_one_short_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest with 10^5 bad rows printed a 100,002-line error."""
    rows = "".join(f"/nowhere/s{i}.svs,weak\n" for i in range(5000))
    manifest = write_csv(tmp_path / "big.csv", "slide_path,set\n" + rows)
    assert main(["batch", str(manifest), "--out", str(tmp_path / "s.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 3000
    assert "5000 problem(s)" in err and "and 4980 more, all listed in " in err
    listing = Path(err.split("all listed in ")[1].split(". Fix")[0])
    assert len(listing.read_text().splitlines()) == 5001  # a header line, then every problem
    listing.unlink()
