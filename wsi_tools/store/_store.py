"""The :class:`PatchStore`: the store root, its slide groups, their lifetime and fingerprint."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from wsi_tools import __version__
from wsi_tools.errors import StoreError
from wsi_tools.provenance import now_iso
from wsi_tools.store._format import (
    DEFAULT_PATCHES_PER_SHARD,
    DELETED_PREFIX,
    FORMAT_VERSION,
    LEFTOVER_PREFIXES,
    OLD_PREFIX,
    SCHEMA,
    SLIDES_GROUP,
    SMALL_ARRAYS,
    STATUS_COMPLETE,
    group_meta,
    quiet_numcodecs,
    read_attributes,
    read_json,
    sanitize_slide_id,
    small_array_digest,
    small_chunk_path,
    write_json_atomic,
)
from wsi_tools.store._reader import PatchReader
from wsi_tools.store._verify import VerifyReport, verify_store
from wsi_tools.store._writer import SlideWriter

if TYPE_CHECKING:
    import zarr


REPAIR_FIX = "re-extract the slide (wsi-tools extract ... --overwrite) or restore it from a copy"


def _array_meta(array_dir: Path, where: str) -> tuple[dict[str, Any], list[int], int]:
    """An array's zarr.json, its shape and rows per chunk; a StoreError naming
    ``where`` when the file is missing or does not describe a chunked array."""
    try:
        meta = read_json(array_dir / "zarr.json")
        shape = [int(size) for size in meta["shape"]]
        chunk_rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        if not shape or chunk_rows < 1:
            raise ValueError(f"shape {shape}, chunk rows {chunk_rows}")
    except FileNotFoundError:
        raise StoreError(f"{where}: missing (no zarr.json); {REPAIR_FIX}") from None
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise StoreError(
            f"{where}: damaged metadata ({type(error).__name__}: {error}); {REPAIR_FIX}"
        ) from None
    return meta, shape, chunk_rows


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
        attrs = read_attributes(root_meta)
        if attrs.get("schema") != SCHEMA:
            raise StoreError(
                f"{self.path} is a zarr store but not a {SCHEMA} (schema={attrs.get('schema')!r})"
            )
        if not isinstance(attrs.get("version", 0), int):
            raise StoreError(
                f"{self.path}/zarr.json: damaged (version {attrs.get('version')!r} is not a number)"
            )
        if int(attrs.get("version", 0)) > FORMAT_VERSION:
            raise StoreError(
                f"{self.path} has store format version {attrs.get('version')}, newer than this "
                f"wsi-tools ({FORMAT_VERSION}); upgrade wsi-tools"
            )
        if mode == "a":
            self.slides_dir.mkdir(exist_ok=True)
            self.restore_interrupted()

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
        write_json_atomic(self.slides_dir / "zarr.json", group_meta({}))
        write_json_atomic(self.path / "zarr.json", group_meta(attrs))  # last: marks the store

    @property
    def slides_dir(self) -> Path:
        return self.path / SLIDES_GROUP

    def attrs(self) -> dict[str, Any]:
        return read_attributes(self.path / "zarr.json")

    # ---- reading -------------------------------------------------------------

    def _group_names(self) -> list[str]:
        if not self.slides_dir.is_dir():
            return []
        return sorted(entry.name for entry in os.scandir(self.slides_dir) if entry.is_dir())

    def _status(self, name: str) -> str | None:
        try:
            return read_attributes(self.slides_dir / name / "zarr.json").get("status")
        except (OSError, StoreError):
            return None

    def slide_ids(self, include_incomplete: bool = False) -> list[str]:
        """Visible slide groups; only complete ones unless ``include_incomplete``.

        A slide whose ``zarr.json`` is damaged is an error, not a slide left out:
        a run that quietly trains or exports without it looks like a good run."""
        names = [name for name in self._group_names() if not name.startswith(".")]
        if include_incomplete:
            return names
        complete = []
        for name in names:
            try:
                status = read_attributes(self.slides_dir / name / "zarr.json").get("status")
            except (OSError, StoreError) as error:
                raise StoreError(
                    f"slide {name!r} of {self.path} is damaged: {error} (wsi-tools verify {self.path} "
                    "lists every damaged slide)"
                ) from None
            if status != STATUS_COMPLETE:
                # Writers rename a group to its slide id only once it is complete.
                raise StoreError(
                    f"slide {name!r} of {self.path} is damaged: its status is {status!r} under its final "
                    f"name, where only complete slides are (wsi-tools verify {self.path} lists every "
                    "damaged slide; re-extract it with --overwrite)"
                )
            complete.append(name)
        return complete

    def leftovers(self, slide_id: str | None = None) -> list[str]:
        """Temporary groups of interrupted writes (or of writes in progress elsewhere)."""
        names = (
            [entry.name for entry in os.scandir(self.slides_dir) if entry.name.startswith(LEFTOVER_PREFIXES)]
            if self.slides_dir.is_dir()
            else []
        )
        if slide_id is not None:
            names = [name for name in names if _leftover_slide_id(name) == slide_id]
        return sorted(names)

    def interrupted_swaps(self) -> dict[str, str]:
        """``{slide_id: leftover}`` for each slide that is missing while a complete copy
        of it waits under ``.old-``: an ``--overwrite`` stopped between its two renames."""
        found: dict[str, str] = {}
        for name in self.leftovers():
            slide_id = _leftover_slide_id(name)
            if (
                name.startswith(OLD_PREFIX)
                and slide_id not in found
                and not (self.slides_dir / slide_id).exists()
                and self._status(name) == STATUS_COMPLETE
            ):
                found[slide_id] = name
        return found

    def restore_interrupted(self) -> list[str]:
        """Put back the complete copy of every slide an interrupted ``--overwrite`` left
        aside (a writer then replaces it again or skips it, as asked); the slide ids."""
        self._require_writable()
        restored = []
        for slide_id, name in self.interrupted_swaps().items():
            with contextlib.suppress(FileNotFoundError, OSError):  # another writer got there first
                os.rename(self.slides_dir / name, self.slides_dir / slide_id)
                restored.append(slide_id)
        return restored

    def remove_leftovers(self, slide_id: str | None = None) -> list[str]:
        self._require_writable()
        removed = self.leftovers(slide_id)
        for name in removed:
            shutil.rmtree(self.slides_dir / name, ignore_errors=True)
        return removed

    def remove_if_empty(self) -> bool:
        """Delete the whole store when it holds no slide and no leftover (a store
        created for a write that then failed); True when it was removed."""
        self._require_writable()
        if self._group_names():
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        return True

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
        return read_attributes(self._require_slide(slide_id) / "zarr.json")

    def _open_array(self, slide_id: str, name: str) -> zarr.Array:
        import zarr

        self._require_slide(slide_id)
        with quiet_numcodecs():
            return zarr.open_array(self.path, path=f"{SLIDES_GROUP}/{slide_id}/{name}", mode="r")

    def images(self, slide_id: str) -> zarr.Array:
        """The (N, P, P, 3) uint8 image array, through plain zarr (prefer :meth:`reader` for speed)."""
        return self._open_array(slide_id, "images")

    def coords(self, slide_id: str) -> np.ndarray:
        """(N, 2) int64 level-0 top-left corners."""
        return self._small_array(slide_id, "coords")

    def labels(self, slide_id: str) -> np.ndarray:
        """(N,) int8 labels."""
        return self._small_array(slide_id, "labels")

    def tissue_fraction(self, slide_id: str) -> np.ndarray:
        """(N,) float32 tissue fractions."""
        return self._small_array(slide_id, "tissue_fraction")

    def check_small_arrays(self, slide_id: str) -> None:
        """Raise :class:`StoreError` unless every small array of the slide is whole."""
        for name in SMALL_ARRAYS:
            self._small_array(slide_id, name)

    def _small_array(self, slide_id: str, name: str) -> np.ndarray:
        """A small array, refused unless it is whole: zarr reads a missing chunk as
        its fill value, so a deleted ``labels`` chunk would turn positives into
        negatives and a deleted ``coords`` chunk would put every patch at 0-0.
        Every chunk must exist and decode, and the values must match the digest
        written at commit (slides written before digests existed: chunks only)."""
        group = self._require_slide(slide_id)
        where = f"{self.path}: slide {slide_id!r}, array {name!r}"
        attrs = self.slide_attrs(slide_id)
        _, shape, chunk_rows = _array_meta(group / name, where)
        n_chunks = -(-shape[0] // chunk_rows)
        missing = [c for c in range(n_chunks) if not small_chunk_path(group / name, c, len(shape)).is_file()]
        if missing:
            raise StoreError(
                f"{where}: chunk c/{missing[0]} is missing ({len(missing)} of {n_chunks} chunks), so its "
                f"rows would read as zeros; {REPAIR_FIX}"
            )
        try:
            values = np.asarray(self._open_array(slide_id, name)[:])
        except Exception as error:  # zarr raises ValueError on a crc mismatch, others on damage
            raise StoreError(f"{where}: unreadable ({type(error).__name__}: {error}); {REPAIR_FIX}") from None
        n_patches = attrs.get("n_patches")
        if isinstance(n_patches, int) and len(values) != n_patches:
            raise StoreError(
                f"{where}: {len(values)} rows but the slide has {n_patches} patches; {REPAIR_FIX}"
            )
        recorded = (attrs.get("small_arrays") or {}).get(name)
        if recorded is not None and small_array_digest(values) != recorded:
            raise StoreError(
                f"{where}: its values differ from the digest written when the slide was committed "
                f"(a chunk was replaced or damaged); {REPAIR_FIX}"
            )
        return values

    def n_patches(self, slide_id: str) -> int:
        return int(self._image_meta(slide_id)["shape"][0])

    def _image_meta(self, slide_id: str) -> dict[str, Any]:
        """The images array's zarr.json, refused unless its shape and chunking are usable."""
        where = f"{self.path}: slide {slide_id!r}, array 'images'"
        meta, shape, per_shard = _array_meta(self._require_slide(slide_id) / "images", where)
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or min(shape) < 0:
            raise StoreError(
                f"{where}: damaged metadata (shape {shape}, {per_shard} patches per shard); {REPAIR_FIX}"
            )
        return meta

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
        aside = self.slides_dir / f"{DELETED_PREFIX}{group.name}-{uuid.uuid4().hex[:12]}"
        os.rename(group, aside)
        shutil.rmtree(aside, ignore_errors=True)

    # ---- checking ------------------------------------------------------------

    def verify(self, decode: bool = True, progress: bool = False) -> VerifyReport:
        """Check every slide group: status, shapes, every chunk's checksum (and
        zstd frame when ``decode``), the small arrays; list leftovers."""
        return verify_store(self, decode, progress)


def _leftover_slide_id(name: str) -> str:
    """'.tmp-<id>-<12 hex>' (or '.old-', '.del-') -> '<id>'."""
    body = next((name.removeprefix(prefix) for prefix in LEFTOVER_PREFIXES if name.startswith(prefix)), name)
    return body.rsplit("-", 1)[0]
