"""Random access to one slide's patches, straight from the shard files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsi_tools.errors import StoreError
from wsi_tools.store import _codec


class PatchReader:
    """Fast random access to one slide's patches, bypassing zarr's per-chunk
    machinery (same bytes, same checks). Holds no open files, so it pickles
    into DataLoader workers; shard indexes are cached after the first read."""

    def __init__(self, array_dir: Path, n_patches: int, patch_size: int, patches_per_shard: int) -> None:
        self.array_dir = Path(array_dir)
        self.n_patches = n_patches
        self.patch_size = patch_size
        self.patches_per_shard = patches_per_shard
        self._indexes: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n_patches

    def _index(self, shard: int) -> np.ndarray:
        index = self._indexes.get(shard)
        if index is None:
            path = _codec.shard_path(self.array_dir, shard)
            try:
                index = _codec.read_shard_index(path, self.patches_per_shard)
            except FileNotFoundError as error:
                raise StoreError(f"shard {path} is missing; run wsi-tools verify on the store") from error
            except _codec.ChunkError as error:
                raise StoreError(f"{path}: {error}; re-extract this slide with --overwrite") from error
            self._indexes[shard] = index
        return index

    def _locate(self, i: int) -> tuple[int, int, int]:
        """(shard, offset, nbytes) of patch ``i``'s chunk."""
        if not 0 <= i < self.n_patches:
            raise IndexError(f"patch {i} out of range 0..{self.n_patches - 1}")
        shard, position = divmod(int(i), self.patches_per_shard)
        offset, nbytes = (int(v) for v in self._index(shard)[position])
        if offset == int(_codec.EMPTY):
            raise StoreError(f"patch {i} of {self.array_dir} was never written; re-extract the slide")
        return shard, offset, nbytes

    def chunk_bytes(self, i: int) -> bytes:
        shard, offset, nbytes = self._locate(i)
        with open(_codec.shard_path(self.array_dir, shard), "rb") as handle:
            handle.seek(offset)
            return handle.read(nbytes)

    def _decode(self, i: int, chunk: bytes, out: np.ndarray | None) -> np.ndarray:
        try:
            return _codec.decode_patch(chunk, self.patch_size, out=out)
        except _codec.ChunkError as error:
            raise StoreError(f"patch {i} of {self.array_dir}: {error}; re-extract this slide") from error

    def read(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        return self._decode(i, self.chunk_bytes(i), out)

    def read_many(
        self,
        indices: Sequence[int] | np.ndarray,
        out: np.ndarray | None = None,
        out_rows: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Patches ``indices`` as (k, P, P, 3), or into rows ``out_rows`` (default
        0..k-1) of ``out``; each shard file is opened once per run of indices in
        it (sorted indices read every shard once)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        batch = (
            np.empty((len(indices), self.patch_size, self.patch_size, 3), np.uint8) if out is None else out
        )
        rows = range(len(indices)) if out_rows is None else np.asarray(out_rows).tolist()
        fd: int | None = None
        fd_shard = -1
        try:
            for row, i in zip(rows, indices.tolist(), strict=True):
                shard, offset, nbytes = self._locate(i)
                if shard != fd_shard:
                    if fd is not None:
                        os.close(fd)
                        fd = None
                    fd, fd_shard = os.open(_codec.shard_path(self.array_dir, shard), os.O_RDONLY), shard
                assert fd is not None
                self._decode(i, os.pread(fd, nbytes, offset), batch[row])
        finally:
            if fd is not None:
                os.close(fd)
        return batch
