"""zstd compression of patch residuals at a fast level that keeps entropy coding.

Python's zstd bindings (imagecodecs, numcodecs, zstandard) take only a level.
Negative ("fast") levels skip most match finding, which is nearly all of
zstd's time on image residuals, but they also store literals raw, which
grows a patch 40-90 %. libzstd can keep Huffman-coding the literals at a
negative level (``ZSTD_c_literalCompressionMode``); that parameter is in its
advanced API, reached here with ctypes. The frames are ordinary zstd frames:
any zstd decoder (zarr's ``zstd`` codec included) reads them.

Level -30 with minimum match 7, hash log 14 and Huffman literals encodes a
patch in about half of level 1's time for a few percent more bytes
(``docs/store.md`` has the measurements).

The library is the libzstd that the imagecodecs wheel ships (so a clean
install has it), else the system's. Where neither loads, or it is not a
1.5.x, :func:`compress` uses imagecodecs at level 1 (same format, slower,
slightly smaller): set ``WSI_TOOLS_FAST_ZSTD=0`` to force that path, or ask
for it per store with the extraction setting ``compression: compact``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np

FAST_LEVEL = -30
FAST_MIN_MATCH = 7
FAST_WINDOW_LOG = 18  # a 256 KiB window: as small, slightly faster than the level's default
FAST_HASH_LOG = 14  # one above the level's: -30 then packs the x20 benchmark patches as -20 did
FALLBACK_LEVEL = 1
# The literal-compression parameter's number is in zstd's experimental API,
# whose values may change between minor versions: only 1.5.x is trusted.
MIN_VERSION, MAX_VERSION = 10500, 10600

# ZSTD_cParameter values (zstd.h; the last is ZSTD_c_experimentalParam5)
_COMPRESSION_LEVEL = 100
_WINDOW_LOG = 101
_HASH_LOG = 102
_MIN_MATCH = 105
_LITERAL_COMPRESSION_MODE = 1002
_LITERALS_HUFFMAN = 1  # ZSTD_ps_enable


def _candidate_libraries() -> Iterator[str]:
    """The wheel's libzstd first; the system's only if needed (``find_library``
    runs ``ldconfig``, a subprocess)."""
    wheel_libs = Path(imagecodecs.__file__).resolve().parent.parent / "imagecodecs.libs"
    yield from (str(path) for path in sorted(wheel_libs.glob("libzstd*")))
    system = ctypes.util.find_library("zstd")
    if system:
        yield system


def _bind(path: str) -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(path)
        lib.ZSTD_versionNumber.restype = ctypes.c_uint
        if not MIN_VERSION <= lib.ZSTD_versionNumber() < MAX_VERSION:
            return None
        lib.ZSTD_createCCtx.restype = ctypes.c_void_p
        lib.ZSTD_freeCCtx.argtypes = [ctypes.c_void_p]
        lib.ZSTD_CCtx_reset.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.ZSTD_CCtx_reset.restype = ctypes.c_size_t
        lib.ZSTD_CCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.ZSTD_CCtx_setParameter.restype = ctypes.c_size_t
        lib.ZSTD_compress2.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        lib.ZSTD_compress2.restype = ctypes.c_size_t
        lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
        lib.ZSTD_compressBound.restype = ctypes.c_size_t
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        lib.ZSTD_isError.restype = ctypes.c_uint
    except (OSError, AttributeError):
        return None
    return lib


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("WSI_TOOLS_FAST_ZSTD", "1") == "0":
        return None
    for path in _candidate_libraries():
        lib = _bind(path)
        if lib is not None and _Context(lib).usable:
            return lib
    return None


class _Context:
    """One compression context with the fast parameters set (one per thread)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.handle = lib.ZSTD_createCCtx()
        self.buffer = np.empty(0, np.uint8)
        settings = (
            (_COMPRESSION_LEVEL, FAST_LEVEL),
            (_WINDOW_LOG, FAST_WINDOW_LOG),
            (_HASH_LOG, FAST_HASH_LOG),
            (_MIN_MATCH, FAST_MIN_MATCH),
            (_LITERAL_COMPRESSION_MODE, _LITERALS_HUFFMAN),
        )
        self.usable = bool(self.handle) and not any(
            lib.ZSTD_isError(lib.ZSTD_CCtx_setParameter(self.handle, key, value)) for key, value in settings
        )

    def compress(self, data: np.ndarray, spare: int) -> tuple[np.ndarray, int]:
        bound = self.lib.ZSTD_compressBound(data.nbytes) + spare
        if len(self.buffer) < bound:
            self.buffer = np.empty(bound, np.uint8)
        n = self.lib.ZSTD_compress2(
            self.handle, self.buffer.ctypes.data, len(self.buffer), data.ctypes.data, data.nbytes
        )
        if self.lib.ZSTD_isError(n):
            raise RuntimeError(f"libzstd failed to compress ({n})")
        return self.buffer, n

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            self.lib.ZSTD_freeCCtx(self.handle)


class _Contexts(threading.local):
    context: _Context | None = None


_contexts = _Contexts()


def available() -> bool:
    """Whether the fast path (libzstd's advanced API) is in use."""
    return _library() is not None


def describe(fast: bool = True) -> dict[str, object]:
    """What :func:`compress` does, for provenance."""
    if fast and available():
        return {
            "zstd_level": FAST_LEVEL,
            "window_log": FAST_WINDOW_LOG,
            "hash_log": FAST_HASH_LOG,
            "min_match": FAST_MIN_MATCH,
            "literals": "huffman",
        }
    return {"zstd_level": FALLBACK_LEVEL}


def compress(data: np.ndarray, fast: bool = True) -> bytes:
    """One zstd frame of contiguous ``data``: fast (above), or ``fast=False``:
    level 1, about 40 % slower to encode and 1-7 % smaller on H&E residuals."""
    buffer, n = compress_to_buffer(data, fast)
    return buffer[:n].tobytes()


def compress_to_buffer(data: np.ndarray, fast: bool = True, spare: int = 0) -> tuple[np.ndarray, int]:
    """As :func:`compress`, as ``(buffer, n)``: the frame is ``buffer[:n]`` and at
    least ``spare`` writable bytes follow it (room for a checksum, so the chunk
    is copied out once). The buffer is this thread's and is reused by its next call."""
    lib = _library() if fast else None
    if lib is None:
        # imagecodecs' stubs name bytes only; it encodes any buffer, arrays included.
        frame = imagecodecs.zstd_encode(data, level=FALLBACK_LEVEL)  # type: ignore[arg-type]
        buffer = np.empty(len(frame) + spare, np.uint8)
        buffer[: len(frame)] = np.frombuffer(frame, np.uint8)
        return buffer, len(frame)
    context = _contexts.context
    if context is None:
        context = _contexts.context = _Context(lib)
    return context.compress(np.ascontiguousarray(data), spare)
