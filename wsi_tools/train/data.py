"""Patches of the zarr store as a torch ``Dataset``, and which patches to use.

- :class:`PatchTable` lists patches as ``(slide_id, index)`` references plus
  their labels and level-0 coordinates. It is built from the store's small
  ``labels``/``coords`` arrays, never from the images.
- :class:`PatchDataset` reads the patches. The store is opened lazily in the
  process that reads (each DataLoader worker opens its own handles; a changed
  pid, as after a fork, reopens), and a pickled dataset carries no handles, so
  it is safe with spawn, forkserver and fork. It yields ``(uint8 (3, P, P)
  RGB tensor, label)``, or the output of ``transform`` when one is given.
  Reads go through the store's fast ``PatchReader`` (same bytes and crc32c
  checks as zarr, without its per-chunk overhead); ``__getitems__`` reads a
  batch slide by slide. With ``resize`` (and no per-sample ``transform``) the
  batch is resized in one call and handed on whole: pass
  :func:`collate_patches` as the DataLoader's ``collate_fn`` to keep it so.
- :class:`EpochSampler` gives the order of one epoch from ``(seed, epoch)``
  alone (shuffle or class-balanced draw), sharded by rank for DDP, so a resumed
  run sees the same batches as a straight one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler, default_collate

from wsi_tools.errors import ConfigError, StoreError


class PatchRef(NamedTuple):
    """One patch of the store: slide group and row index."""

    slide_id: str
    index: int  # type: ignore[assignment]  # the row index; shadows tuple.index, which nothing here calls


def open_store(store_path: str | Path) -> Any:
    """The store, read-only (imported here so that config-only users need no zarr)."""
    from wsi_tools.store import PatchStore

    return PatchStore(store_path, mode="r")


@dataclass(frozen=True)
class PatchTable:
    """Selected patches: parallel arrays, one row per patch."""

    slide_ids: np.ndarray  # object array of str
    indices: np.ndarray  # int64 row in the slide's arrays
    labels: np.ndarray  # int64 0/1
    coords: np.ndarray  # int64 (N, 2) level-0 top-left x, y

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def refs(self) -> list[PatchRef]:
        return [PatchRef(str(s), int(i)) for s, i in zip(self.slide_ids, self.indices, strict=True)]

    def take(self, rows: np.ndarray | Sequence[int]) -> PatchTable:
        rows = np.asarray(rows, dtype=np.int64)
        return PatchTable(self.slide_ids[rows], self.indices[rows], self.labels[rows], self.coords[rows])

    @staticmethod
    def empty() -> PatchTable:
        return PatchTable(
            np.array([], dtype=object),
            np.array([], dtype=np.int64),
            np.array([], dtype=np.int64),
            np.zeros((0, 2), dtype=np.int64),
        )

    @staticmethod
    def concat(tables: Iterable[PatchTable]) -> PatchTable:
        tables = [t for t in tables if len(t)]
        if not tables:
            return PatchTable.empty()
        return PatchTable(
            np.concatenate([t.slide_ids for t in tables]),
            np.concatenate([t.indices for t in tables]),
            np.concatenate([t.labels for t in tables]),
            np.concatenate([t.coords for t in tables]),
        )

    def keys(self) -> set[tuple[str, int]]:
        return {(str(s), int(i)) for s, i in zip(self.slide_ids, self.indices, strict=True)}


@dataclass(frozen=True)
class SlideInfo:
    slide_id: str
    set: str
    n_patches: int
    label: int  # 1 if any patch is positive
    split: str | None  # a split recorded in the slide's attributes (from a manifest), if any


def slide_infos(store: Any) -> dict[str, SlideInfo]:
    """Every complete slide of the store with its set and slide label (reads labels only)."""
    infos = {}
    for slide_id in store.slide_ids():
        attrs = store.slide_attrs(slide_id)
        labels = np.asarray(store.labels(slide_id))
        split = attrs.get("split") or None
        infos[slide_id] = SlideInfo(
            slide_id=slide_id,
            set=str(attrs.get("set", "")),
            n_patches=len(labels),
            label=int(labels.max()) if len(labels) else 0,
            split=str(split) if split else None,
        )
    return infos


def select_patches(
    store: Any,
    slide_ids: Iterable[str] | None = None,
    *,
    sets: Iterable[str] | None = None,
    label: int | None = None,
) -> PatchTable:
    """Patches of the given slides (default all complete ones), optionally only of
    some sets or one label, in slide then row order."""
    wanted_sets = set(sets) if sets is not None else None
    ids = sorted(slide_ids) if slide_ids is not None else store.slide_ids()
    tables = []
    for slide_id in ids:
        if wanted_sets is not None and store.slide_attrs(slide_id).get("set") not in wanted_sets:
            continue
        labels = np.asarray(store.labels(slide_id)).astype(np.int64)
        rows = np.arange(len(labels), dtype=np.int64)
        if label is not None:
            rows = rows[labels == label]
        if not len(rows):
            continue
        coords = np.asarray(store.coords(slide_id)).astype(np.int64)
        tables.append(
            PatchTable(np.full(len(rows), slide_id, dtype=object), rows, labels[rows], coords[rows])
        )
    return PatchTable.concat(tables)


def table_from_refs(
    store: Any, refs: Sequence[PatchRef | tuple[str, int]], label: int | None = None
) -> PatchTable:
    """A table of the given references (label forced to ``label`` when given)."""
    if not len(refs):
        return PatchTable.empty()
    slide_ids = np.array([str(r[0]) for r in refs], dtype=object)
    indices = np.array([int(r[1]) for r in refs], dtype=np.int64)
    labels = np.empty(len(refs), dtype=np.int64)
    coords = np.empty((len(refs), 2), dtype=np.int64)
    known = set(store.slide_ids())
    for slide_id in sorted(set(slide_ids.tolist())):
        if slide_id not in known:
            raise StoreError(
                f"patch reference to slide {slide_id!r}, which is not a complete slide of the store"
            )
        rows = np.nonzero(slide_ids == slide_id)[0]
        slide_labels = np.asarray(store.labels(slide_id))
        if indices[rows].max() >= len(slide_labels) or indices[rows].min() < 0:
            raise StoreError(
                f"patch reference out of range for slide {slide_id!r} ({len(slide_labels)} patches)"
            )
        labels[rows] = slide_labels[indices[rows]] if label is None else label
        coords[rows] = np.asarray(store.coords(slide_id))[indices[rows]]
    return PatchTable(slide_ids, indices, labels, coords)


def subsample(
    table: PatchTable, fraction: float = 1.0, positive_fraction: float = 1.0, seed: int = 0
) -> PatchTable:
    """Seeded subsets for ablations: ``fraction`` of all patches, then ``positive_fraction``
    of the positives (negatives kept). Order is preserved; at least one patch of a kept class stays."""
    rng = np.random.default_rng([seed, 7919])
    rows = np.arange(len(table))
    if fraction < 1.0 and len(rows):
        keep = max(1, round(fraction * len(rows)))
        rows = np.sort(rng.choice(rows, keep, replace=False))
    if positive_fraction < 1.0:
        positives = rows[table.labels[rows] > 0]
        if len(positives):
            keep = max(1, round(positive_fraction * len(positives)))
            kept = rng.choice(positives, keep, replace=False)
            rows = np.sort(np.concatenate([rows[table.labels[rows] != 1], kept]))
    return table.take(rows)


def resize_batch(images: np.ndarray | torch.Tensor, size: int | None) -> torch.Tensor:
    """(B, P, P, 3) uint8 RGB -> (B, 3, size, size) uint8, antialiased bilinear (the
    pixels of ``transforms.v2.Resize(antialias=True)``), in channels-last memory:
    torch's uint8 kernel reads that layout directly, with no copy into planes."""
    batch = torch.as_tensor(images).permute(0, 3, 1, 2)
    if size is None or tuple(batch.shape[2:]) == (size, size):
        return batch
    return F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)


