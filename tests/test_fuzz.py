"""A seeded fuzz suite: damaged annotation files (ASAP XML, QuPath GeoJSON), slides,
stores and checkpoints, bad manifests and option values.

Every case must end one of two ways: exit 0 with a correct result, or a clean
one-line error with exit 2 (``verify``: 1). Never a traceback, a hang (each case
runs under a time limit) or a wrong result. The mutations are drawn from fixed
seeds, so a failure names a case that reproduces.

What "correct" means per input:
- ASAP XML: the JSON summary is valid JSON (no NaN or Infinity) with finite,
  non-negative areas.
- slides: the patches equal those of the intact slide, unless a mutated byte
  lies inside a tile's JPEG data or the ImageDescription. TIFF has no checksum:
  a flip there can leave a valid file that says something else, which no reader
  can tell (docs/store.md and the README say so).
- stores: every slide's coords, labels, tissue fractions and patches equal the
  intact store's, or the reader refuses; ``verify`` passes only then.
- checkpoints: the weights load equal to the saved ones, or loading refuses.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from wsi_tools.cli import QUIET_LOGGERS, main
from wsi_tools.errors import WsiToolsError
from wsi_tools.store import PatchStore
from wsi_tools.testing.synth import synthetic_tissue, write_aperio_svs
from wsi_tools.testing.toy import write_toy_store

CASE_SECONDS = 20.0  # a hang shows as a case past this (the real cases take well under a second)
Mutation = Callable[[bytes, random.Random], tuple[bytes, list[int]]]


# --------------------------------------------------------------------------- mutations


def flip_bits(data: bytes, rng: random.Random, count: int = 1) -> tuple[bytes, list[int]]:
    out = bytearray(data)
    offsets = [rng.randrange(len(out)) for _ in range(count)]
    for offset in offsets:
        out[offset] ^= 1 << rng.randrange(8)
    return bytes(out), offsets


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, list[int]]:
    cut = rng.choice([rng.randrange(len(data)), int(len(data) * rng.choice([0.5, 0.9, 0.99, 0.999]))])
    return data[:cut], [cut]


def delete_span(data: bytes, rng: random.Random) -> tuple[bytes, list[int]]:
    start = rng.randrange(len(data))
    return data[:start] + data[start + rng.randint(1, 256) :], [start]


def duplicate_span(data: bytes, rng: random.Random) -> tuple[bytes, list[int]]:
    start = rng.randrange(len(data))
    span = data[start : start + rng.randint(1, 512)]
    return data[:start] + span + data[start:], [start]


def zero_span(data: bytes, rng: random.Random) -> tuple[bytes, list[int]]:
    start = rng.randrange(len(data))
    length = rng.choice([4, 64, 4096])
    out = bytearray(data)
    out[start : start + length] = bytes(len(out[start : start + length]))
    return bytes(out), list(range(start, min(len(data), start + length)))


def garbage(data: bytes, rng: random.Random) -> tuple[bytes, list[int]]:
    start = rng.randrange(len(data))
    noise = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return data[:start] + noise + data[start + len(noise) :], list(range(start, start + len(noise)))


XML_VALUES = ["nan", "inf", "-inf", "1e308", "-1e308", "", "abc", "1,5", "0x10", "1e-320", "9" * 400]


def xml_bad_number(data: bytes, rng: random.Random) -> tuple[bytes, list[int]]:
    numbers = list(re.finditer(rb'(?:X|Y|Order)="([^"]*)"', data))
    match = rng.choice(numbers)
    value = rng.choice(XML_VALUES).encode()
    return data[: match.start(1)] + value + data[match.end(1) :], [match.start(1)]


def xml_regroup(data: bytes, rng: random.Random) -> tuple[bytes, list[int]]:
    """Point a PartOfGroup at another group or itself (cycles, unknown groups)."""
    parts = list(re.finditer(rb'PartOfGroup="([^"]*)"', data))
    names = [m.group(1) for m in re.finditer(rb'<Group Name="([^"]*)"', data)] or [b"x"]
    match = rng.choice(parts)
    value = rng.choice([*names, b"", b"None", b"unknown group"])
    return data[: match.start(1)] + value + data[match.end(1) :], [match.start(1)]


def xml_drop_tag(data: bytes, rng: random.Random) -> tuple[bytes, list[int]]:
    tags = list(re.finditer(rb"</?[A-Za-z]+[^>]*>", data))
    match = rng.choice(tags)
    return data[: match.start()] + data[match.end() :], [match.start()]


XML_MUTATIONS: list[Mutation] = [
    flip_bits,
    lambda d, r: flip_bits(d, r, 16),
    truncate,
    delete_span,
    duplicate_span,
    garbage,
    xml_bad_number,
    xml_regroup,
    xml_drop_tag,
]


def _cases(n: int, seed: int, mutations: list[Mutation]) -> list[tuple[int, Mutation]]:
    rng = random.Random(seed)
    return [(case, rng.choice(mutations)) for case in range(n)]


def _one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{err[:2000]}"
    assert lines[0].startswith(f"wsi-tools {command}: error: "), lines[0]
    return lines[0]


def _library_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Messages the libraries underneath logged during a CLI call (tifffile logs a
    line per bad tag): on the CLI they must stay quiet unless --verbose."""
    found = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and record.name.split(".")[0] in QUIET_LOGGERS
    ]
    caplog.clear()
    return found


