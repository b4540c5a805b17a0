"""The zarr v3 patch store: plain-zarr readability, shards, crash safety, verify."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_tools.errors import ConfigError, StoreError
from wsi_tools.store import PatchStore, SlideWriter, _store, _writer, sanitize_slide_id
from wsi_tools.store import _codec as patch_codec
from wsi_tools.testing.synth import synthetic_tissue

P = 64


def _patches(n: int, seed: int = 0) -> np.ndarray:
    """H&E-like patches (texture, flat background, sharp nuclei edges)."""
    image = synthetic_tissue(P * 4, P * ((n + 3) // 4), seed=seed)
    tiles = [image[y : y + P, x : x + P] for y in range(0, image.shape[0], P) for x in range(0, 4 * P, P)]
    return np.ascontiguousarray(np.stack(tiles[:n]))


def _write(store: PatchStore, slide_id: str, images: np.ndarray, per_shard: int = 8, **kwargs) -> dict:
    n = len(images)
    writer = store.begin_slide(slide_id, n, P, {"set": "weak"}, patches_per_shard=per_shard, **kwargs)
    coords = np.arange(2 * n, dtype=np.int64).reshape(n, 2) * 10
    labels = np.arange(n) % 2
    fractions = np.linspace(0, 1, n, dtype=np.float32)
    for start in range(0, n, 5):
        stop = min(n, start + 5)
        writer.write(start, images[start:stop], coords[start:stop], labels[start:stop], fractions[start:stop])
    return writer.commit({"counts": {"kept": n}})


def _plain_zarr_images(path: Path, slide_id: str) -> zarr.Array:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numcodecs.delta is outside the v3 core spec
        return zarr.open_group(path, mode="r")[f"slides/{slide_id}/images"]


def test_codec_round_trip_and_zarr_chain_agree() -> None:
    patch = _patches(1)[0]
    chunk = patch_codec.encode_patch(patch)
    assert np.array_equal(patch_codec.decode_patch(chunk, P), patch)
    assert len(chunk) < patch.nbytes / 2  # the delta filters pay off on H&E-like content
    damaged = bytearray(chunk)
    damaged[10] ^= 0xFF
    with pytest.raises(patch_codec.ChunkError, match="crc32c"):
        patch_codec.decode_patch(bytes(damaged), P)


def test_fast_zstd_keeps_huffman_literals_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import imagecodecs

    from wsi_tools.store import _zstd as fast_zstd

    # Residual-like bytes: small values around 0 (mod 256), little to match.
    residual = (np.round(np.random.default_rng(0).laplace(0, 8, 1 << 18)) % 256).astype(np.uint8)
    assert fast_zstd.available(), "the imagecodecs wheel ships libzstd: the fast path must load"
    fast = fast_zstd.compress(residual)
    assert np.array_equal(np.frombuffer(imagecodecs.zstd_decode(fast), np.uint8), residual)
    # A plain negative level stores literals raw (>= 100 % here); Huffman gets ~69 %.
    assert len(fast) < 0.75 * residual.nbytes
    assert len(fast) < 1.05 * len(imagecodecs.zstd_encode(residual, level=1))
    assert fast_zstd.describe()["literals"] == "huffman"

    patch = _patches(1)[0]
    for compression in patch_codec.COMPRESSIONS:
        assert np.array_equal(
            patch_codec.decode_patch(patch_codec.encode_patch(patch, compression), P), patch
        )
    monkeypatch.setenv("WSI_TOOLS_FAST_ZSTD", "0")
    fast_zstd._library.cache_clear()
    try:
        assert not fast_zstd.available() and fast_zstd.describe() == {"zstd_level": 1}
        assert np.array_equal(patch_codec.decode_patch(patch_codec.encode_patch(patch), P), patch)
    finally:
        monkeypatch.delenv("WSI_TOOLS_FAST_ZSTD")
        fast_zstd._library.cache_clear()
    assert fast_zstd.available()


def test_compact_compression_is_recorded_and_plain_zarr_reads_both(tmp_path: Path) -> None:
    images = _patches(9)
    store = PatchStore(tmp_path / "s.zarr", mode="a")
    for name, compression in (("fast", "fast"), ("compact", "compact")):
        attrs = _write(store, name, images, compression=compression)
        assert attrs["image_encoder"]["compression"] == compression
        assert np.array_equal(_plain_zarr_images(tmp_path / "s.zarr", name)[:], images)
    meta = json.loads((tmp_path / "s.zarr" / "slides" / "compact" / "images" / "zarr.json").read_text())
    inner = meta["codecs"][0]["configuration"]["codecs"]
    assert [c["configuration"]["level"] for c in inner if c["name"] == "zstd"] == [1]
    with pytest.raises(ValueError, match="compression"):
        store.begin_slide("x", 1, P, compression="tiny")


def test_plain_zarr_reads_identical_pixels_and_metadata(tmp_path: Path) -> None:
    images = _patches(21)
    store = PatchStore(tmp_path / "s.zarr", mode="a")
    attrs = _write(store, "slide-1", images)
    assert attrs["status"] == "complete"

    array = _plain_zarr_images(store.path, "slide-1")
    assert array.shape == (21, P, P, 3) and array.dtype == np.uint8
    assert array.chunks == (1, P, P, 3) and array.shards == (8, P, P, 3)
    assert np.array_equal(array[13], images[13])  # a single chunk out of a shard
    assert np.array_equal(array[:], images)  # includes the partial last shard
    group = zarr.open_group(store.path, mode="r")
    assert group.attrs["schema"] == "wsi-tools/patch-store" and group.attrs["version"] == 1
    assert group["slides/slide-1"].attrs["status"] == "complete"
    assert np.array_equal(group["slides/slide-1/coords"][:], store.coords("slide-1"))
    assert store.labels("slide-1").dtype == np.int8 and store.tissue_fraction("slide-1").dtype == np.float32
    # The API's own readers agree with zarr.
    assert np.array_equal(store.images("slide-1")[20], images[20])
    assert np.array_equal(store.read_patches("slide-1", [20, 0, 7]), images[[20, 0, 7]])
    # 21 patches in shards of 8: three shard files, not 21 chunk files.
    shard_files = [path for path in (store.path / "slides/slide-1/images/c").rglob("*") if path.is_file()]
    assert len(shard_files) == 3

    meta = json.loads((store.path / "slides/slide-1/images/zarr.json").read_text())
    inner = meta["codecs"][0]["configuration"]
    assert [codec["name"] for codec in inner["codecs"]][-1] == "crc32c"
    assert inner["chunk_shape"] == [1, P, P, 3]


def test_reader_pickles_and_store_fingerprint_tracks_content(tmp_path: Path) -> None:
    import pickle

    store = PatchStore(tmp_path / "s.zarr", mode="a")
    _write(store, "a", _patches(3))
    first = store.fingerprint()
    reader = pickle.loads(pickle.dumps(store.reader("a")))
    assert np.array_equal(reader.read(2), _patches(3)[2])
    assert PatchStore(store.path).fingerprint() == first  # stable when nothing changes
    _write(store, "b", _patches(2, seed=1))
    second = store.fingerprint()
    assert second != first
    _write(store, "b", _patches(2, seed=2), overwrite=True)
    assert store.fingerprint() != second


def test_sanitize_slide_id() -> None:
    assert sanitize_slide_id("TCGA-AB-1234.svs") == "TCGA-AB-1234.svs"
    assert sanitize_slide_id("../../etc/passwd") == "etc_passwd"
    assert sanitize_slide_id("a/b\\c") == "a_b_c"
    assert sanitize_slide_id("..hidden") == "hidden"
    assert sanitize_slide_id("x..y") == "x.y"
    for bad in ("", "..", "/", "./."):
        with pytest.raises(ConfigError, match="slide id"):
            sanitize_slide_id(bad)


def test_existing_slide_needs_overwrite_and_overwrite_swaps(tmp_path: Path) -> None:
    store = PatchStore(tmp_path / "s.zarr", mode="a")
    _write(store, "s", _patches(4))
    with pytest.raises(StoreError, match="--overwrite"):
        store.begin_slide("s", 1, P)
    replacement = _patches(6, seed=5)
    _write(store, "s", replacement, overwrite=True)
    assert store.slide_ids() == ["s"] and store.leftovers() == []
    assert np.array_equal(store.read_patches("s", range(6)), replacement)


def test_an_overwrite_swaps_the_groups_in_one_atomic_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PatchStore(tmp_path / "s.zarr", mode="a")
    _write(store, "s", _patches(4))
    replacement = _patches(6, seed=5)

    # Killed right after the swap, before the old group is removed: the slide is already
    # the new one, complete; the old one is a leftover under the temporary name.
    def killed(path: object, ignore_errors: bool = False) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_writer.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        _write(store, "s", replacement, overwrite=True)
    monkeypatch.undo()
    assert store.slide_ids() == ["s"]
    assert np.array_equal(store.read_patches("s", range(6)), replacement)
    (leftover,) = store.leftovers()
    assert leftover.startswith(".tmp-s-")
    assert PatchStore(store.path, mode="a").restore_interrupted() == []


def test_a_crash_between_the_fallback_renames_keeps_a_complete_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PatchStore(tmp_path / "s.zarr", mode="a")
    original = _patches(4)
    _write(store, "s", original)
    renames = []
    real_rename = _writer.os.rename

    def rename_then_die(source: object, target: object) -> None:
        renames.append((source, target))
        if len(renames) == 2:  # killed after the old group went aside, before the new one came in
            raise KeyboardInterrupt
        real_rename(source, target)

    monkeypatch.setattr(_writer, "exchange_paths", lambda first, second: False)  # e.g. NFS
    monkeypatch.setattr(_writer.os, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        _write(store, "s", _patches(6, seed=5), overwrite=True)
    monkeypatch.undo()

    reader = PatchStore(store.path)
    assert reader.slide_ids() == []
    (aside,) = reader.interrupted_swaps().values()
    report = reader.verify()
    assert not report.ok and any(
        "--overwrite stopped" in problem and aside in problem for problem in report.problems
    )

    writer = PatchStore(store.path, mode="a")  # the next writer puts the old copy back
    assert writer.slide_ids() == ["s"]
    assert np.array_equal(writer.read_patches("s", range(4)), original)
    writer.remove_leftovers()
    assert writer.verify().ok


def test_a_slide_deleted_halfway_is_never_put_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = PatchStore(tmp_path / "s.zarr", mode="a")
    _write(store, "s", _patches(4))
    monkeypatch.setattr(_store.shutil, "rmtree", lambda path, ignore_errors=False: None)
    store.delete_slide("s")
    monkeypatch.undo()
    (leftover,) = store.leftovers()
    assert leftover.startswith(".del-s-")
    assert PatchStore(store.path, mode="a").slide_ids() == []


def test_failure_mid_slide_leaves_nothing_complete_and_rerun_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PatchStore(tmp_path / "s.zarr", mode="a")
    images = _patches(20)
    original = SlideWriter.write
    calls = {"n": 0}

    def failing_write(self: SlideWriter, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        original(self, *args, **kwargs)

    monkeypatch.setattr(SlideWriter, "write", failing_write)
    with pytest.raises(RuntimeError, match="disk on fire"), store.begin_slide("s", 20, P) as writer:
        writer.write(0, images[:10], np.zeros((10, 2)), np.zeros(10), np.zeros(10))
        writer.write(10, images[10:], np.zeros((10, 2)), np.zeros(10), np.zeros(10))
    assert store.slide_ids(include_incomplete=True) == [] and store.leftovers() == []

    # A hard crash (no abort) leaves a temporary group: never listed, reported by verify.
    writer = store.begin_slide("s", 20, P)
    writer.write(0, images[:10], np.zeros((10, 2)), np.zeros(10), np.zeros(10))
    assert store.slide_ids() == [] and not store.is_complete("s")
    assert len(store.leftovers()) == 1 and not store.verify().ok
    monkeypatch.setattr(SlideWriter, "write", original)

    _write(store, "s", images)  # the rerun removes the leftover and completes
    assert store.slide_ids() == ["s"] and store.leftovers() == []
    assert store.verify().ok


def test_commit_refuses_missing_patches(tmp_path: Path) -> None:
    store = PatchStore(tmp_path / "s.zarr", mode="a")
    writer = store.begin_slide("s", 10, P)
    writer.write(0, _patches(4), np.zeros((4, 2)), np.zeros(4), np.zeros(4))
    with pytest.raises(StoreError, match="6 of 10 patches never written"):
        writer.commit()
    assert store.slide_ids(include_incomplete=True) == [] and store.leftovers() == []


def test_threaded_out_of_order_writes(tmp_path: Path) -> None:
    store = PatchStore(tmp_path / "s.zarr", mode="a")
    images = _patches(19)
    writer = store.begin_slide("s", 19, P, patches_per_shard=4, threads=2)
    for start in (15, 0, 8, 4, 12):
        stop = min(19, start + 4)
        count = stop - start
        writer.write(start, images[start:stop], np.zeros((count, 2)), np.ones(count), np.zeros(count))
    writer.commit()
    assert np.array_equal(_plain_zarr_images(store.path, "s")[:], images)
    assert store.labels("s").tolist() == [1] * 19


def test_verify_catches_a_damaged_chunk(tmp_path: Path) -> None:
    store = PatchStore(tmp_path / "s.zarr", mode="a")
    _write(store, "s", _patches(12))
    report = store.verify()
    assert report.ok and report.patches_checked == 12

    shard = store.path / "slides/s/images/c/1/0/0/0"  # patches 8..11
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # inside the first chunk of the shard: patch 8
    shard.write_bytes(bytes(data))
    report = PatchStore(store.path).verify()
    assert not report.ok
    assert any("patch 8" in problem and "crc32c" in problem for problem in report.problems)
    with pytest.raises(StoreError, match="crc32c"):
        store.read_patches("s", [8])
    with pytest.raises(ValueError, match="checksum"):  # plain zarr notices too
        _plain_zarr_images(store.path, "s")[8]

    (store.path / "slides/s/images/c/0/0/0/0").unlink()
    assert any("missing" in problem for problem in PatchStore(store.path).verify().problems)


def test_verify_catches_an_incomplete_visible_group(tmp_path: Path) -> None:
    store = PatchStore(tmp_path / "s.zarr", mode="a")
    _write(store, "s", _patches(2))
    meta_path = store.path / "slides/s/zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["status"] = "writing"
    meta_path.write_text(json.dumps(meta))
    # Only complete groups are ever renamed to their slide id: this one is damage, not a
    # slide to leave out quietly.
    with pytest.raises(StoreError, match="status is 'writing' under its final name"):
        store.slide_ids()
    assert store.slide_ids(include_incomplete=True) == ["s"]
    assert any("not complete" in problem for problem in store.verify().problems)


def test_not_a_store_and_read_only(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a patch store"):
        PatchStore(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "other.zarr", mode="w")
    with pytest.raises(StoreError, match="not a wsi-tools/patch-store"):
        PatchStore(tmp_path / "other.zarr")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos/cat.jpg").write_bytes(b"not a store")
    with pytest.raises(StoreError, match="exists and is not a patch store"):
        PatchStore(tmp_path / "photos", mode="a")
    assert not (tmp_path / "photos/zarr.json").exists()
    PatchStore(tmp_path / "s.zarr", mode="a")
    with pytest.raises(StoreError, match="read-only"):
        PatchStore(tmp_path / "s.zarr").begin_slide("x", 1, P)
    with pytest.raises(StoreError, match="no slide 'nope'"):
        PatchStore(tmp_path / "s.zarr").coords("nope")


def test_empty_slide(tmp_path: Path) -> None:
    store = PatchStore(tmp_path / "s.zarr", mode="a")
    store.begin_slide("blank", 0, P).commit({"counts": {"kept": 0}})
    assert store.slide_ids() == ["blank"]
    assert store.coords("blank").shape == (0, 2) and store.read_patches("blank", []).shape == (0, P, P, 3)
    assert store.verify().ok


@pytest.mark.parametrize(
    "damage", [b"", b"\xff\xfe not utf-8", b'{"zarr_format": 3, "attributes": ', b"[1, 2]"]
)
def test_verify_reports_a_damaged_slide_zarr_json(
    tmp_path: Path, damage: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsi_tools.cli import main

    store = PatchStore(tmp_path / "s.zarr", mode="a")
    _write(store, "good", _patches(2))
    _write(store, "bad", _patches(2))
    (store.path / "slides/bad/zarr.json").write_bytes(damage)
    report = PatchStore(store.path).verify()
    assert not report.ok and report.slides_checked == 2
    assert [problem for problem in report.problems if "slides/bad/zarr.json" in problem]
    assert not [problem for problem in report.problems if "good" in problem]
    assert main(["verify", str(store.path)]) == 1
    captured = capsys.readouterr()
    assert "slides/bad/zarr.json" in captured.out + captured.err and "Traceback" not in captured.err
