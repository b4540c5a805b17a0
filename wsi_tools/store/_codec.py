"""The patch codec and the zarr v3 shard format, encoded and decoded by hand.

A patch (P, P, 3) uint8 RGB is one zarr chunk. Its codec chain, in zarr v3
order (see ``docs/store.md`` for the measurements behind it):

1. ``numcodecs.delta`` on the interleaved pixels: each byte minus the byte
   before it, so G-R and B-G differences (H&E channels move together);
2. ``transpose`` to planar (channel, row, column);
3. ``numcodecs.delta`` again: horizontal differences of those residuals;
4. ``bytes``, ``zstd``, ``crc32c`` (4 bytes, little endian). The zstd frames
   are written at a fast level that still Huffman-codes literals
   (:mod:`wsi_tools.store._zstd`); any zstd decoder reads them.

zarr-python reads this chain, but its writer cannot apply a delta before a
transpose (numcodecs array codecs hand back flat arrays), and its per-chunk
write path costs more CPU than encoding the patch itself. So shards are built here:
encoded chunks back to back, then the index of (offset, nbytes) uint64 pairs
(2**64-1 twice for a missing chunk) and the crc32c of that index, at the end,
exactly as the ``sharding_indexed`` codec writes them. ``imagecodecs`` does
the delta passes in C (numpy's cumsum on uint8 widens and copies).
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path
from typing import Any

import cv2
import google_crc32c
import imagecodecs
import numpy as np

from wsi_tools.store import _zstd

EMPTY = np.uint64(2**64 - 1)
INDEX_ENTRY_BYTES = 16
CHECKSUM_BYTES = 4


class ChunkError(ValueError):
    """A chunk or shard index failed its checksum or did not decode."""


COMPRESSIONS = ("fast", "compact")  # zstd: fast level with Huffman literals, or level 1


def image_encoder(compression: str = "fast") -> dict[str, object]:
    """How patches are encoded (the store records it per slide)."""
    return {
        "chain": "delta, transpose, delta, zstd, crc32c",
        "compression": compression,
        **_zstd.describe(compression == "fast"),
    }


def _zstd_level(compression: str = "fast") -> int:
    level = _zstd.describe(compression == "fast")["zstd_level"]
    assert isinstance(level, int)
    return level


def zarr_image_codecs() -> dict[str, object]:
    """Keyword arguments for ``zarr.create_array`` describing the chain above."""
    from zarr.codecs import BytesCodec, Crc32cCodec, TransposeCodec, ZstdCodec
    from zarr.codecs.numcodecs import Delta

    return {
        "filters": [Delta(dtype="|u1"), TransposeCodec(order=(0, 3, 1, 2)), Delta(dtype="|u1")],
        "serializer": BytesCodec(),
        "compressors": [ZstdCodec(level=_zstd_level()), Crc32cCodec()],
    }


def zarr_image_codecs_json(patch_size: int, compression: str = "fast") -> list[dict[str, Any]]:
    """The ``codecs`` of the images array's zarr.json: sharding with the chain
    above inside (what zarr-python writes for :func:`zarr_image_codecs`; the
    zstd level is the encoder's, a hint that decoders ignore)."""
    zstd_level = _zstd_level(compression)
    return [
        {
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": [1, patch_size, patch_size, 3],
                "codecs": [
                    {"name": "numcodecs.delta", "configuration": {"dtype": "|u1"}},
                    {"name": "transpose", "configuration": {"order": [0, 3, 1, 2]}},
                    {"name": "numcodecs.delta", "configuration": {"dtype": "|u1"}},
                    {"name": "bytes"},
                    {"name": "zstd", "configuration": {"level": zstd_level, "checksum": False}},
                    {"name": "crc32c"},
                ],
                "index_codecs": [
                    {"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "crc32c"},
                ],
                "index_location": "end",
            },
        }
    ]


def checksummed(payload: bytes) -> bytes:
    """``payload`` followed by its crc32c, as zarr's ``crc32c`` codec writes it."""
    return payload + _checksum(payload)


def _checksum(data: bytes | memoryview | np.ndarray) -> bytes:
    # google_crc32c takes bytes or numpy arrays, not memoryviews.
    buffer = data if isinstance(data, bytes) else np.frombuffer(data, np.uint8)
    return struct.pack("<I", google_crc32c.value(buffer))


class _Workspace(threading.local):
    """Scratch buffers reused across patches: a fresh 0.75 MB array per pass
    costs page faults worth more than the delta pass itself."""

    def buffers(self, patch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if getattr(self, "patch_size", None) != patch_size:
            n_bytes = 3 * patch_size * patch_size
            self.patch_size = patch_size
            self.first = np.empty(n_bytes, np.uint8)
            self.planar = np.empty((3, patch_size, patch_size), np.uint8)
            self.second = np.empty(n_bytes, np.uint8)
            self.channels = [np.empty((patch_size, patch_size), np.uint8) for _ in range(3)]
            self.pixel_sum = np.empty(patch_size * patch_size, np.uint8)
            self.blue = np.zeros(patch_size * patch_size + 1, np.uint8)  # [0] stays 0
        return self.first, self.planar, self.second


_workspace = _Workspace()


def encode_patch(patch: np.ndarray, compression: str = "fast") -> bytes:
    """One (P, P, 3) uint8 patch to the bytes of its zarr chunk (``compression``:
    one of :data:`COMPRESSIONS`)."""
    if patch.dtype != np.uint8 or patch.ndim != 3 or patch.shape[2] != 3 or patch.shape[0] != patch.shape[1]:
        raise ValueError(f"a patch must be (P, P, 3) uint8, got {patch.shape} {patch.dtype}")
    _, planar, second = _workspace.buffers(patch.shape[0])
    # Steps 1 and 2 at once, on planes: the interleaved delta is G-R and B-G at
    # each pixel and R minus the previous pixel's B (uint8 arithmetic wraps).
    red, green, blue = cv2.split(np.ascontiguousarray(patch), _workspace.channels)
    np.subtract(green, red, out=planar[1])
    np.subtract(blue, green, out=planar[2])
    first_plane = planar[0].reshape(-1)
    np.subtract(red.reshape(-1)[1:], blue.reshape(-1)[:-1], out=first_plane[1:])
    first_plane[0] = red[0, 0]
    imagecodecs.delta_encode(planar.reshape(-1), out=second)
    buffer, n = _zstd.compress_to_buffer(second, fast=compression == "fast", spare=CHECKSUM_BYTES)
    buffer[n : n + CHECKSUM_BYTES] = np.frombuffer(_checksum(buffer[:n]), np.uint8)
    return buffer[: n + CHECKSUM_BYTES].tobytes()


def check_chunk(chunk: bytes | memoryview) -> memoryview:
    """The compressed payload of a chunk, after checking its crc32c."""
    view = memoryview(chunk)
    if len(view) < CHECKSUM_BYTES:
        raise ChunkError("chunk shorter than its checksum")
    payload, stored = view[:-CHECKSUM_BYTES], bytes(view[-CHECKSUM_BYTES:])
    if _checksum(payload) != stored:
        raise ChunkError("chunk crc32c mismatch")
    return payload


def decompress_chunk(chunk: bytes | memoryview, patch_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Check and decompress a chunk to its delta residuals (what verify needs)."""
    payload = check_chunk(chunk)
    n_bytes = 3 * patch_size * patch_size
    if out is None:
        out = np.empty(n_bytes, np.uint8)
    try:
        # imagecodecs' stubs name bytes only; it decodes from and into any buffer.
        residual = imagecodecs.zstd_decode(payload, out=out)  # type: ignore[arg-type]
    except Exception as error:  # imagecodecs raises its own ZstdError
        raise ChunkError(f"chunk does not decode: {error}") from error
    if len(residual) != n_bytes:
        raise ChunkError(f"chunk decodes to {len(residual)} bytes, expected {n_bytes}")
    return out


def decode_patch(chunk: bytes | memoryview, patch_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """The bytes of one chunk back to its (P, P, 3) uint8 patch (into ``out`` if given).

    Inverting the interleaved delta is a running sum over all 3·P² bytes; on
    planes it is one over P² (the per-pixel sums of the three channel residuals
    give blue, then red and green follow by addition), which saves a third of
    the decode time.
    """
    _, planar, second = _workspace.buffers(patch_size)
    residual = decompress_chunk(chunk, patch_size, out=second)
    imagecodecs.delta_decode(residual, out=planar.reshape(-1))
    red_step, green_step, blue_step = planar.reshape(3, -1)  # R - previous B, G - R, B - G
    pixel_sum, blue = _workspace.pixel_sum, _workspace.blue
    np.add(red_step, green_step, out=pixel_sum)
    np.add(pixel_sum, blue_step, out=pixel_sum)
    imagecodecs.delta_decode(pixel_sum, out=blue[1:])  # blue[k + 1]: blue of pixel k
    red = np.add(blue[:-1], red_step, out=pixel_sum)
    green = np.add(red, green_step, out=green_step)
    if out is None:
        out = np.empty((patch_size, patch_size, 3), np.uint8)
    shape = (patch_size, patch_size)
    cv2.merge([red.reshape(shape), green.reshape(shape), blue[1:].reshape(shape)], out)
    return out


def shard_tail(index: np.ndarray) -> bytes:
    """What follows a shard's chunks: its (n, 2) index of (offset, nbytes) as
    little-endian uint64 (``EMPTY`` twice for a missing chunk), then the index's crc32c."""
    index_bytes = np.ascontiguousarray(index, dtype="<u8").tobytes()
    return index_bytes + _checksum(index_bytes)


def shard_index_bytes(chunks_per_shard: int) -> int:
    return chunks_per_shard * INDEX_ENTRY_BYTES + CHECKSUM_BYTES


def parse_shard_index(tail: bytes, chunks_per_shard: int) -> np.ndarray:
    """The (chunks_per_shard, 2) offsets and lengths from a shard's index bytes."""
    expected = shard_index_bytes(chunks_per_shard)
    if len(tail) != expected:
        raise ChunkError(f"shard index is {len(tail)} bytes, expected {expected}")
    body = tail[:-CHECKSUM_BYTES]
    if _checksum(body) != tail[-CHECKSUM_BYTES:]:
        raise ChunkError("shard index crc32c mismatch")
    return np.frombuffer(body, dtype="<u8").reshape(chunks_per_shard, 2)


def shard_path(array_dir: Path, shard: int) -> Path:
    """The file of shard ``shard`` of a 4-d array under the default '/' chunk keys."""
    return array_dir / "c" / str(shard) / "0" / "0" / "0"


def read_shard_index(path: Path, chunks_per_shard: int) -> np.ndarray:
    size = shard_index_bytes(chunks_per_shard)
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        if handle.tell() < size:
            raise ChunkError(f"shard file {path} is shorter than its index")
        handle.seek(-size, 2)
        return parse_shard_index(handle.read(size), chunks_per_shard)
