"""Weak-set embeddings, computed once and cached in the run folder as zarr.

The features are the trainer's own (:func:`wsi_tools.train.embed_patches`:
evaluation transform, penultimate 512-d layer, GPU and autocast when there is
one), computed block by block so that a weak set of millions of patches never
sits in memory, and written as a zarr array that the kNN search streams. The
cache is keyed by the checkpoint's bytes, the store's fingerprint and the
model's input size: a second mining run with the same model and store reads
the features back instead of recomputing them.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_tools.train.data import PatchTable

CACHE_SCHEMA = "wsi-tools/embeddings"
ROWS_PER_CHUNK = 4096
ROWS_PER_BLOCK = 16384  # patches embedded per call (bounded memory)


def file_digest(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (a ResNet18 checkpoint is ~100 MB: well under a second)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def cache_key(checkpoint_digest: str, store_fingerprint: str, input_size: int) -> str:
    text = f"{checkpoint_digest}|{store_fingerprint}|{input_size}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _table_digest(table: PatchTable) -> str:
    digest = hashlib.sha256()
    digest.update("\n".join(map(str, table.slide_ids)).encode())
    digest.update(np.ascontiguousarray(table.indices, dtype=np.int64).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class FeatureCache:
    """``features``: a zarr array (N, 512) float32 in ``table`` order."""

    path: Path
    features: Any
    reused: bool


def cached_features(
    model: Any,
    store_path: str | Path,
    table: PatchTable,
    cache_dir: str | Path,
    key: str,
    *,
    batch_size: int = 128,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = False,
    rows_per_block: int = ROWS_PER_BLOCK,
) -> FeatureCache:
    """Features of every patch of ``table``, cached under ``cache_dir/<key>.zarr``.

    A complete cache of the same table is reused as is; anything else there
    (an interrupted run, another table) is replaced.
    """
    import zarr
    from tqdm import tqdm

    from wsi_tools.train.inference import embed_patches

    path = Path(cache_dir) / f"embeddings-{key}.zarr"
    digest = _table_digest(table)
    if path.exists():
        try:
            group = zarr.open_group(path, mode="r")
            if group.attrs.get("complete") and group.attrs.get("table_digest") == digest:
                return FeatureCache(path, group["features"], reused=True)
        except Exception:  # noqa: BLE001 - an unreadable cache is rebuilt
            pass
        shutil.rmtree(path)
    width = int(model.backbone.fc.in_features)
    group = zarr.open_group(path, mode="w")
    group.attrs.update({"schema": CACHE_SCHEMA, "key": key, "table_digest": digest, "complete": False})
    features = group.create_array(
        "features",
        shape=(len(table), width),
        chunks=(max(1, min(ROWS_PER_CHUNK, len(table))), width),
        dtype="float32",
    )
    # Blocks are whole numbers of chunks, so every write fills chunks completely.
    rows_per_block = max(ROWS_PER_CHUNK, rows_per_block // ROWS_PER_CHUNK * ROWS_PER_CHUNK)
    refs = table.refs
    with tqdm(
        total=len(table),
        desc="embedding weak set",
        unit="patch",
        file=sys.stderr,
        disable=not (progress and sys.stderr.isatty()),
    ) as bar:
        for start in range(0, len(table), rows_per_block):
            block = refs[start : start + rows_per_block]
            features[start : start + len(block)] = embed_patches(
                model, store_path, block, batch_size, device, num_workers=num_workers
            )
            bar.update(len(block))
    group.attrs["complete"] = True
    return FeatureCache(path, features, reused=False)