class PatchBatch(list):
    """A batch from ``__getitems__``: a list of ``(image, label)`` views (what
    ``default_collate`` expects) that also keeps the whole ``images`` and
    ``labels`` tensors, which :func:`collate_patches` returns without copying."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__(zip(images, labels, strict=True))
        self.images, self.labels = images, labels


def collate_patches(samples: Sequence[Any]) -> Any:
    """``collate_fn`` for :class:`PatchDataset` (and any dataset returning a
    :class:`PatchBatch`): a resized batch as is, anything else by ``default_collate``."""
    if isinstance(samples, PatchBatch):
        return samples.images, samples.labels
    return default_collate(list(samples))


class PatchDataset(Dataset):
    """Patches of a :class:`PatchTable` read from the store at ``store_path``.

    Items are ``(image, label)``: image is a uint8 RGB tensor (3, P, P), or
    (3, resize, resize) with ``resize``, or ``transform(image)``; label is a
    float32 scalar tensor (for BCE).
    """

    def __init__(
        self,
        store_path: str | Path,
        table: PatchTable,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        resize: int | None = None,
    ) -> None:
        if transform is not None and resize is not None:
            raise ValueError("give a per-sample transform or a batch resize, not both")
        self.store_path = Path(store_path)
        self.table = table
        self.transform = transform
        self.resize = resize
        self._store: Any = None
        self._readers: dict[str, Any] = {}
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.table)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_store=None, _readers={}, _pid=None)  # handles never cross processes
        return state

    def close(self) -> None:
        """Drop the store handles (reopened on the next read)."""
        self._store, self._readers, self._pid = None, {}, None

    def _reader(self, slide_id: str) -> Any:
        """The store's fast per-slide reader (no open files; shard indexes cached), per process."""
        if self._pid != os.getpid():
            self.close()
            self._store = open_store(self.store_path)
            self._pid = os.getpid()
        reader = self._readers.get(slide_id)
        if reader is None:
            reader = self._readers[slide_id] = self._store.reader(slide_id)
        return reader

    def _label(self, row: int) -> torch.Tensor:
        return torch.tensor(float(self.table.labels[row]), dtype=torch.float32)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._reader(str(self.table.slide_ids[row])).read(int(self.table.indices[row]))
        if self.transform is None:
            return resize_batch(image[None], self.resize)[0], self._label(row)
        # HWC -> CHW view; RGB stays RGB.
        return self.transform(torch.from_numpy(image).permute(2, 0, 1)), self._label(row)

    def __getitems__(self, wanted: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A batch, read slide by slide in index order (shard files are read front to back)."""
        rows = np.asarray(wanted, dtype=np.int64)
        p = int(self._reader(str(self.table.slide_ids[rows[0]])).patch_size) if len(rows) else 0
        images = np.empty((len(rows), p, p, 3), np.uint8)
        slide_of = self.table.slide_ids[rows]
        for slide_id in dict.fromkeys(slide_of.tolist()):
            positions = np.flatnonzero(slide_of == slide_id)
            positions = positions[np.argsort(self.table.indices[rows[positions]], kind="stable")]
            self._reader(slide_id).read_many(
                self.table.indices[rows[positions]], out=images, out_rows=positions
            )
        labels = torch.as_tensor(self.table.labels[rows], dtype=torch.float32)
        if self.transform is None:
            return PatchBatch(resize_batch(images, self.resize), labels)
        tensors = torch.from_numpy(images).permute(0, 3, 1, 2)
        return [(self.transform(tensor), label) for tensor, label in zip(tensors, labels, strict=True)]


class EpochSampler(Sampler[int]):
    """Indices of one epoch, a pure function of ``(seed, epoch, rank)``.

    Without ``weights``: a permutation. With ``weights``: a class-balanced draw
    with replacement (``torch.multinomial``). Under DDP every rank draws the
    same full order and takes every ``world_size``-th item (padded by wrapping
    so all ranks have the same number of batches).
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        weights: np.ndarray | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n <= 0:
            raise ConfigError("the training split has no patches; check train_sets, the splits and the store")
        self.n = n
        self.seed = seed
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world_size)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
        total = len(self) * self.world_size
        if total > self.n:
            order = torch.cat([order, order[: total - self.n]])
        return iter(order[self.rank : total : self.world_size].tolist())


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-patch weights giving both classes the same total weight."""
    labels = np.asarray(labels)
    weights = np.zeros(len(labels), dtype=np.float64)
    for value in np.unique(labels):
        mask = labels == value
        weights[mask] = 1.0 / mask.sum()
    return weights