def _no_nan(text: str) -> None:
    raise AssertionError(f"JSON holds {text}")


# --------------------------------------------------------------------------- ASAP XML


def _fuzz_annotation_file(
    original: bytes,
    suffix: str,
    mutations: list[Mutation],
    seed: int,
    folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> dict[str, int]:
    """150 mutants of one annotation file through `wsi-tools annotations --json`."""
    outcomes = {"ok": 0, "error": 0}
    for case, mutate in _cases(150, seed=seed, mutations=mutations):
        data, _ = mutate(original, random.Random(case))
        path = folder / f"case{case}{suffix}"
        path.write_bytes(data)
        started = time.perf_counter()
        code = main(["annotations", str(path), "--json"])
        assert time.perf_counter() - started < CASE_SECONDS, f"case {case} took too long"
        captured = capsys.readouterr()
        if code == 0:
            summary = json.loads(captured.out, parse_constant=_no_nan)
            areas = [group["area_px2"] for group in summary["groups"].values()]
            assert all(np.isfinite(area) and area >= 0 for area in areas), f"case {case}: {areas}"
            outcomes["ok"] += 1
        else:
            assert code == 2, f"case {case}: exit {code}"
            assert path.name in _one_error_line(captured.err, "annotations"), f"case {case}"
            outcomes["error"] += 1
    return outcomes


@pytest.mark.parametrize("source", ["camelyon16-tumor_001.xml", "camelyon17-patient_004_node_4.xml"])
def test_mutated_real_asap_files(
    source: str, real_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = (real_data / source).read_bytes()
    outcomes = _fuzz_annotation_file(original, ".xml", XML_MUTATIONS, len(source), tmp_path, capsys)
    assert outcomes["ok"] > 10 and outcomes["error"] > 10, outcomes  # both paths were exercised


def geojson_bad_number(data: bytes, rng: random.Random) -> tuple[bytes, list[int]]:
    numbers = list(re.finditer(rb"-?\d+\.?\d*(?:e[+-]?\d+)?", data))
    match = rng.choice(numbers)
    value = rng.choice([b"NaN", b"Infinity", b"1e400", b"-1e308", b'"7"', b"null", b"[]", b"9" * 400])
    return data[: match.start()] + value + data[match.end() :], [match.start()]


def test_mutated_qupath_geojson(real_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same for GeoJSON: CAMELYON16's annotations written as a QuPath export, mutated."""
    from wsi_tools.annotations import read_asap_xml, write_qupath_geojson

    source = write_qupath_geojson(
        read_asap_xml(real_data / "camelyon16-tumor_001.xml").annotations, tmp_path / "c16.geojson"
    )
    mutations = [flip_bits, truncate, delete_span, duplicate_span, garbage, geojson_bad_number]
    outcomes = _fuzz_annotation_file(source.read_bytes(), ".geojson", mutations, 16, tmp_path, capsys)
    assert outcomes["ok"] > 10 and outcomes["error"] > 10, outcomes


# --------------------------------------------------------------------------- slides

SLIDE_FLAGS = ["--set", "weak", "--mpp", "1.0", "--patch-size", "64", "--fraction", "1", "--min-tissue", "0"]


@pytest.fixture(scope="module")
def intact_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, int]], dict]:
    """A small two-level SVS, where its bytes lie (tiles and descriptions), and its patches."""
    root = tmp_path_factory.mktemp("fuzz_slide")
    path = write_aperio_svs(
        root / "intact.svs", synthetic_tissue(1024, 768, seed=11), mpp=0.5, downsamples=(1, 4)
    )
    ranges = []
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            ranges += [
                (int(o), int(o) + int(c)) for o, c in zip(page.dataoffsets, page.databytecounts, strict=True)
            ]
            description = page.tags.get("ImageDescription")
            if description is not None:
                ranges.append(
                    (int(description.valueoffset), int(description.valueoffset) + description.count)
                )
    assert main(["extract", str(path), "--out", str(root / "intact.zarr"), *SLIDE_FLAGS]) == 0
    return path, ranges, _store_content(root / "intact.zarr")


