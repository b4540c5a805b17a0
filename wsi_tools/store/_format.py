"""The store's on-disk format: names, the slide id rule, zarr.json documents and the small arrays' chunks, written exactly as zarr-python writes them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from wsi_tools._atomic import write_atomically
from wsi_tools.errors import ConfigError, StoreError
from wsi_tools.store import _codec

SCHEMA = "wsi-tools/patch-store"
FORMAT_VERSION = 1
SLIDES_GROUP = "slides"
TEMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"  # a complete slide set aside by an --overwrite until the new one is in place
DELETED_PREFIX = ".del-"  # a slide being deleted: never put back
LEFTOVER_PREFIXES = (TEMP_PREFIX, OLD_PREFIX, DELETED_PREFIX)
DEFAULT_PATCHES_PER_SHARD = 128
SMALL_ARRAYS = ("coords", "labels", "tissue_fraction")
STATUS_COMPLETE = "complete"
STATUS_WRITING = "writing"
MAX_SLIDE_ID_CHARS = 180  # leaves room for the temporary prefix and uuid in a 255-byte name


def sanitize_slide_id(text: str) -> str:
    """A slide id safe as one directory name: no separators, no '..', no leading dot."""
    cleaned = re.sub(r"[^\w.\-]+", "_", str(text))
    cleaned = re.sub(r"\.{2,}", ".", cleaned).strip("._ ")
    cleaned = cleaned[:MAX_SLIDE_ID_CHARS]
    if not cleaned:
        raise ConfigError(
            f"slide id {text!r} is empty once path separators, '..' and leading dots are removed; "
            "pass a plain name with --slide-id"
        )
    return cleaned


@contextmanager
def quiet_numcodecs() -> Iterator[None]:
    """zarr warns on every open that numcodecs.* codecs are outside the v3 spec."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")
        yield


def read_json(path: Path) -> dict[str, Any]:
    """A zarr.json document; damage (invalid UTF-8 or JSON, not an object) is a StoreError."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:
        raise StoreError(
            f"{path}: damaged metadata ({type(error).__name__}: {error}); re-extract that slide "
            "(wsi-tools extract ... --overwrite) or restore the file from a copy"
        ) from None
    if not isinstance(document, dict):
        raise StoreError(
            f"{path}: damaged metadata (not a JSON object); re-extract that slide or restore the file"
        )
    return document


def read_attributes(path: Path) -> dict[str, Any]:
    """The ``attributes`` object of a group's zarr.json; damage is a StoreError."""
    attributes = read_json(path).get("attributes", {})
    if not isinstance(attributes, dict):
        raise StoreError(f"{path}: damaged metadata (attributes is not an object); re-extract or restore it")
    return attributes


def write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(document, indent=2, default=json_default))


def json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(attrs, default=json_default))


SMALL_CHUNK_ROWS = 1 << 16
SMALL_ARRAY_TYPES = {"coords": ("int64", (2,)), "labels": ("int8", ()), "tissue_fraction": ("float32", ())}
SMALL_ZSTD_LEVEL = 3
SMALL_CODECS: list[dict[str, Any]] = [
    {"name": "bytes", "configuration": {"endian": "little"}},
    {"name": "zstd", "configuration": {"level": SMALL_ZSTD_LEVEL, "checksum": False}},
    {"name": "crc32c"},
]


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, default=json_default), encoding="utf-8")


def group_meta(attributes: dict[str, Any]) -> dict[str, Any]:
    return {"attributes": attributes, "zarr_format": 3, "node_type": "group"}


def array_meta(
    shape: tuple[int, ...], dtype: str, chunk_shape: tuple[int, ...], codecs: list[dict[str, Any]]
) -> dict[str, Any]:
    """A zarr v3 array zarr.json with the fields zarr-python writes."""
    return {
        "shape": list(shape),
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk_shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": codecs,
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def small_chunk_path(array_dir: Path, chunk: int, ndim: int) -> Path:
    """Where chunk ``chunk`` of a small array lives (``c/<chunk>/0...`` for trailing dimensions)."""
    return array_dir.joinpath("c", str(chunk), *(["0"] * (ndim - 1)))


def small_array_digest(values: np.ndarray) -> str:
    """sha256 (16 hex digits) of an array's little-endian bytes. Written into the
    slide's attributes at commit: a chunk that zarr fills with zeros (a deleted
    file) or one replaced by another slide's cannot pass it."""
    little = np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<"), copy=False))
    return hashlib.sha256(little.tobytes()).hexdigest()[:16]


def write_small_chunks(array_dir: Path, values: np.ndarray, chunk_rows: int) -> None:
    """Chunks of ``chunk_rows`` rows (the last one padded with the fill value 0,
    as the regular chunk grid stores it): little-endian bytes, zstd, crc32c."""
    import imagecodecs

    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    for chunk, start in enumerate(range(0, len(values), chunk_rows)):
        block = np.zeros((chunk_rows, *values.shape[1:]), little.dtype)
        piece = little[start : start + chunk_rows]
        block[: len(piece)] = piece
        path = small_chunk_path(array_dir, chunk, values.ndim)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            _codec.checksummed(bytes(imagecodecs.zstd_encode(block.tobytes(), level=SMALL_ZSTD_LEVEL)))
        )


def _load_renameat2() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2 = _load_renameat2()


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two existing directories in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``): at every instant each name holds a complete directory.
    False where the system or the file system cannot (the caller falls back)."""
    if _renameat2 is None:
        return False
    import ctypes

    result = _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not on this system or file system
        return False
    raise OSError(error, os.strerror(error), str(first), None, str(second))
