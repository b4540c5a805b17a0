"""The zarr v3 patch store: one group per slide, written crash-safely.

Layout and codecs are documented in ``docs/store.md``. The store is a
directory on a local or shared POSIX filesystem: a slide is written under
``slides/.tmp-<id>-<uuid>`` and made visible by renaming that directory to
``slides/<id>``, so a reader never sees a half-written slide. Image shards
are encoded and written by :mod:`wsi_tools.patch_codec`; the zarr.json
metadata and the small arrays' chunks are written here too, exactly as
zarr-python writes them, so plain ``zarr.open_group`` reads all (tested).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np

from wsi_tools import __version__, patch_codec
from wsi_tools.errors import ConfigError, StoreError
from wsi_tools.provenance import now_iso

if TYPE_CHECKING:
    import zarr

SCHEMA = "wsi-tools/patch-store"
FORMAT_VERSION = 1
SLIDES_GROUP = "slides"
TEMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
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
def _quiet_numcodecs() -> Iterator[None]:
    """zarr warns on every open that numcodecs.* codecs are outside the v3 spec."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")
        yield


def _read_json(path: Path) -> dict[str, Any]:
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


def _write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.part")
    temporary.write_text(json.dumps(document, indent=2, default=_json_default), encoding="utf-8")
    os.replace(temporary, path)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(attrs, default=_json_default))


@dataclass
class VerifyReport:
    """What ``verify`` found; ``ok`` is False on any problem or leftover."""

    store: Path
    slides_checked: int = 0
    patches_checked: int = 0
    problems: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.leftovers

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": str(self.store),
            "ok": self.ok,
            "slides_checked": self.slides_checked,
            "patches_checked": self.patches_checked,
            "problems": self.problems,
            "leftovers": self.leftovers,
        }


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
            path = patch_codec.shard_path(self.array_dir, shard)
            try:
                index = patch_codec.read_shard_index(path, self.patches_per_shard)
            except FileNotFoundError as error:
                raise StoreError(f"shard {path} is missing; run wsi-tools verify on the store") from error
            except patch_codec.ChunkError as error:
                raise StoreError(f"{path}: {error}; re-extract this slide with --overwrite") from error
            self._indexes[shard] = index
        return index

    def _locate(self, i: int) -> tuple[int, int, int]:
        """(shard, offset, nbytes) of patch ``i``'s chunk."""
        if not 0 <= i < self.n_patches:
            raise IndexError(f"patch {i} out of range 0..{self.n_patches - 1}")
        shard, position = divmod(int(i), self.patches_per_shard)
        offset, nbytes = (int(v) for v in self._index(shard)[position])
        if offset == int(patch_codec.EMPTY):
            raise StoreError(f"patch {i} of {self.array_dir} was never written; re-extract the slide")
        return shard, offset, nbytes

    def chunk_bytes(self, i: int) -> bytes:
        shard, offset, nbytes = self._locate(i)
        with open(patch_codec.shard_path(self.array_dir, shard), "rb") as handle:
            handle.seek(offset)
            return handle.read(nbytes)

    def _decode(self, i: int, chunk: bytes, out: np.ndarray | None) -> np.ndarray:
        try:
            return patch_codec.decode_patch(chunk, self.patch_size, out=out)
        except patch_codec.ChunkError as error:
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
                    fd, fd_shard = os.open(patch_codec.shard_path(self.array_dir, shard), os.O_RDONLY), shard
                assert fd is not None
                self._decode(i, os.pread(fd, nbytes, offset), batch[row])
        finally:
            if fd is not None:
                os.close(fd)
        return batch


