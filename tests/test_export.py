"""Zenodo-style PNG export and import-png: the round trip keeps pixels and coordinates."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from wsi_tools.cli import main
from wsi_tools.errors import ConfigError
from wsi_tools.export import export_png, import_png
from wsi_tools.store import PatchStore
from wsi_tools.testing.synth import synthetic_tissue

P = 48


def _write_slide(store: PatchStore, slide_id: str, set_name: str, labels: list[int], seed: int) -> None:
    n = len(labels)
    image = synthetic_tissue(P * n, P, seed=seed)
    patches = np.stack([image[:, i * P : (i + 1) * P] for i in range(n)])
    coords = np.array([(1000 * i + 7, 333 * i) for i in range(n)], np.int64)
    writer = store.begin_slide(slide_id, n, P, {"set": set_name, "effective_mpp": 2.0})
    writer.write(0, patches, coords, np.array(labels), np.full(n, 0.75, np.float32))
    writer.commit()


def test_export_then_import_keeps_pixels_and_coords(tmp_path: Path) -> None:
    store = PatchStore(tmp_path / "a.zarr", mode="a")
    _write_slide(store, "TCGA_AB_12", "hard", [1, 0, 1], seed=1)  # underscores in the id
    _write_slide(store, "neg-slide", "weak", [0, 0], seed=2)
    out = tmp_path / "png"
    result = export_png(store.path, out)
    assert result.n_files == 5 and result.n_slides == 2
    assert (out / "hard_labeled_dataset/pos_TCGA_AB_12_7-0.png").exists()
    assert (out / "hard_labeled_dataset/neg_TCGA_AB_12_1007-333.png").exists()
    assert (out / "weakly_labeled_dataset/neg-slide_1007-333.png").exists()
    with open(out / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and rows[0]["slide"] == "TCGA_AB_12" and rows[0]["set"] == "hard"
    assert {row["mpp"] for row in rows} == {"2.0"}

    imported = import_png(out, tmp_path / "b.zarr")
    assert sorted(s.slide_id for s in imported.slides) == ["TCGA_AB_12", "neg-slide"]
    back = PatchStore(tmp_path / "b.zarr")
    for slide_id in ("TCGA_AB_12", "neg-slide"):
        original_coords = store.coords(slide_id)
        order = np.lexsort((original_coords[:, 0], original_coords[:, 1]))  # import sorts row-major
        assert np.array_equal(back.coords(slide_id), original_coords[order])
        assert np.array_equal(back.labels(slide_id), store.labels(slide_id)[order])
        assert np.array_equal(
            back.read_patches(slide_id, range(len(order))), store.read_patches(slide_id, order)
        )
        attrs = back.slide_attrs(slide_id)
        assert attrs["set"] == store.slide_attrs(slide_id)["set"] and attrs["effective_mpp"] == 2.0
    assert back.verify().ok
    assert import_png(out, tmp_path / "b.zarr").slides[0].status == "skipped"


def test_import_accepts_rgba_grey_and_jpeg_and_skips_odd_names(tmp_path: Path) -> None:
    rgb = synthetic_tissue(P, P, seed=3)
    hard = tmp_path / "ds/hard_labeled_dataset"
    weak = tmp_path / "ds/weakly_labeled_dataset"
    hard.mkdir(parents=True)
    weak.mkdir(parents=True)
    rgba = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full((P, P), 255, np.uint8)])
    cv2.imwrite(str(hard / "pos_S_1_100-200.png"), rgba)
    half_transparent = rgba.copy()
    half_transparent[..., 3] = 0
    cv2.imwrite(str(hard / "neg_S_1_300-200.png"), half_transparent)  # fully transparent: white
    cv2.imwrite(str(weak / "W_0-0.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(weak / "W_48-0.png"), rgb[..., 0])  # grey
    (weak / "notes.txt").write_text("ignored")
    cv2.imwrite(str(weak / "no-coordinates.png"), rgb)

    result = import_png(tmp_path / "ds", tmp_path / "s.zarr", mpp=2.0)
    assert result.skipped_files == ["weakly_labeled_dataset/no-coordinates.png"]
    store = PatchStore(tmp_path / "s.zarr")
    assert store.labels("S_1").tolist() == [1, 0] and store.coords("S_1").tolist() == [[100, 200], [300, 200]]
    patches = store.read_patches("S_1", [0, 1])
    assert np.array_equal(patches[0], rgb) and np.all(patches[1] == 255)
    weak_patches = store.read_patches("W", [0, 1])
    jpeg_error = np.abs(weak_patches[0].astype(int) - rgb).mean()  # lossy, but RGB, not BGR:
    assert jpeg_error < 6 and jpeg_error < np.abs(weak_patches[0].astype(int) - rgb[..., ::-1]).mean() / 2
    assert np.array_equal(weak_patches[1], np.repeat(rgb[..., :1], 3, axis=2))
    assert store.slide_attrs("W")["effective_mpp"] == 2.0


def test_import_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such directory"):
        import_png(tmp_path / "missing", tmp_path / "s.zarr")
    (tmp_path / "empty/weakly_labeled_dataset").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no patch images"):
        import_png(tmp_path / "empty", tmp_path / "s.zarr")
    folder = tmp_path / "mixed/weakly_labeled_dataset"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "A_0-0.png"), np.zeros((P, P, 3), np.uint8))
    cv2.imwrite(str(folder / "A_48-0.png"), np.zeros((P, P + 1, 3), np.uint8))
    with pytest.raises(ConfigError, match="A_48-0.png"):
        import_png(tmp_path / "mixed", tmp_path / "s.zarr")
    assert PatchStore(tmp_path / "s.zarr").slide_ids(include_incomplete=True) == []


def test_cli_export_and_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = PatchStore(tmp_path / "a.zarr", mode="a")
    _write_slide(store, "s", "weak", [0, 0, 0], seed=4)
    assert main(["export", str(store.path), "--out", str(tmp_path / "png"), "--png-level", "1"]) == 0
    assert "exported 3 patches of 1 slides" in capsys.readouterr().out
    assert main(["import-png", str(tmp_path / "png"), "--out", str(tmp_path / "b.zarr")]) == 0
    assert "imported 3 patches into 1 slide groups" in capsys.readouterr().out
    assert main(["export", str(store.path), "--out", str(tmp_path / "x"), "--slides", "nope"]) == 2
