"""A damaged store is refused, never read as something else (issue 13).

zarr fills a missing chunk with the fill value: a deleted ``labels`` chunk
would read as all-negative and a deleted ``coords`` chunk as 0-0 everywhere.
A damaged slide ``zarr.json`` must not make a slide quietly disappear.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsi_tools.cli import main
from wsi_tools.errors import StoreError
from wsi_tools.store import PatchStore

P = 32


def _write(store: PatchStore, slide_id: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    writer = store.begin_slide(slide_id, n, P, {"set": "hard"}, patches_per_shard=4)
    writer.write(
        0,
        rng.integers(0, 255, (n, P, P, 3), dtype=np.uint8),
        rng.integers(0, 10_000, (n, 2)).astype(np.int64),
        ((np.arange(n) + seed) % 2).astype(np.int8),
        rng.random(n).astype(np.float32),
    )
    writer.commit({"counts": {"kept": n}})


@pytest.fixture()
def store_path(tmp_path: Path) -> Path:
    store = PatchStore(tmp_path / "s.zarr", mode="a")
    _write(store, "a", 6, seed=1)
    _write(store, "b", 6, seed=2)
    return store.path


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("wsi-tools")]
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize("array", ["labels", "coords", "tissue_fraction"])
def test_a_deleted_small_array_chunk_is_refused_everywhere(
    store_path: Path, array: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chunk = next((store_path / "slides/a" / array / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.unlink()
    store = PatchStore(store_path)
    getter = getattr(store, array)
    with pytest.raises(StoreError, match=rf"slide 'a', array '{array}': chunk c/0 is missing"):
        getter("a")
    assert getattr(store, array)("b").shape[0] == 6  # the other slide still reads

    report = store.verify()
    assert not report.ok
    assert any(f"slides/a/{array}" in problem and "missing" in problem for problem in report.problems)
    assert main(["verify", str(store_path)]) == 1
    capsys.readouterr()

    assert main(["export", str(store_path), "--out", str(tmp_path / "png")]) == 2
    assert "chunk c/0 is missing" in _one_line_error(capsys)


def test_a_chunk_swapped_in_from_another_slide_is_refused(store_path: Path) -> None:
    # Same size, valid crc and zstd: only the digest written at commit can tell.
    target = store_path / "slides/a/labels/c/0"
    target.write_bytes((store_path / "slides/b/labels/c/0").read_bytes())
    meta = json.loads((store_path / "slides/a/zarr.json").read_text())
    assert set(meta["attributes"]["small_arrays"]) == {"coords", "labels", "tissue_fraction"}
    store = PatchStore(store_path)
    with pytest.raises(StoreError, match="slide 'a', array 'labels': its values differ from the digest"):
        store.labels("a")
    assert any("slides/a/labels" in problem for problem in store.verify().problems)


def test_a_flipped_byte_in_a_small_array_is_refused(store_path: Path) -> None:
    chunk = store_path / "slides/a/labels/c/0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="slide 'a', array 'labels': unreadable"):
        PatchStore(store_path).labels("a")


def test_slides_written_before_digests_still_read(store_path: Path) -> None:
    meta_path = store_path / "slides/a/zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["small_arrays"]
    meta_path.write_text(json.dumps(meta))
    store = PatchStore(store_path)
    assert store.labels("a").tolist() == [1, 0, 1, 0, 1, 0]
    assert store.verify().ok


@pytest.mark.parametrize("damage", [b"", b"\xff\xfe not utf-8", b'{"attributes": ', b'{"attributes": [1]}'])
def test_a_damaged_slide_zarr_json_stops_readers_instead_of_hiding_the_slide(
    store_path: Path, damage: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (store_path / "slides/b/zarr.json").write_bytes(damage)
    with pytest.raises(StoreError, match=r"slide 'b' of .* is damaged"):
        PatchStore(store_path).slide_ids()
    assert main(["export", str(store_path), "--out", str(tmp_path / "png")]) == 2
    line = _one_line_error(capsys)
    assert "slide 'b'" in line and "wsi-tools verify" in line
    assert not (tmp_path / "png").exists() or not any((tmp_path / "png").rglob("*.png"))


@pytest.mark.parametrize(
    "damage", [b"", b"\x00\x01", b'{"attributes": {"schema": "wsi-tools/patch-store", "version": "x"}}']
)
def test_a_damaged_root_zarr_json_is_one_clear_error(
    store_path: Path, damage: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (store_path / "zarr.json").write_bytes(damage)
    assert main(["export", str(store_path), "--out", str(tmp_path / "png")]) == 2
    assert "zarr.json" in _one_line_error(capsys)
    assert main(["verify", str(store_path)]) == 2
    assert "zarr.json" in _one_line_error(capsys)
