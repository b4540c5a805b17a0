"""Codec choice for the patch store: size and CPU per 512 px patch.

Compares lossless chains expressible in plain zarr v3 (+ zarr's bundled
numcodecs filters) with PNG at several levels and two image codecs, on real
H&E (CMU-1-Small-Region, the TCGA crop) and on patches read back from
generated SVS slides (JPEG q90, like the tests and benchmarks). Also times
zarr-python's own write path against the hand-built shards of
``wsi_tools.patch_codec``. Prints a table and, last, one JSON line.

    .venv/bin/python benchmarks/store_codecs.py [--real-dir ../shared/data/real]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
from PIL import Image

from wsi_tools import store as patch_codec
from wsi_tools.store import _zstd as fast_zstd  # the internals this benchmark chose between
from wsi_tools.testing.synth import synthetic_tissue, tissue_content, write_aperio_svs

P = 512
REPEATS = 2


def _delta(flat: np.ndarray) -> np.ndarray:
    return imagecodecs.delta_encode(np.ascontiguousarray(flat).reshape(-1))


def _zstd_chain(transform: Callable[[np.ndarray], np.ndarray], level: int = 1) -> tuple[Callable, Callable]:
    def encode(patch: np.ndarray) -> bytes:
        return imagecodecs.zstd_encode(transform(patch), level=level)

    def decode(data: bytes) -> np.ndarray:
        return imagecodecs.zstd_decode(data)  # the inverse filters cost 0.2-0.4 ms more

    return encode, decode


def _planar(patch: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(patch.transpose(2, 0, 1))


def _png_cv2(level: int | None) -> tuple[Callable, Callable]:
    params = [] if level is None else [cv2.IMWRITE_PNG_COMPRESSION, level]
    return (lambda p: cv2.imencode(".png", p, params)[1].tobytes()), (
        lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)
    )


def _png_pil(level: int) -> tuple[Callable, Callable]:
    def encode(patch: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(patch).save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    return encode, lambda b: np.asarray(Image.open(io.BytesIO(b)))


METHODS: dict[str, tuple[Callable, Callable]] = {
    f"store, fast: delta, transpose, delta, zstd {fast_zstd.FAST_LEVEL} huf (chosen)": (
        patch_codec.encode_patch,
        lambda b: patch_codec.decode_patch(b, P),
    ),
    "store, compact: the same chain, zstd 1": (
        lambda patch: patch_codec.encode_patch(patch, "compact"),
        lambda b: patch_codec.decode_patch(b, P),
    ),
    "zstd1 planar, no filter": _zstd_chain(_planar),
    "zstd1 transpose, delta (zarr-writable)": _zstd_chain(lambda p: _delta(_planar(p))),
    "zstd3 transpose, delta": _zstd_chain(lambda p: _delta(_planar(p)), 3),
    "png cv2 default": _png_cv2(None),
    "png cv2 level 3": _png_cv2(3),
    "png cv2 level 6": _png_cv2(6),
    "png pillow level 6": _png_pil(6),
    "qoi": (imagecodecs.qoi_encode, imagecodecs.qoi_decode),
    "jpegxl lossless effort 1": (
        lambda p: imagecodecs.jpegxl_encode(p, lossless=True, effort=1, numthreads=1),
        lambda b: imagecodecs.jpegxl_decode(b, numthreads=1),
    ),
}


def _crops(image: np.ndarray, step: int) -> list[np.ndarray]:
    height, width = image.shape[:2]
    return [
        np.ascontiguousarray(image[y : y + P, x : x + P])
        for y in range(0, height - P + 1, step)
        for x in range(0, width - P + 1, step)
    ]


def sample_patches(real_dir: Path, work: Path) -> dict[str, list[np.ndarray]]:
    import openslide

    samples: dict[str, list[np.ndarray]] = {}
    cmu_path = real_dir / "CMU-1-Small-Region.svs"
    if cmu_path.exists():
        with openslide.OpenSlide(str(cmu_path)) as slide:
            full = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
        # 2.0 µm/px is 4x down from 0.499: only one 512 px window fits; take two overlapping.
        small = cv2.resize(full, (full.shape[1] // 4, full.shape[0] // 4), interpolation=cv2.INTER_AREA)
        samples["CMU-1 at 2.0 um/px"] = [small[:P, :P].copy(), small[-P:, -P:].copy()]
        half = cv2.resize(full, (full.shape[1] // 2, full.shape[0] // 2), interpolation=cv2.INTER_AREA)
        samples["CMU-1 at 1.0 um/px"] = _crops(half, 400)
        samples["CMU-1 at 0.5 um/px"] = _crops(full, 600)[:12]
    tcga_path = real_dir / "TCGA-CR-7395-01A-01-TS1-crop.svs"
    if tcga_path.exists():
        with openslide.OpenSlide(str(tcga_path)) as slide:
            level1 = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]).convert("RGB"))
        samples["TCGA crop level 1"] = _crops(level1, P)
    for name, kwargs in (
        ("generated SVS, synthetic_tissue", {"level0": synthetic_tissue(4096, 4096, seed=20)}),
        ("generated SVS, tissue_content", {"content": tissue_content(0), "size": (16384, 16384)}),
    ):
        path = write_aperio_svs(work / f"{len(samples)}.svs", mpp=0.5, app_mag=20, **kwargs)
        with openslide.OpenSlide(str(path)) as slide:
            level1 = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]).convert("RGB"))
        samples[name] = _crops(level1, 1024 if level1.shape[0] > 2048 else P)[:12]
    return samples


def measure(samples: dict[str, list[np.ndarray]]) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    for method, (encode, decode) in METHODS.items():
        results[method] = {}
        for sample, patches in samples.items():
            decode(encode(patches[0]))  # first-call costs (library loads, contexts) are not per patch
            started = time.process_time()
            encoded = [encode(patch) for patch in patches for _ in range(REPEATS)]
            encode_ms = (time.process_time() - started) / len(encoded) * 1e3
            started = time.process_time()
            for data in encoded:
                decode(data)
            decode_ms = (time.process_time() - started) / len(encoded) * 1e3
            kb = float(np.mean([len(data) for data in encoded]) / 1024)
            results[method][sample] = {
                "kb": round(kb, 1),
                "encode_ms": round(encode_ms, 2),
                "decode_ms": round(decode_ms, 2),
            }
        row = "  ".join(
            f"{v['kb']:6.0f} {v['encode_ms']:5.2f} {v['decode_ms']:5.2f}" for v in results[method].values()
        )
        print(f"{method:48s} {row}", flush=True)
    return results


def write_paths(patches: list[np.ndarray], work: Path) -> dict[str, float]:
    """CPU ms per patch to put patches into a sharded array: zarr-python vs hand-built shards."""
    import zarr
    from zarr.codecs import BytesCodec, Crc32cCodec, TransposeCodec, ZstdCodec
    from zarr.codecs.numcodecs import Delta

    from wsi_tools.store import PatchStore

    block = np.stack([patches[i % len(patches)] for i in range(128)])
    warnings.filterwarnings("ignore", message="Numcodecs codecs")
    array = zarr.create_array(
        work / "zarr_path.zarr",
        shape=block.shape,
        dtype="uint8",
        chunks=(1, P, P, 3),
        shards=(128, P, P, 3),
        filters=[TransposeCodec(order=(0, 3, 1, 2)), Delta(dtype="|u1")],
        serializer=BytesCodec(),
        compressors=[ZstdCodec(level=1), Crc32cCodec()],
        overwrite=True,
    )
    started = time.process_time()
    array[:] = block
    zarr_ms = (time.process_time() - started) / len(block) * 1e3

    store = PatchStore(work / "store.zarr", mode="a")
    started = time.process_time()
    writer = store.begin_slide("bench", len(block), P, {})
    writer.write(0, block, np.zeros((len(block), 2)), np.zeros(len(block)), np.ones(len(block)))
    writer.commit()
    store_ms = (time.process_time() - started) / len(block) * 1e3
    return {
        "zarr_python_write_ms_per_patch": round(zarr_ms, 2),
        "store_write_ms_per_patch": round(store_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_real = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    parser.add_argument(
        "--real-dir", type=Path, default=default_real, help="real test files (default: %(default)s)"
    )
    args = parser.parse_args()
    cv2.setNumThreads(1)
    work = Path(tempfile.mkdtemp(prefix="store_codecs_"))
    try:
        samples = sample_patches(args.real_dir, work)
        print(f"{'KB/patch, encode ms, decode ms (CPU)':48s} " + "  ".join(f"{k[:17]:>17s}" for k in samples))
        results = measure(samples)
        writes = write_paths(samples["generated SVS, synthetic_tissue"], work)
        chosen = next(iter(results))
        summary = {
            "patch_size": P,
            "samples": {name: len(patches) for name, patches in samples.items()},
            "write_paths": writes,
            "store_ms": {
                name: {k: v[k] for k in ("encode_ms", "decode_ms")} for name, v in results[chosen].items()
            },
            "kb_per_patch": {
                method: {name: v["kb"] for name, v in row.items()} for method, row in results.items()
            },
        }
        print(json.dumps(summary))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