class PatchStore:
    """A zarr v3 directory store of patches. ``mode="a"`` creates it if missing."""

    def __init__(self, path: str | Path, mode: Literal["r", "a"] = "r") -> None:
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        root_meta = self.path / "zarr.json"
        if mode == "a" and not root_meta.exists():
            if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                raise StoreError(
                    f"{self.path} exists and is not a patch store; give a new or empty directory for --out"
                )
            self._create()
        if not root_meta.exists():
            raise StoreError(
                f"{self.path} is not a patch store (no zarr.json); create one with "
                f"wsi-tools extract SLIDE --out {self.path}"
            )
        attrs = _read_json(root_meta).get("attributes", {})
        if attrs.get("schema") != SCHEMA:
            raise StoreError(
                f"{self.path} is a zarr store but not a {SCHEMA} (schema={attrs.get('schema')!r})"
            )
        if int(attrs.get("version", 0)) > FORMAT_VERSION:
            raise StoreError(
                f"{self.path} has store format version {attrs.get('version')}, newer than this "
                f"wsi-tools ({FORMAT_VERSION}); upgrade wsi-tools"
            )
        if mode == "a":
            self.slides_dir.mkdir(exist_ok=True)

    def __repr__(self) -> str:
        return f"PatchStore({str(self.path)!r}, mode={self.mode!r})"

    def _create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        attrs = {
            "schema": SCHEMA,
            "version": FORMAT_VERSION,
            "created": now_iso(),
            "tool": f"wsi-tools {__version__}",
            "layout": "slides/<slide_id>/{images,coords,labels,tissue_fraction}",
        }
        self.slides_dir.mkdir(exist_ok=True)
        _write_json_atomic(self.slides_dir / "zarr.json", _group_meta({}))
        _write_json_atomic(self.path / "zarr.json", _group_meta(attrs))  # last: marks the store

    @property
    def slides_dir(self) -> Path:
        return self.path / SLIDES_GROUP

    def attrs(self) -> dict[str, Any]:
        return _read_json(self.path / "zarr.json").get("attributes", {})

    # ---- reading -------------------------------------------------------------

    def _group_names(self) -> list[str]:
        if not self.slides_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in os.scandir(self.slides_dir)
            if entry.is_dir() and (Path(entry.path) / "zarr.json").exists()
        )

    def _status(self, name: str) -> str | None:
        try:
            return _read_json(self.slides_dir / name / "zarr.json").get("attributes", {}).get("status")
        except (OSError, StoreError):
            return None

    def slide_ids(self, include_incomplete: bool = False) -> list[str]:
        """Visible slide groups; only complete ones unless ``include_incomplete``."""
        names = [name for name in self._group_names() if not name.startswith(".")]
        if include_incomplete:
            return names
        return [name for name in names if self._status(name) == STATUS_COMPLETE]

    def leftovers(self, slide_id: str | None = None) -> list[str]:
        """Temporary groups of interrupted writes (or of writes in progress elsewhere)."""
        names = (
            [
                entry.name
                for entry in os.scandir(self.slides_dir)
                if entry.name.startswith((TEMP_PREFIX, OLD_PREFIX))
            ]
            if self.slides_dir.is_dir()
            else []
        )
        if slide_id is not None:
            names = [name for name in names if _leftover_slide_id(name) == slide_id]
        return sorted(names)

    def remove_leftovers(self, slide_id: str | None = None) -> list[str]:
        self._require_writable()
        removed = self.leftovers(slide_id)
        for name in removed:
            shutil.rmtree(self.slides_dir / name, ignore_errors=True)
        return removed

    def is_complete(self, slide_id: str) -> bool:
        name = sanitize_slide_id(slide_id)
        return (self.slides_dir / name / "zarr.json").exists() and self._status(name) == STATUS_COMPLETE

    def _require_slide(self, slide_id: str) -> Path:
        group = self.slides_dir / slide_id
        if slide_id.startswith(".") or not (group / "zarr.json").exists():
            available = ", ".join(self.slide_ids()[:10]) or "none"
            raise StoreError(f"no slide {slide_id!r} in {self.path} (complete slides: {available})")
        return group

    def slide_attrs(self, slide_id: str) -> dict[str, Any]:
        return _read_json(self._require_slide(slide_id) / "zarr.json").get("attributes", {})

    def _open_array(self, slide_id: str, name: str) -> zarr.Array:
        import zarr

        self._require_slide(slide_id)
        with _quiet_numcodecs():
            return zarr.open_array(self.path, path=f"{SLIDES_GROUP}/{slide_id}/{name}", mode="r")

    def images(self, slide_id: str) -> zarr.Array:
        """The (N, P, P, 3) uint8 image array, through plain zarr (prefer :meth:`reader` for speed)."""
        return self._open_array(slide_id, "images")

    def coords(self, slide_id: str) -> np.ndarray:
        return np.asarray(self._open_array(slide_id, "coords")[:])

    def labels(self, slide_id: str) -> np.ndarray:
        return np.asarray(self._open_array(slide_id, "labels")[:])

    def tissue_fraction(self, slide_id: str) -> np.ndarray:
        return np.asarray(self._open_array(slide_id, "tissue_fraction")[:])

    def n_patches(self, slide_id: str) -> int:
        return int(self._image_meta(slide_id)["shape"][0])

    def _image_meta(self, slide_id: str) -> dict[str, Any]:
        return _read_json(self._require_slide(slide_id) / "images" / "zarr.json")

    def reader(self, slide_id: str) -> PatchReader:
        """A picklable fast reader of this slide's patches."""
        meta = self._image_meta(slide_id)
        n_patches, patch_size = int(meta["shape"][0]), int(meta["shape"][1])
        per_shard = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        return PatchReader(self.slides_dir / slide_id / "images", n_patches, patch_size, per_shard)

    def read_patches(self, slide_id: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """(k, P, P, 3) uint8 patches by index, decoded without zarr's overhead."""
        return self.reader(slide_id).read_many(indices)

    def fingerprint(self) -> str:
        """Changes whenever a complete slide is added, replaced or removed."""
        digest = hashlib.sha256(f"{SCHEMA}/{FORMAT_VERSION}".encode())
        for slide_id in self.slide_ids():
            attrs = self.slide_attrs(slide_id)
            digest.update(f"|{slide_id}:{attrs.get('write_id')}:{attrs.get('n_patches')}".encode())
        return digest.hexdigest()[:16]

    # ---- writing -------------------------------------------------------------

    def _require_writable(self) -> None:
        if self.mode != "a":
            raise StoreError(f"{self.path} was opened read-only; open it with mode='a' to write")

    def begin_slide(
        self,
        slide_id: str,
        n_patches: int,
        patch_size: int,
        attrs: dict[str, Any] | None = None,
        *,
        overwrite: bool = False,
        patches_per_shard: int = DEFAULT_PATCHES_PER_SHARD,
        threads: int = 1,
        compression: str = "fast",
    ) -> SlideWriter:
        """Start writing a slide under a temporary name (see :class:`SlideWriter`)."""
        self._require_writable()
        slide_id = sanitize_slide_id(slide_id)
        if n_patches < 0 or patch_size < 1:
            raise ValueError(f"need n_patches >= 0 and patch_size >= 1, got {n_patches}, {patch_size}")
        if self.is_complete(slide_id) and not overwrite:
            raise StoreError(
                f"slide {slide_id!r} is already complete in {self.path}; pass --overwrite to replace it"
            )
        self.remove_leftovers(slide_id)
        return SlideWriter(
            self,
            slide_id,
            n_patches,
            patch_size,
            dict(attrs or {}),
            patches_per_shard=patches_per_shard,
            threads=threads,
            compression=compression,
        )

    def delete_slide(self, slide_id: str) -> None:
        self._require_writable()
        group = self._require_slide(sanitize_slide_id(slide_id))
        aside = self.slides_dir / f"{OLD_PREFIX}{group.name}-{uuid.uuid4().hex[:12]}"
        os.rename(group, aside)
        shutil.rmtree(aside, ignore_errors=True)

    # ---- checking ------------------------------------------------------------

    def verify(self, decode: bool = True, progress: bool = False) -> VerifyReport:
        """Check every slide group: status, shapes, every chunk's checksum (and
        zstd frame when ``decode``), the small arrays; list leftovers."""
        from tqdm import tqdm

        report = VerifyReport(store=self.path, leftovers=self.leftovers())
        names = [name for name in self._group_names() if not name.startswith(".")]
        with tqdm(total=len(names), desc="verify", unit="slide", disable=not progress, leave=False) as bar:
            for name in names:
                report.problems.extend(self._verify_slide(name, decode, report))
                report.slides_checked += 1
                bar.update()
        return report

    def _verify_slide(self, name: str, decode: bool, report: VerifyReport) -> list[str]:
        problems: list[str] = []
        where = f"slides/{name}"
        try:
            attrs = self.slide_attrs(name)
        except (OSError, StoreError) as error:
            return [f"{where}/zarr.json: unreadable ({error})"]
        if attrs.get("status") != STATUS_COMPLETE:
            problems.append(f"{where}: status is {attrs.get('status')!r}, not complete; re-extract it")
        try:
            meta = self._image_meta(name)
            n_patches, patch_size = int(meta["shape"][0]), int(meta["shape"][1])
        except (OSError, ValueError, KeyError, IndexError, StoreError) as error:
            return [*problems, f"{where}/images: unreadable metadata ({error})"]
        if list(meta["shape"][1:]) != [patch_size, patch_size, 3] or meta["data_type"] != "uint8":
            problems.append(
                f"{where}/images: shape {meta['shape']} {meta['data_type']} is not (N, P, P, 3) uint8"
            )
        if attrs.get("patch_size") not in (None, patch_size):
            problems.append(f"{where}: patch_size attribute {attrs.get('patch_size')} != images {patch_size}")
        if attrs.get("n_patches") not in (None, n_patches):
            problems.append(f"{where}: n_patches attribute {attrs.get('n_patches')} != images {n_patches}")
        expected_shapes = {"coords": (n_patches, 2), "labels": (n_patches,), "tissue_fraction": (n_patches,)}
        for array_name, shape in expected_shapes.items():
            try:
                values = np.asarray(self._open_array(name, array_name)[:])
            except Exception as error:  # zarr raises ValueError on a crc mismatch, others on damage
                problems.append(f"{where}/{array_name}: unreadable ({type(error).__name__}: {error})")
                continue
            if values.shape != shape:
                problems.append(f"{where}/{array_name}: shape {values.shape}, expected {shape}")
        reader = self.reader(name)
        for i in range(n_patches):
            try:
                chunk = reader.chunk_bytes(i)
                if decode:
                    patch_codec.decompress_chunk(chunk, patch_size)
                else:
                    patch_codec.check_chunk(chunk)
            except (StoreError, patch_codec.ChunkError, OSError) as error:
                shard = i // reader.patches_per_shard
                problems.append(f"{where}/images: patch {i} (shard c/{shard}/0/0/0): {error}")
                if len(problems) > 50:
                    problems.append(f"{where}: too many problems, stopped checking this slide")
                    break
            report.patches_checked += 1
        return problems


def _leftover_slide_id(name: str) -> str:
    """'.tmp-<id>-<12 hex>' or '.old-<id>-<12 hex>' -> '<id>'."""
    body = name.removeprefix(TEMP_PREFIX).removeprefix(OLD_PREFIX)
    return body.rsplit("-", 1)[0]


class _ShardStream:
    """One shard file written as its patches arrive: encoded chunks are appended
    in patch order (none is held longer than it takes to reach its turn: holding a
    shard's 30 MB until it is full cost page faults worth a fifth of the
    encoding), then the index and its checksum at the end (``patch_codec.shard_tail``)."""

    def __init__(self, path: Path, first: int, last: int, chunks_per_shard: int) -> None:
        self.path, self.first, self.last = path, first, last
        self.next = first
        self.pending: dict[int, list[bytes] | Future[list[bytes]]] = {}
        self.index = np.full((chunks_per_shard, 2), patch_codec.EMPTY, dtype="<u8")
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
        tail = patch_codec.shard_tail(self.index)
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
        if compression not in patch_codec.COMPRESSIONS:
            raise ValueError(f"compression must be one of {patch_codec.COMPRESSIONS}, got {compression!r}")
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
            "image_encoder": patch_codec.image_encoder(compression),
            "started": attrs.get("started", now_iso()),
        }
        # Metadata written directly (zarr-python's own create path costs ~25 ms
        # of CPU per slide, most of a small slide's fixed cost); test_store
        # checks that plain zarr reads the result.
        self.group_dir.mkdir()
        _write_json(self.group_dir / "zarr.json", _group_meta(_jsonable(self.attrs)))
        images_meta = _array_meta(
            (n_patches, patch_size, patch_size, 3),
            "uint8",
            (self.patches_per_shard, patch_size, patch_size, 3),
            patch_codec.zarr_image_codecs_json(patch_size, compression),
        )
        images_meta["dimension_names"] = ["patch", "y", "x", "channel"]
        (self.group_dir / "images").mkdir()
        _write_json(self.group_dir / "images" / "zarr.json", images_meta)
        self._small_rows = min(max(n_patches, 1), SMALL_CHUNK_ROWS)
        for name, (dtype, shape) in SMALL_ARRAY_TYPES.items():
            full_shape = (n_patches, *shape)
            (self.group_dir / name).mkdir()
            meta = _array_meta(full_shape, dtype, (self._small_rows, *shape), SMALL_CODECS)
            _write_json(self.group_dir / name / "zarr.json", meta)

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
        :func:`patch_codec.encode_patch` at this writer's ``compression`` (by a
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
                path = patch_codec.shard_path(self.group_dir / "images", shard)
                stream = self._shards[shard] = _ShardStream(path, first, last, self.patches_per_shard)
            stream.pending[position] = make_job(patches[position - start : piece_stop - start])
            position = piece_stop
            self._advance(shard, wait=False)

    def _encode_job(self, piece: np.ndarray) -> list[bytes] | Future[list[bytes]]:
        if self._pool is None:
            return [patch_codec.encode_patch(patch, self.compression) for patch in piece]
        # Bound the memory held by queued raw images.
        self._in_flight = [job for job in self._in_flight if not job.done()]
        while len(self._in_flight) >= 2 * self._threads:
            self._in_flight.pop(0).result()
        job = self._pool.submit(
            lambda block: [patch_codec.encode_patch(p, self.compression) for p in block], piece
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
            for name, values in (
                ("coords", self._coords),
                ("labels", self._labels),
                ("tissue_fraction", self._tissue),
            ):
                _write_small_chunks(self.group_dir / name, values, self._small_rows)
            self.attrs.update(extra_attrs or {})
            self.attrs.update(
                {
                    "status": STATUS_COMPLETE,
                    "finished": now_iso(),
                    "write_id": uuid.uuid4().hex,
                    "images_bytes": self.bytes_written,
                }
            )
            meta_path = self.group_dir / "zarr.json"
            meta = _read_json(meta_path)
            meta["attributes"] = _jsonable(self.attrs)
            _write_json_atomic(meta_path, meta)
            self._swap_into_place()
        except BaseException:
            self.abort()
            raise
        self._close_pool()
        self._closed = True
        return dict(self.attrs)

    def _swap_into_place(self) -> None:
        final = self.store.slides_dir / self.slide_id
        aside = None
        if final.exists():
            aside = self.store.slides_dir / f"{OLD_PREFIX}{self.slide_id}-{uuid.uuid4().hex[:12]}"
            os.rename(final, aside)
        os.rename(self.group_dir, final)
        self.group_dir = final
        if aside is not None:
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


SMALL_CHUNK_ROWS = 1 << 16
SMALL_ARRAY_TYPES = {"coords": ("int64", (2,)), "labels": ("int8", ()), "tissue_fraction": ("float32", ())}
SMALL_ZSTD_LEVEL = 3
SMALL_CODECS: list[dict[str, Any]] = [
    {"name": "bytes", "configuration": {"endian": "little"}},
    {"name": "zstd", "configuration": {"level": SMALL_ZSTD_LEVEL, "checksum": False}},
    {"name": "crc32c"},
]


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, default=_json_default), encoding="utf-8")


def _group_meta(attributes: dict[str, Any]) -> dict[str, Any]:
    return {"attributes": attributes, "zarr_format": 3, "node_type": "group"}


def _array_meta(
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


def _write_small_chunks(array_dir: Path, values: np.ndarray, chunk_rows: int) -> None:
    """Chunks of ``chunk_rows`` rows (the last one padded with the fill value 0,
    as the regular chunk grid stores it): little-endian bytes, zstd, crc32c."""
    import imagecodecs

    trailing = ["0"] * (values.ndim - 1)
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    for chunk, start in enumerate(range(0, len(values), chunk_rows)):
        block = np.zeros((chunk_rows, *values.shape[1:]), little.dtype)
        piece = little[start : start + chunk_rows]
        block[: len(piece)] = piece
        path = array_dir.joinpath("c", str(chunk), *trailing)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            patch_codec.checksummed(bytes(imagecodecs.zstd_encode(block.tobytes(), level=SMALL_ZSTD_LEVEL)))
        )
