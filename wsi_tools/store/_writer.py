"""Writing one slide crash-safely: a temporary group, shards as they fill, one rename to commit."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from wsi_tools import __version__
from wsi_tools.errors import StoreError
from wsi_tools.provenance import now_iso
from wsi_tools.store import _codec
from wsi_tools.store._format import (
    DEFAULT_PATCHES_PER_SHARD,
    OLD_PREFIX,
    SMALL_ARRAY_TYPES,
    SMALL_CHUNK_ROWS,
    SMALL_CODECS,
    STATUS_COMPLETE,
    STATUS_WRITING,
    TEMP_PREFIX,
    array_meta,
    exchange_paths,
    group_meta,
    jsonable,
    read_json,
    small_array_digest,
    write_json,
    write_json_atomic,
    write_small_chunks,
)

if TYPE_CHECKING:
    from wsi_tools.store._store import PatchStore


class _ShardStream:
    """One shard file written as its patches arrive: encoded chunks are appended
    in patch order (none is held longer than it takes to reach its turn: holding a
    shard's 30 MB until it is full cost page faults worth a fifth of the
    encoding), then the index and its checksum at the end (``_codec.shard_tail``)."""

    def __init__(self, path: Path, first: int, last: int, chunks_per_shard: int) -> None:
        self.path, self.first, self.last = path, first, last
        self.next = first
        self.pending: dict[int, list[bytes] | Future[list[bytes]]] = {}
        self.index = np.full((chunks_per_shard, 2), _codec.EMPTY, dtype="<u8")
        self.offset = 0
        self.handle: BinaryIO | None = None

    @property
    def complete(self) -> bool:
        return self.next == self.last

    def append_ready(self, wait: bool) -> int:
        written = 0
        while self.next in self.pending:
            job = self.pending[self.next]
            if isinstance(job, Future) and not (wait or job.done()):
                break
            chunks = job.result() if isinstance(job, Future) else job
            del self.pending[self.next]
            if self.handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.handle = open(self.path, "wb")  # noqa: SIM115 - closed in close()/discard()
            for chunk in chunks:
                self.index[self.next - self.first] = (self.offset, len(chunk))
                self.handle.write(chunk)
                self.offset += len(chunk)
                written += len(chunk)
                self.next += 1
        return written

    def close(self) -> int:
        tail = _codec.shard_tail(self.index)
        assert self.handle is not None
        with self.handle:
            self.handle.write(tail)
        self.handle = None
        return len(tail)

    def discard(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


class SlideWriter:
    """Writes one slide's patches under a temporary group; :meth:`commit` makes
    it visible as complete in one rename, :meth:`abort` removes it.

    ``write`` accepts blocks in any order. Patches are encoded as they come
    (on ``threads`` background threads when > 1) and a shard file is written
    as soon as all its patches are in, so memory holds at most a few shards
    of compressed bytes.
    """

    def __init__(
        self,
        store: PatchStore,
        slide_id: str,
        n_patches: int,
        patch_size: int,
        attrs: dict[str, Any],
        *,
        patches_per_shard: int = DEFAULT_PATCHES_PER_SHARD,
        threads: int = 1,
        compression: str = "fast",
    ) -> None:
        if compression not in _codec.COMPRESSIONS:
            raise ValueError(f"compression must be one of {_codec.COMPRESSIONS}, got {compression!r}")
        self.compression = compression

        self.store = store
        self.slide_id = slide_id
        self.n_patches = n_patches
        self.patch_size = patch_size
        self.patches_per_shard = max(1, min(patches_per_shard, n_patches))
        self.temp_name = f"{TEMP_PREFIX}{slide_id}-{uuid.uuid4().hex[:12]}"
        self.group_dir = store.slides_dir / self.temp_name
        self.bytes_written = 0
        self._written = np.zeros(n_patches, bool)
        self._coords = np.zeros((n_patches, 2), np.int64)
        self._labels = np.zeros(n_patches, np.int8)
        self._tissue = np.zeros(n_patches, np.float32)
        self._shards: dict[int, _ShardStream] = {}
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="encode") if threads > 1 else None
        self._in_flight: list[Future[list[bytes]]] = []
        self._threads = threads
        self._closed = False

        self.attrs = {
            **attrs,
            "slide_id": slide_id,
            "status": STATUS_WRITING,
            "n_patches": n_patches,
            "patch_size": patch_size,
            "tool_version": __version__,
            "image_encoder": _codec.image_encoder(compression),
            "started": attrs.get("started", now_iso()),
        }
        # Metadata written directly: zarr-python's own create path is most of a
        # small slide's fixed cost. test_store checks that plain zarr reads the result.
        self.group_dir.mkdir()
        write_json(self.group_dir / "zarr.json", group_meta(jsonable(self.attrs)))
        images_meta = array_meta(
            (n_patches, patch_size, patch_size, 3),
            "uint8",
            (self.patches_per_shard, patch_size, patch_size, 3),
            _codec.zarr_image_codecs_json(patch_size, compression),
        )
        images_meta["dimension_names"] = ["patch", "y", "x", "channel"]
        (self.group_dir / "images").mkdir()
        write_json(self.group_dir / "images" / "zarr.json", images_meta)
        self._small_rows = min(max(n_patches, 1), SMALL_CHUNK_ROWS)
        for name, (dtype, shape) in SMALL_ARRAY_TYPES.items():
            full_shape = (n_patches, *shape)
            (self.group_dir / name).mkdir()
            meta = array_meta(full_shape, dtype, (self._small_rows, *shape), SMALL_CODECS)
            write_json(self.group_dir / name / "zarr.json", meta)

    def __enter__(self) -> SlideWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None and not self._closed:
            self.abort()

    # ---- patches in ----------------------------------------------------------

    def write(
        self,
        start: int,
        images: np.ndarray,
        coords: np.ndarray,
        labels: np.ndarray,
        tissue_fraction: np.ndarray,
    ) -> None:
        """Patches ``start .. start + len(images)``: (k, P, P, 3) uint8 images,
        (k, 2) level-0 top-left coords, (k,) labels, (k,) tissue fractions.

        With ``threads > 1`` the images are encoded in the background: do not
        modify the array after handing it over."""
        p = self.patch_size
        if images.dtype != np.uint8 or images.shape[1:] != (p, p, 3):
            raise ValueError(f"images must be (k, {p}, {p}, 3) uint8, got {images.shape} {images.dtype}")
        self._accept(start, images, coords, labels, tissue_fraction, self._encode_job)

    def write_encoded(
        self,
        start: int,
        chunks: Sequence[bytes],
        coords: np.ndarray,
        labels: np.ndarray,
        tissue_fraction: np.ndarray,
    ) -> None:
        """As :meth:`write`, for patches already encoded with
        :func:`_codec.encode_patch` at this writer's ``compression`` (by a
        caller that encodes where it decoded, while the pixels are still in
        that core's cache)."""
        self._accept(start, chunks, coords, labels, tissue_fraction, list)

    def _accept(
        self,
        start: int,
        patches: Sequence[Any] | np.ndarray,
        coords: np.ndarray,
        labels: np.ndarray,
        tissue_fraction: np.ndarray,
        make_job: Callable[[Any], list[bytes] | Future[list[bytes]]],
    ) -> None:
        if self._closed:
            raise StoreError(f"slide {self.slide_id!r}: write after commit or abort")
        count = len(patches)
        if not (len(coords) == len(labels) == len(tissue_fraction) == count):
            raise ValueError("patches, coords, labels and tissue_fraction must have the same length")
        if start < 0 or start + count > self.n_patches:
            raise ValueError(f"patches {start}..{start + count} outside 0..{self.n_patches}")
        stop = start + count
        self._coords[start:stop] = np.asarray(coords, np.int64).reshape(count, 2)
        self._labels[start:stop] = np.asarray(labels).astype(np.int8)
        self._tissue[start:stop] = np.asarray(tissue_fraction, np.float32)
        self._written[start:stop] = True
        # Split the block at shard boundaries; each piece is one job.
        position = start
        while position < stop:
            shard = position // self.patches_per_shard
            piece_stop = min(stop, (shard + 1) * self.patches_per_shard)
            stream = self._shards.get(shard)
            if stream is None:
                first, last = self._shard_range(shard)
                path = _codec.shard_path(self.group_dir / "images", shard)
                stream = self._shards[shard] = _ShardStream(path, first, last, self.patches_per_shard)
            stream.pending[position] = make_job(patches[position - start : piece_stop - start])
            position = piece_stop
            self._advance(shard, wait=False)

    def _encode_job(self, piece: np.ndarray) -> list[bytes] | Future[list[bytes]]:
        if self._pool is None:
            return [_codec.encode_patch(patch, self.compression) for patch in piece]
        # Bound the memory held by queued raw images.
        self._in_flight = [job for job in self._in_flight if not job.done()]
        while len(self._in_flight) >= 2 * self._threads:
            self._in_flight.pop(0).result()
        job = self._pool.submit(
            lambda block: [_codec.encode_patch(p, self.compression) for p in block], piece
        )
        self._in_flight.append(job)
        return job

    def _shard_range(self, shard: int) -> tuple[int, int]:
        first = shard * self.patches_per_shard
        return first, min(self.n_patches, first + self.patches_per_shard)

    def _advance(self, shard: int, wait: bool) -> None:
        """Append the shard's encoded patches that are next in order (waiting for
        pending encodes when ``wait``); close the shard once it is full."""
        stream = self._shards[shard]
        self.bytes_written += stream.append_ready(wait)
        if stream.complete:
            self.bytes_written += stream.close()
            del self._shards[shard]

    # ---- finishing -----------------------------------------------------------

    def commit(self, extra_attrs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Flush, write the small arrays and attributes, then rename the group
        into place; ``status: complete`` is the last thing written before the
        rename. Replaces an existing complete slide (the caller asked for it)."""
        if self._closed:
            raise StoreError(f"slide {self.slide_id!r}: commit after commit or abort")
        try:
            missing = np.flatnonzero(~self._written)
            if len(missing):
                raise StoreError(
                    f"slide {self.slide_id!r}: {len(missing)} of {self.n_patches} patches never written "
                    f"(first {missing[0]}); nothing was committed"
                )
            for shard in sorted(self._shards):
                self._advance(shard, wait=True)
            if self._shards:  # cannot happen once every patch is written; never commit a short shard
                raise StoreError(f"slide {self.slide_id!r}: shards {sorted(self._shards)} incomplete")
            small: dict[str, np.ndarray] = {
                "coords": self._coords,
                "labels": self._labels,
                "tissue_fraction": self._tissue,
            }
            for name, values in small.items():
                write_small_chunks(self.group_dir / name, values, self._small_rows)
            self.attrs.update(extra_attrs or {})
            self.attrs["small_arrays"] = {name: small_array_digest(values) for name, values in small.items()}
            self.attrs.update(
                {
                    "status": STATUS_COMPLETE,
                    "finished": now_iso(),
                    "write_id": uuid.uuid4().hex,
                    "images_bytes": self.bytes_written,
                }
            )
            meta_path = self.group_dir / "zarr.json"
            meta = read_json(meta_path)
            meta["attributes"] = jsonable(self.attrs)
            write_json_atomic(meta_path, meta)
            self._swap_into_place()
        except BaseException:
            self.abort()
            raise
        self._close_pool()
        self._closed = True
        return dict(self.attrs)

    def _swap_into_place(self) -> None:
        """Make the written group the slide. Replacing a slide swaps the two groups
        atomically where the system can; elsewhere the old one is renamed aside first,
        and a crash between the two renames leaves it complete under ``.old-``, put
        back by the next writer that opens the store (:meth:`PatchStore.restore_interrupted`)."""
        final = self.store.slides_dir / self.slide_id
        written = self.group_dir
        self.group_dir = final
        if not final.exists():
            os.rename(written, final)
            return
        if exchange_paths(written, final):
            shutil.rmtree(written, ignore_errors=True)  # now the old group, under the temporary name
            return
        aside = self.store.slides_dir / f"{OLD_PREFIX}{self.slide_id}-{uuid.uuid4().hex[:12]}"
        os.rename(final, aside)
        os.rename(written, final)
        shutil.rmtree(aside, ignore_errors=True)

    def abort(self) -> None:
        """Drop everything written so far; the store looks as before."""
        self._closed = True
        self._close_pool()
        for stream in self._shards.values():
            stream.discard()
        self._shards.clear()
        if self.group_dir.name.startswith(TEMP_PREFIX):
            shutil.rmtree(self.group_dir, ignore_errors=True)

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
