"""The Dataset over the store, patch selection, sampling and subsampling."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wsi_tools.errors import ConfigError, StoreError
from wsi_tools.testing.toy import write_toy_store
from wsi_tools.train.config import load_config
from wsi_tools.train.data import (
    EpochSampler,
    PatchDataset,
    PatchRef,
    balanced_weights,
    collate_patches,
    open_store,
    select_patches,
    subsample,
    table_from_refs,
)
from wsi_tools.train.trainer import build_splits

SLIDES = [("h0", "hard", 6, 3), ("h1", "hard", 5, 0), ("h2", "hard", 4, 2), ("w0", "weak", 7, 0)]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_toy_store(tmp_path_factory.mktemp("data") / "toy.zarr", SLIDES, patch_size=32, seed=1)
    # One patch of pure red, to follow the channel order end to end.
    from wsi_tools.store import PatchStore

    store = PatchStore(path, mode="a")
    writer = store.begin_slide("red", 2, 32, {"set": "hard", "source": "red", "patch_size": 32})
    red = np.zeros((2, 32, 32, 3), np.uint8)
    red[..., 0] = 255
    writer.write(0, red, np.array([[0, 0], [32, 0]]), np.array([1, 0], np.int8), np.ones(2, np.float32))
    writer.commit()
    return path


def test_table_is_built_from_labels_and_coords(store_path: Path) -> None:
    store = open_store(store_path)
    table = select_patches(store, ["h0", "h1"])
    assert (
        len(table) == 11
        and table.labels.tolist() == store.labels("h0").tolist() + store.labels("h1").tolist()
    )
    assert table.coords.tolist() == np.concatenate([store.coords("h0"), store.coords("h1")]).tolist()
    assert set(select_patches(store, sets=["weak"]).slide_ids) == {"w0"}
    positives = select_patches(store, label=1)
    assert positives.labels.min() == 1 and len(positives) == 3 + 2 + 1
    refs = table.refs
    assert refs[0] == PatchRef("h0", 0) and refs[-1] == PatchRef("h1", 4)
    forced = table_from_refs(store, [("w0", 3), ("h0", 1)], label=0)
    assert forced.labels.tolist() == [0, 0] and forced.coords[0].tolist() == store.coords("w0")[3].tolist()
    with pytest.raises(StoreError, match="'nope'"):
        table_from_refs(store, [("nope", 0)])
    with pytest.raises(StoreError, match="out of range"):
        table_from_refs(store, [("h1", 5)])


def test_dataset_reads_rgb_uint8_chw_and_batches_match_items(store_path: Path) -> None:
    store = open_store(store_path)
    table = select_patches(store)
    dataset = PatchDataset(store_path, table)
    image, label = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert torch.equal(image, torch.from_numpy(np.asarray(store.images("h0")[0])).permute(2, 0, 1))
    assert label.dtype == torch.float32 and float(label) == table.labels[0]
    rows = [len(table) - 1, 0, 5, 0, 12]  # mixed slides, a repeat, unsorted
    batch = dataset.__getitems__(rows)
    for row, (image, label) in zip(rows, batch, strict=True):
        assert torch.equal(image, dataset[row][0]) and float(label) == table.labels[row]
    red_row = int(np.nonzero((table.slide_ids == "red") & (table.indices == 0))[0][0])
    red = dataset[red_row][0]
    assert red[0].min() == 255 and red[1:].max() == 0  # RGB in, RGB out


def test_batch_resize_matches_torchvision_and_the_loader_passes_it_whole(store_path: Path) -> None:
    from torchvision.transforms import v2

    table = select_patches(open_store(store_path))
    plain, resized = PatchDataset(store_path, table), PatchDataset(store_path, table, resize=20)
    reference = v2.Resize((20, 20), antialias=True)
    rows = [7, 0, len(table) - 1, 3]
    batch = resized.__getitems__(rows)
    images, labels = collate_patches(batch)
    assert images.shape == (4, 3, 20, 20) and images.dtype == torch.uint8
    for k, row in enumerate(rows):
        expected = reference(plain[row][0])
        assert torch.equal(images[k], expected) and torch.equal(resized[row][0], expected)
        assert float(labels[k]) == table.labels[row]
    loader = DataLoader(resized, batch_size=4, num_workers=1, collate_fn=collate_patches)
    first, _ = next(iter(loader))
    assert torch.equal(first, torch.stack([reference(plain[i][0]) for i in range(4)]))
    with pytest.raises(ValueError, match="not both"):
        PatchDataset(store_path, table, transform=reference, resize=20)


def test_dataset_opens_lazily_carries_no_handles_and_reopens_after_fork(store_path: Path) -> None:
    dataset = PatchDataset(store_path, select_patches(open_store(store_path)))
    assert dataset._store is None  # nothing opened until the first read
    dataset[0]
    assert dataset._store is not None and dataset._pid == os.getpid()
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._store is None and clone._readers == {}
    assert torch.equal(clone[3][0], dataset[3][0])
    handle = dataset._store
    dataset._pid = -1  # as in a forked child
    dataset[1]
    assert dataset._store is not handle and dataset._pid == os.getpid()
    dataset.close()
    assert dataset._store is None and dataset._readers == {}


def test_dataset_works_in_spawned_workers(store_path: Path) -> None:
    table = select_patches(open_store(store_path), ["h0", "h2"])
    dataset = PatchDataset(store_path, table)
    loader = DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    images = torch.cat([batch for batch, _ in loader])
    assert images.shape == (10, 3, 32, 32)
    assert torch.equal(images, torch.stack([dataset[i][0] for i in range(10)]))


def test_splits_keep_weak_slides_out_and_follow_given_splits(store_path: Path, tmp_path: Path) -> None:
    store = open_store(store_path)
    splits = build_splits(load_config(None, {"seed": 3}), store)
    assert set(splits) == {"h0", "h1", "h2", "red"}  # the weak slide is the mining pool
    assert build_splits(load_config(None, {"seed": 3}), store) == splits
    both = build_splits(load_config(None, {"train_sets": ["hard", "weak"]}), store)
    assert "w0" in both
    csv_path = tmp_path / "given.csv"
    csv_path.write_text("slide_id,split\nh1,test\nh0,val\n")
    given = build_splits(load_config(None, {"splits_file": str(csv_path)}), store)
    assert given["h1"] == "test" and given["h0"] == "val"
    assert build_splits(load_config(None, {}), store, splits={"h2": "val"})["h2"] == "val"
    with pytest.raises(StoreError, match="no complete slide"):
        build_splits(load_config(None, {}), _NoHard(store))


class _NoHard:
    """The store seen without its hard slides."""

    def __init__(self, store: object) -> None:
        self._store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def slide_ids(self) -> list[str]:
        return ["w0"]


def test_epoch_sampler_is_a_function_of_seed_and_epoch_and_shards_ranks() -> None:
    sampler = EpochSampler(10, seed=1)
    sampler.set_epoch(2)
    first = list(sampler)
    assert sorted(first) == list(range(10))
    again = EpochSampler(10, seed=1)
    again.set_epoch(2)
    assert list(again) == first
    again.set_epoch(3)
    assert list(again) != first
    shards = []
    for rank in range(3):
        shard = EpochSampler(10, seed=1, rank=rank, world_size=3)
        shard.set_epoch(2)
        shards.append(list(shard))
    assert all(len(s) == 4 for s in shards)
    assert set().union(*shards) == set(range(10))
    labels = np.array([1] + [0] * 99)
    weighted = EpochSampler(100, seed=0, weights=balanced_weights(labels))
    drawn = np.array(list(weighted))
    assert 30 < (labels[drawn] == 1).sum() < 70  # about half positives, with replacement
    with pytest.raises(ConfigError, match="no patches"):
        EpochSampler(0)


def test_subsampling_is_seeded_and_can_target_positives(store_path: Path) -> None:
    table = select_patches(open_store(store_path), ["h0", "h1", "h2", "w0"])
    half = subsample(table, fraction=0.5, seed=4)
    assert len(half) == round(0.5 * len(table)) and half.keys() <= table.keys()
    assert subsample(table, fraction=0.5, seed=4).keys() == half.keys()
    assert subsample(table, fraction=0.5, seed=5).keys() != half.keys()
    fewer_pos = subsample(table, positive_fraction=0.2, seed=4)
    assert int(fewer_pos.labels.sum()) == 1
    assert (fewer_pos.labels == 0).sum() == (table.labels == 0).sum()


def test_labels_other_than_0_and_1_are_refused_naming_the_slide(tmp_path: Path) -> None:
    from wsi_tools.store import PatchStore
    from wsi_tools.train.tables import split_table

    store_path = write_toy_store(tmp_path / "s.zarr", [("h0", "hard", 6, 2)], patch_size=16)
    # A slide written, digest and all, with a third class from a label map such as
    # {LI: 1, tumour: 2}: the store holds it faithfully; the binary trainer must refuse it.
    writer = PatchStore(store_path, mode="a").begin_slide(
        "h1",
        6,
        16,
        {
            "set": "hard",
            "source": "toy://h1",
            "fingerprint": "toy-h1",
            "mpp": 0.5,
            "target_mpp": 2.0,
            "effective_mpp": 2.0,
            "patch_size": 16,
        },
    )
    coords = np.stack([np.arange(6) * 64, np.zeros(6)], axis=1).astype(np.int64)
    labels = np.array([2, 1, 0, 0, 1, 0], dtype=np.int8)
    writer.write(0, np.zeros((6, 16, 16, 3), np.uint8), coords, labels, np.ones(6, np.float32))
    writer.commit({"counts": {"kept": 6, "positive": 2}})
    store = open_store(store_path)
    assert len(split_table(store, {"h0": "train", "h1": "test"}, "train")) == 6
    with pytest.raises(ConfigError, match=r"slide 'h1' has patches labelled \[2\].*binary"):
        split_table(store, {"h0": "train", "h1": "test"}, "test")
