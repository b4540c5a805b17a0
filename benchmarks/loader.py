"""Loading patches for training: the zarr store vs its Zenodo-style PNG export.

Builds a store of a few hundred 512x512 H&E-like patches (crops of
``wsi_tools.testing.synth.synthetic_tissue``, plus crops of CMU-1-Small-Region when
the real test data is beside the repo), exports it with
``wsi_tools.export.export_png``, and reads both through the same DataLoader
(2 workers, batch 64): the workers decode a batch and resize it to 224 (uint8,
one ``resize_batch`` call per batch, the same for both sources), which is the
loader's whole job in the trainer (float conversion, augmentation and
normalisation run per batch on the device; their CPU cost per patch is
reported beside, ``to_float_ms_per_patch``). Each source is timed over several epochs after a warm-up epoch
(persistent workers, files in the page cache for both), alternating the
sources so that machine load hits both alike; the median epoch counts.

``--content slide`` (default) passes the synthetic crops through JPEG q90
first, because every patch a store holds was read from a JPEG-compressed
slide (``write_aperio_svs`` uses q90, as scanners do); ``--content raw``
stores the synthetic renders as they are. Either way the JSON also gives
the per-patch sizes of both encodings on the raw renders
(``raw_render_bytes``), for comparison.

The last stdout line is one JSON object with ``store_patches_per_s``,
``png_patches_per_s``, ``speedup_vs_png``, ``store_bytes``, ``png_bytes`` and
details. Targets: speedup >= 3, store_bytes <= png_bytes.

    .venv/bin/python benchmarks/loader.py [--patches 384] [--epochs 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wsi_tools.export import export_png, read_rgb
from wsi_tools.store import PatchStore
from wsi_tools.testing.synth import synthetic_tissue
from wsi_tools.train.augment import BatchTransform
from wsi_tools.train.data import (
    PatchBatch,
    PatchDataset,
    collate_patches,
    open_store,
    resize_batch,
    select_patches,
)

PATCH = 512
REAL_SLIDE = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "CMU-1-Small-Region.svs"
)


def synthetic_patches(n: int, seed: int = 0, jpeg_quality: int | None = 90) -> np.ndarray:
    """``n`` 512x512 crops of synthetic H&E images (mostly tissue), JPEG round-tripped
    at ``jpeg_quality`` like slide tiles (None = raw renders)."""
    patches: list[np.ndarray] = []
    image_seed = seed
    while len(patches) < n:
        image = synthetic_tissue(2048, 2048, seed=image_seed, tissue_fraction=0.75)
        image_seed += 1
        if jpeg_quality is not None:
            image = jpeg_round_trip(image, jpeg_quality)
        for y in range(0, 2048, PATCH):
            for x in range(0, 2048, PATCH):
                patches.append(image[y : y + PATCH, x : x + PATCH])
    return np.stack(patches[:n])


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode in 256 px tiles, as an Aperio SVS stores level 0."""
    out = np.empty_like(image)
    for y in range(0, image.shape[0], 256):
        for x in range(0, image.shape[1], 256):
            tile = np.ascontiguousarray(image[y : y + 256, x : x + 256])
            ok, data = cv2.imencode(
                ".jpg", cv2.cvtColor(tile, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
            )
            assert ok
            out[y : y + 256, x : x + 256] = cv2.cvtColor(
                cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
            )
    return out


def raw_render_bytes(n: int = 32) -> dict[str, float]:
    """Mean bytes per patch of the store codec and of the export's PNG on raw renders."""
    from wsi_tools.export import DEFAULT_PNG_LEVEL
    from wsi_tools.store import encode_patch

    patches = synthetic_patches(n, seed=1000, jpeg_quality=None)
    png_args = [cv2.IMWRITE_PNG_COMPRESSION, DEFAULT_PNG_LEVEL]
    return {
        "store": float(np.mean([len(encode_patch(p)) for p in patches])),
        "png": float(
            np.mean(
                [len(cv2.imencode(".png", cv2.cvtColor(p, cv2.COLOR_RGB2BGR), png_args)[1]) for p in patches]
            )
        ),
    }


def real_patches() -> np.ndarray:
    """Level-0 512x512 crops of CMU-1-Small-Region (real Aperio H&E), if present."""
    if not REAL_SLIDE.is_file():
        return np.zeros((0, PATCH, PATCH, 3), np.uint8)
    from wsi_tools.slide import open_slide

    with open_slide(REAL_SLIDE) as slide:
        width, height = slide.dimensions
        crops = [
            slide.read_level(0, x, y, PATCH, PATCH)
            for y in range(0, height - PATCH + 1, PATCH)
            for x in range(0, width - PATCH + 1, PATCH)
        ]
    return np.stack(crops)


def build_store(path: Path, n: int, content: str = "slide") -> dict[str, int]:
    real = real_patches()
    synthetic = synthetic_patches(max(0, n - len(real)), jpeg_quality=90 if content == "slide" else None)
    store = PatchStore(path, mode="a")
    counts = {}
    for slide_id, images in (("synthetic", synthetic), ("cmu1", real)):
        if not len(images):
            continue
        labels = (np.arange(len(images)) % 2).astype(np.int8)  # both PNG folders get files
        coords = np.stack([np.arange(len(images)) * PATCH, np.zeros(len(images), np.int64)], 1)
        writer = store.begin_slide(slide_id, len(images), PATCH, {"set": "hard", "source": slide_id})
        writer.write(0, images, coords, labels, np.ones(len(images), np.float32))
        writer.commit()
        counts[slide_id] = len(images)
    return counts


class PngDataset(Dataset):
    """The PNG export read file by file (cv2 decode, BGR -> RGB), as the seed code
    does, batched and resized exactly as :class:`PatchDataset` does."""

    def __init__(self, files: list[Path], labels: list[int], resize: int | None) -> None:
        self.files, self.labels, self.resize = files, labels, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([row])[0]

    def __getitems__(self, rows: list[int]) -> PatchBatch:
        images = np.empty((len(rows), PATCH, PATCH, 3), np.uint8)
        for position, row in enumerate(rows):
            read_rgb(self.files[row], out=images[position])
        labels = torch.tensor([float(self.labels[row]) for row in rows])
        return PatchBatch(resize_batch(images, self.resize), labels)


def folder_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def epoch_seconds(loader: DataLoader, side: int) -> float:
    started = time.perf_counter()
    seen = 0
    for images, _ in loader:
        assert images.shape[1:] == (3, side, side) and images.dtype == torch.uint8
        seen += len(images)
    assert seen == len(loader.dataset)
    return time.perf_counter() - started


def time_sources(datasets: dict[str, Dataset], args: argparse.Namespace, side: int) -> dict[str, list[float]]:
    """Seconds per epoch of each source, after one warm-up epoch, sources alternating."""
    loaders = {
        name: DataLoader(
            data,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
            generator=torch.Generator().manual_seed(0),
            collate_fn=collate_patches,
        )
        for name, data in datasets.items()
    }
    for loader in loaders.values():
        epoch_seconds(loader, side)  # warm-up: worker start, page cache
    times: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(args.epochs):
        for name, loader in loaders.items():
            times[name].append(epoch_seconds(loader, side))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patches", type=int, default=384, help="patches in the store (default: 384)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per source (default: 3)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument(
        "--content",
        choices=("slide", "raw"),
        default="slide",
        help="synthetic patches as read from a JPEG q90 slide, or raw renders (default: slide)",
    )
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it (default: a temp folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the workers do the work; the main thread only collates

    with tempfile.TemporaryDirectory() as temp:
        root = args.keep or Path(temp)
        root.mkdir(parents=True, exist_ok=True)
        store_path, png_dir = root / "store.zarr", root / "png"
        started = time.perf_counter()
        counts = build_store(store_path, args.patches, args.content)
        store_write_s = time.perf_counter() - started
        started = time.perf_counter()
        export_png(store_path, png_dir)
        png_write_s = time.perf_counter() - started

        table = select_patches(open_store(store_path))
        store_data = PatchDataset(store_path, table, resize=224)  # resized in the workers
        png_files = sorted(png_dir.rglob("*.png"))
        png_data = PngDataset(png_files, [int(f.name.startswith("pos_")) for f in png_files], 224)
        assert len(png_data) == len(store_data), (len(png_data), len(store_data))
        # Same pixels from both sources (PNG is lossless).
        first = png_files[0].stem.split("_")
        x = int(first[-1].split("-")[0])
        row = int(np.nonzero((table.slide_ids == "_".join(first[1:-1])) & (table.coords[:, 0] == x))[0][0])
        assert torch.equal(store_data[row][0], png_data[0][0])

        times = time_sources({"store": store_data, "png": png_data}, args, 224)
        # The trainer's CUDA path: workers only read and decompress (512 px), the GPU resizes.
        for data in (store_data, png_data):
            data.resize = None
        decode_only = time_sources({"store": store_data, "png": png_data}, args, PATCH)
        for data in (store_data, png_data):
            data.resize = 224

        # Bare decode cost per patch on one thread, without resize or workers.
        store = open_store(store_path)
        reader = store.reader(table.slide_ids[0])
        started = time.perf_counter()
        reader.read_many(range(min(64, len(reader))))
        store_decode_ms = (time.perf_counter() - started) / min(64, len(reader)) * 1e3
        started = time.perf_counter()
        for path in png_files[:64]:
            read_rgb(path)
        png_decode_ms = (time.perf_counter() - started) / min(64, len(png_files)) * 1e3

        batch = torch.stack([store_data[i][0] for i in range(args.batch_size)])
        to_float = BatchTransform(224, augment=False)
        started = time.perf_counter()
        for _ in range(3):
            to_float(batch)
        to_float_ms = (time.perf_counter() - started) / (3 * len(batch)) * 1e3

        n = len(store_data)
        store_rate = n / statistics.median(times["store"])
        png_rate = n / statistics.median(times["png"])
        result = {
            "store_patches_per_s": round(store_rate, 1),
            "png_patches_per_s": round(png_rate, 1),
            "speedup_vs_png": round(store_rate / png_rate, 2),
            "store_bytes": folder_bytes(store_path),
            "png_bytes": folder_bytes(png_dir, "*.png"),
            "patches": n,
            "patch_size": PATCH,
            "sources": counts,
            "epoch_seconds": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
            "decode_ms_per_patch_one_thread": {
                "store": round(store_decode_ms, 2),
                "png": round(png_decode_ms, 2),
            },
            "decode_only_512px": {
                "store_patches_per_s": round(n / statistics.median(decode_only["store"]), 1),
                "png_patches_per_s": round(n / statistics.median(decode_only["png"]), 1),
                "speedup_vs_png": round(
                    statistics.median(decode_only["png"]) / statistics.median(decode_only["store"]), 2
                ),
            },
            "to_float_ms_per_patch": round(to_float_ms, 2),
            "store_write_s": round(store_write_s, 2),
            "png_export_s": round(png_write_s, 2),
            "loader": {"workers": args.workers, "batch_size": args.batch_size, "resize": 224},
            "content": args.content,
            "raw_render_bytes": raw_render_bytes(),
        }
        result["size_ratio_store_over_png"] = round(result["store_bytes"] / result["png_bytes"], 3)
        print(f"store {store_rate:.0f} patches/s, PNG {png_rate:.0f} patches/s", file=sys.stderr)
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
