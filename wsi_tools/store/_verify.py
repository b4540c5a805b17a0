"""``verify``: every slide group's status, shapes and chunk checksums, without trusting zarr."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_tools.errors import StoreError
from wsi_tools.store import _codec
from wsi_tools.store._format import STATUS_COMPLETE

if TYPE_CHECKING:
    from wsi_tools.store._store import PatchStore


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


def verify_store(store: PatchStore, decode: bool = True, progress: bool = False) -> VerifyReport:
    """Check every slide group: status, shapes, every chunk's checksum (and
    zstd frame when ``decode``), the small arrays; list leftovers."""
    from tqdm import tqdm

    report = VerifyReport(store=store.path, leftovers=store.leftovers())
    for slide_id, name in store.interrupted_swaps().items():
        report.problems.append(
            f"slides/{slide_id} is missing: an --overwrite stopped while replacing it, and its complete "
            f"previous copy is slides/{name}; opening the store for writing puts it back (rerun the "
            "extraction, or wsi-tools verify --remove-leftovers)"
        )
    names = [name for name in store._group_names() if not name.startswith(".")]
    with tqdm(total=len(names), desc="verify", unit="slide", disable=not progress, leave=False) as bar:
        for name in names:
            report.problems.extend(_verify_slide(store, name, decode, report))
            report.slides_checked += 1
            bar.update()
    return report


def _verify_slide(store: PatchStore, name: str, decode: bool, report: VerifyReport) -> list[str]:
    problems: list[str] = []
    where = f"slides/{name}"
    try:
        attrs = store.slide_attrs(name)
    except (OSError, StoreError) as error:
        return [f"{where}/zarr.json: unreadable ({error})"]
    if attrs.get("status") != STATUS_COMPLETE:
        problems.append(f"{where}: status is {attrs.get('status')!r}, not complete; re-extract it")
    try:
        meta = store._image_meta(name)
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
            values = store._small_array(name, array_name)
        except StoreError as error:
            problems.append(f"{where}/{array_name}: {error}")
            continue
        if values.shape != shape:
            problems.append(f"{where}/{array_name}: shape {values.shape}, expected {shape}")
    reader = store.reader(name)
    for i in range(n_patches):
        try:
            chunk = reader.chunk_bytes(i)
            if decode:
                _codec.decompress_chunk(chunk, patch_size)
            else:
                _codec.check_chunk(chunk)
        except (StoreError, _codec.ChunkError, OSError) as error:
            shard = i // reader.patches_per_shard
            problems.append(f"{where}/images: patch {i} (shard c/{shard}/0/0/0): {error}")
            if len(problems) > 50:
                problems.append(f"{where}: too many problems, stopped checking this slide")
                break
        report.patches_checked += 1
    return problems