def _store_content(store_path: Path) -> dict:
    store = PatchStore(store_path)
    content = {}
    for slide_id in store.slide_ids():
        n = store.n_patches(slide_id)
        content[slide_id] = (
            store.coords(slide_id).tolist(),
            store.labels(slide_id).tolist(),
            store.tissue_fraction(slide_id).tolist(),
            store.read_patches(slide_id, np.arange(n)).tobytes() if n else b"",
        )
    return content


SLIDE_MUTATIONS: list[Mutation] = [
    flip_bits,
    lambda d, r: flip_bits(d, r, 8),
    truncate,
    zero_span,
    garbage,
    delete_span,
]


def test_damaged_slides_extract_right_or_fail_cleanly(
    intact_slide: tuple[Path, list[tuple[int, int]], dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path, pixel_ranges, reference = intact_slide
    original = path.read_bytes()
    outcomes = {"same": 0, "error": 0, "undetectable": 0}
    for case, mutate in _cases(150, seed=7, mutations=SLIDE_MUTATIONS):
        data, offsets = mutate(original, random.Random(1000 + case))
        slide = tmp_path / f"case{case}.svs"
        slide.write_bytes(data)
        store = tmp_path / f"case{case}.zarr"
        started = time.perf_counter()
        code = main(["extract", str(slide), "--out", str(store), "--slide-id", "intact", *SLIDE_FLAGS])
        assert time.perf_counter() - started < CASE_SECONDS, f"case {case} took too long"
        captured = capsys.readouterr()
        assert not _library_logs(caplog), f"case {case}: library log lines on the CLI"
        if code != 0:
            assert code == 2, f"case {case}: exit {code}"
            assert slide.name in _one_error_line(captured.err, "extract"), f"case {case}"
            assert not store.exists(), f"case {case}: a failed extraction left {store}"
            outcomes["error"] += 1
        elif _store_content(store) == reference:
            outcomes["same"] += 1
        else:
            inside = any(start <= offset < end for offset in offsets for start, end in pixel_ranges)
            assert inside, (
                f"case {case}: wrong patches with exit 0 after damage at {offsets[:4]} outside any tile"
            )
            outcomes["undetectable"] += 1
        shutil.rmtree(store, ignore_errors=True)
        slide.unlink()
    print("slide fuzz outcomes:", outcomes)
    assert outcomes["error"] > 5 and outcomes["same"] + outcomes["undetectable"] > 5, outcomes


# --------------------------------------------------------------------------- stores


@pytest.fixture(scope="module")
def intact_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("fuzz_store") / "store.zarr"
    write_toy_store(path, [("a", "hard", 20, 6), ("b", "hard", 12, 0), ("w", "weak", 9, 0)], patch_size=32)
    return path, _store_content(path)


STORE_DAMAGE = ("delete", "truncate", "flip", "empty", "garbage")


def _damage_file(path: Path, how: str, rng: random.Random) -> None:
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "empty" or not data:
        path.write_bytes(b"")
    elif how == "truncate":
        path.write_bytes(data[: rng.randrange(len(data))])
    elif how == "flip":
        path.write_bytes(flip_bits(data, rng, rng.choice([1, 4]))[0])
    else:
        path.write_bytes(garbage(data, rng)[0])


def test_damaged_stores_read_right_or_are_refused(
    intact_store: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, reference = intact_store
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    outcomes = {"same": 0, "refused": 0}
    rng = random.Random(3)
    for case in range(150):
        store = tmp_path / f"case{case}.zarr"
        shutil.copytree(source, store)
        target, how = rng.choice(files), rng.choice(STORE_DAMAGE)
        _damage_file(store / target, how, random.Random(case))
        label = f"case {case}: {how} {target}"
        started = time.perf_counter()
        try:
            content = _store_content(store)
        except WsiToolsError:
            content = None
        verified = main(["verify", str(store)])
        exported = main(["export", str(store), "--out", str(tmp_path / f"png{case}")])
        assert time.perf_counter() - started < CASE_SECONDS, label
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, label
        if content == reference:
            outcomes["same"] += 1
            assert exported == 0, label
        else:
            # Readers refuse, verify says so, export writes nothing and says why in one line.
            assert content is None, f"{label}: a reader returned other data"
            assert verified in (1, 2), f"{label}: verify passed a damaged store"
            assert exported == 2, label
            assert not (tmp_path / f"png{case}" / "metadata.csv").exists(), label
            outcomes["refused"] += 1
        shutil.rmtree(store, ignore_errors=True)
    print("store fuzz outcomes:", outcomes)
    assert outcomes["refused"] > 10, outcomes


def test_training_on_a_damaged_store_refuses_what_it_would_read(
    intact_store: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train read damaged stores with KeyError, ArrayNotFoundError, a checksum ValueError
    or IndexError tracebacks. Now: damage to what training reads is one line and exit
    2; exit 0 only when the slides it trains on read back intact."""
    source, reference = intact_store
    hard_files = sorted(p.relative_to(source) for p in (source / "slides").glob("[ab]/**/*") if p.is_file())
    rng = random.Random(8)
    quick = ["epochs=1", "input_size=32", "batch_size=8", "num_workers=0", "bootstrap=0", "augment=false"]
    quick += ["split_ratios=[1, 1, 1]", "allow_empty_splits=true", "progress=false"]
    for case in range(12):
        store = tmp_path / f"case{case}.zarr"
        shutil.copytree(source, store)
        target, how = rng.choice(hard_files), rng.choice(STORE_DAMAGE)
        _damage_file(store / target, how, random.Random(case))
        args = ["train", "--store", str(store), "--out", str(tmp_path / f"run{case}"), "--no-progress"]
        code = main([*args, *(arg for item in quick for arg in ("--set", item))])
        captured = capsys.readouterr()
        label = f"case {case}: {how} {target}"
        if code == 0:  # what training reads (labels and pixels) must read back intact
            opened = PatchStore(store)
            for slide in ("a", "b"):
                labels, _, _, pixels = reference[slide][1], None, None, reference[slide][3]
                n = opened.n_patches(slide)
                assert opened.labels(slide).tolist() == labels, f"{label}: trained on damaged labels"
                assert opened.read_patches(slide, np.arange(n)).tobytes() == pixels, (
                    f"{label}: damaged pixels"
                )
        else:
            assert code == 2, f"{label}: exit {code}"
            errors = [line for line in captured.err.splitlines() if line.startswith("wsi-tools train:")]
            assert len(errors) == 1 and "error: " in errors[0] and str(store) in errors[0], label
            assert "Traceback" not in captured.err, label
        shutil.rmtree(store, ignore_errors=True)


# --------------------------------------------------------------------------- checkpoints


def test_tampered_checkpoints_load_equal_or_are_refused(tmp_path: Path) -> None:
    from wsi_tools.train.checkpoint import Checkpoint, read_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = {
        "conv.weight": torch.randn(16, 3, 3, 3),
        "fc.weight": torch.randn(1, 64),
        "fc.bias": torch.zeros(1),
    }
    path = tmp_path / "best.pt"
    save_checkpoint(path, Checkpoint(config={"seed": 0}, model=model, splits={"s": "train"}))
    original = path.read_bytes()
    outcomes = {"same": 0, "refused": 0}
    for case, mutate in _cases(
        60, seed=5, mutations=[flip_bits, lambda d, r: flip_bits(d, r, 32), truncate, garbage]
    ):
        damaged = tmp_path / f"case{case}.pt"
        damaged.write_bytes(mutate(original, random.Random(case))[0])
        try:
            loaded = read_checkpoint(damaged)["model"]
        except WsiToolsError:
            outcomes["refused"] += 1
            continue
        assert set(loaded) == set(model) and all(torch.equal(loaded[k], model[k]) for k in model), (
            f"case {case}"
        )
        outcomes["same"] += 1
    assert outcomes["refused"] > 10, outcomes


# --------------------------------------------------------------------------- manifests and options

BAD_CELLS = {
    "set": ["", "Hard", "strong", "hard;weak"],
    "mpp": ["nan", "-1", "0", "1e400", "abc", "inf"],
    "slide_id": ["..", "." * 300, "/"],
    "split": ["training", "1", "validation"],
}


def test_bad_manifests_are_one_bounded_line_and_nothing_runs(
    intact_slide: tuple[Path, list[tuple[int, int]], dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slide = intact_slide[0]
    rng = random.Random(11)
    for case in range(40):
        rows = [
            {"slide_path": str(slide), "set": "weak", "slide_id": f"s{i}"} for i in range(rng.randint(1, 30))
        ]
        for row in rng.sample(rows, rng.randint(1, len(rows))):  # at least one bad row: nothing may run
            column = rng.choice([*BAD_CELLS, "slide_path", "annotation_path"])
            if column == "slide_path":
                row["slide_path"] = rng.choice(["", str(tmp_path / "missing.svs"), str(tmp_path)])
            elif column == "annotation_path":
                row.update(set="hard", annotation_path=rng.choice(["", str(tmp_path / "missing.xml")]))
            else:
                row[column] = rng.choice(BAD_CELLS[column])
        if rng.random() < 0.2:
            rows.append(dict(rows[0]))  # a duplicate id
        manifest = tmp_path / f"m{case}.csv"
        with manifest.open("w", newline="", encoding="utf-8") as handle:
            columns = ["slide_path", "set", "annotation_path", "slide_id", "mpp", "split"]
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        store = tmp_path / f"s{case}.zarr"
        code = main(["batch", str(manifest), "--out", str(store), "--workers", "1", "--no-progress"])
        line = _one_error_line(capsys.readouterr().err, "batch")
        assert code == 2 and manifest.name in line and len(line) < 5000, f"case {case}: {line[:300]}"
        assert not store.exists(), f"case {case}"


SET_VALUES = [
    ".nan",
    "-1",
    "0",
    "1e400",
    "18446744073709551616",
    "[1, 2]",
    "{a: 1}",
    "''",
    "abc",
    "true",
    "20000",
]


def test_bad_option_values_are_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsi_tools.train.config import TrainConfig

    keys = [name for name in TrainConfig().to_dict() if name not in ("store", "out")]
    rng = random.Random(2)
    for case in range(80):
        key, value = rng.choice(keys), rng.choice(SET_VALUES)
        for command, prefix in (("train", ""), ("run", "train.")):
            args = [command, "--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "r")]
            code = main([*args, "--set", f"{prefix}{key}={value}", "--print-config"])
            captured = capsys.readouterr()
            label = f"case {case}: {command} --set {prefix}{key}={value}"
            if code == 0:
                import yaml

                assert yaml.safe_load(captured.out), label
            else:
                assert code == 2, label
                assert f"'{prefix}{key}'" in _one_error_line(captured.err, command), label
