"""Exact kNN search, false positives and mining."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import zarr

from wsi_tools.errors import ConfigError
from wsi_tools.mining.knn import default_chunk_rows, knn_search
from wsi_tools.testing.toy import TOY_TRAIN_KEYS


def _brute_force_l2(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    distances = np.sqrt(((queries[:, None, :].astype(np.float64) - database[None]) ** 2).sum(axis=2))
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


@pytest.fixture(scope="module")
def features() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    database = rng.standard_normal((3000, 48)).astype(np.float32) * 4 + 2
    queries = rng.standard_normal((25, 48)).astype(np.float32) * 4 + 2
    return queries, database


def test_l2_matches_brute_force_across_chunk_and_query_blocks(features):
    queries, database = features
    expected, expected_distances = _brute_force_l2(queries, database, 9)
    result = knn_search(queries, database, 9, chunk_rows=257, query_rows=7)
    np.testing.assert_array_equal(result.indices, expected)
    np.testing.assert_allclose(result.distances, expected_distances, rtol=1e-5)


def test_exact_copies_come_first_at_distance_zero(features):
    queries, database = features
    database = database.copy()
    # Large-norm features make the float32 expansion |q|^2+|x|^2-2q.x lose
    # precision exactly at 0: the exact re-rank must still give 0.
    database *= 30
    queries = queries * 30
    copies = [5, 1234, 2999]
    database[copies] = queries[:3]
    result = knn_search(queries[:3], database, 5, chunk_rows=500)
    np.testing.assert_array_equal(result.indices[:, 0], copies)
    assert (result.distances[:, 0] < 1e-3).all()
    assert (result.distances[:, 1] > 1.0).all()


def test_duplicate_rows_tie_broken_by_index(features):
    queries, database = features
    database = database.copy()
    database[[100, 50, 2000]] = queries[0]
    result = knn_search(queries[:1], database, 3, chunk_rows=64)
    np.testing.assert_array_equal(result.indices[0], [50, 100, 2000])
    np.testing.assert_allclose(result.distances[0], 0.0, atol=1e-6)


def test_cosine_returns_most_similar_first(features):
    queries, database = features
    result = knn_search(queries, database, 6, metric="cosine", chunk_rows=400)
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    unit_db = database / np.linalg.norm(database, axis=1, keepdims=True)
    similarity = unit_q @ unit_db.T
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(result.indices, expected)
    # Descending similarities, the first being the maximum over the database.
    assert (np.diff(result.distances, axis=1) <= 1e-6).all()
    np.testing.assert_allclose(result.distances[:, 0], similarity.max(axis=1), rtol=1e-5)
    # A scaled copy is maximally similar under cosine but not the L2 nearest.
    scaled = database.copy()
    scaled[77] = queries[0] * 10
    assert knn_search(queries[:1], scaled, 1, metric="cosine").indices[0, 0] == 77
    assert knn_search(queries[:1], scaled, 1, metric="l2").indices[0, 0] != 77


def test_exclusion_mask_and_short_database(features):
    queries, database = features
    full = knn_search(queries[:4], database, 3)
    exclude = np.zeros(len(database), bool)
    exclude[full.indices[:, 0]] = True
    masked = knn_search(queries[:4], database, 3, exclude=exclude)
    assert not np.isin(masked.indices, full.indices[:, 0]).any()
    np.testing.assert_array_equal(masked.indices[:, :2], full.indices[:, 1:])
    # The same with many small chunks (excluded rows arrive after the running top-k is full).
    np.testing.assert_array_equal(
        knn_search(queries[:4], database, 3, exclude=exclude, chunk_rows=97).indices, masked.indices
    )
    # Cosine over small chunks, against the single-chunk answer.
    np.testing.assert_array_equal(
        knn_search(queries, database, 4, metric="cosine", chunk_rows=61).indices,
        knn_search(queries, database, 4, metric="cosine", chunk_rows=4096).indices,
    )
    short = knn_search(queries[:2], database[:2], 4)
    assert (short.indices[:, 2:] == -1).all()
    assert np.isinf(short.distances[:, 2:]).all()


def test_zarr_database_gives_same_answer(features, tmp_path):
    queries, database = features
    array = zarr.create_array(tmp_path / "f.zarr", shape=database.shape, chunks=(512, 48), dtype="float32")
    array[:] = database
    # Chunks of the search are whole storage chunks, so none is decoded twice.
    assert default_chunk_rows(1000, database=array) % 512 == 0
    assert default_chunk_rows(1000) == default_chunk_rows(1000, database=database)
    from_zarr = knn_search(queries, array, 5, chunk_rows=700)
    from_numpy = knn_search(queries, database, 5)
    np.testing.assert_array_equal(from_zarr.indices, from_numpy.indices)


def test_bad_arguments_raise_config_error(features):
    queries, database = features
    with pytest.raises(ConfigError, match="metric"):
        knn_search(queries, database, 3, metric="manhattan")
    with pytest.raises(ConfigError, match="feature width"):
        knn_search(queries[:, :10], database, 3)


def test_faiss_backend_is_guarded(features):
    queries, database = features
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="faiss"):
            knn_search(queries, database, 3, backend="faiss")
    else:
        via_faiss = knn_search(queries, database, 3, backend="faiss")
        np.testing.assert_array_equal(via_faiss.indices, knn_search(queries, database, 3).indices)


class LazyFeatures:
    """A large database that exists only chunk by chunk (rows from a formula),
    recording every read so the test can see the working set."""

    def __init__(self, n_rows: int, dim: int) -> None:
        self.shape = (n_rows, dim)
        self.read_sizes: list[int] = []
        self.frequencies = np.linspace(0.001, 0.05, dim, dtype=np.float64)

    def rows(self, start: int, stop: int) -> np.ndarray:
        index = np.arange(start, stop, dtype=np.float64)[:, None]
        return np.sin(index * self.frequencies + self.frequencies * 7).astype(np.float32)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, _ = key.indices(self.shape[0])
            self.read_sizes.append(stop - start)
            return self.rows(start, stop)
        raise AssertionError(
            f"the search read rows by index ({key!r}): the database must be read once, in slices"
        )


def test_large_search_streams_in_bounded_chunks():
    n_rows, dim, chunk_rows = 1_000_000, 32, 8192
    database = LazyFeatures(n_rows, dim)
    queries = database.rows(123_456, 123_459) + np.float32(1e-3)
    tracemalloc.start()
    result = knn_search(queries, database, 4, chunk_rows=chunk_rows)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    full_bytes = n_rows * dim * 4
    assert max(database.read_sizes) <= chunk_rows
    assert sum(database.read_sizes) == n_rows  # one pass over the database, no re-reads by index
    # numpy buffers alive at once: a few chunks, never the 128 MB database.
    assert peak < full_bytes / 10, (peak, full_bytes)
    assert result.indices[0, 0] == 123_456
    assert result.indices[2, 0] == 123_458


# ---------------------------------------------------------------- mining on a store


def add_weak_slide(store_path, slide_id: str, images: np.ndarray) -> None:
    """A weak-set slide holding exactly ``images`` (written through the store's own writer)."""
    from wsi_tools.store import PatchStore

    store = PatchStore(store_path, mode="a")
    n, size = len(images), images.shape[1]
    coords = np.stack([np.arange(n) * size * 4, np.zeros(n, np.int64)], axis=1).astype(np.int64)
    writer = store.begin_slide(
        slide_id, n, size, {"set": "weak", "source": f"test://{slide_id}", "patch_size": size}
    )
    writer.write(0, images, coords, np.zeros(n, np.int8), np.ones(n, np.float32))
    writer.commit()


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory: pytest.TempPathFactory):
    """A toy store (5 hard slides, 1 weak slide) and a weak model trained on it for one epoch."""
    from wsi_tools.testing.toy import write_toy_store
    from wsi_tools.train import TrainConfig, train

    root = tmp_path_factory.mktemp("mining_store")
    store = write_toy_store(
        root / "store.zarr",
        [(f"h{i}", "hard", 16, 6) for i in range(5)] + [("w_random", "weak", 40, 0)],
        patch_size=32,
    )
    result = train(TrainConfig(**TOY_TRAIN_KEYS), store, root / "weak")
    return store, result


def test_exact_pixel_copies_of_false_positives_are_mined_first_at_distance_zero(weak_run, tmp_path):
    from wsi_tools.mining.mine import MiningConfig, fp_candidate_table, run_mining, training_table
    from wsi_tools.store import PatchStore
    from wsi_tools.train.checkpoint import read_checkpoint
    from wsi_tools.train.inference import load_model, predict

    store_path, weak = weak_run
    # Copy the 4 highest-scoring training negatives into a weak slide, among random patches.
    store = PatchStore(store_path)
    state = read_checkpoint(weak.best_checkpoint)
    model, train_config = load_model(weak.best_checkpoint)
    candidates = fp_candidate_table(
        store, state["splits"], "train", training=training_table(store, state, train_config)
    )
    probs = predict(model, store_path, candidates.refs, 64)
    top = np.argsort(-probs)[:4]
    threshold = float(probs[top].min())  # these four are false positives at this threshold
    copies = np.stack([store.images(candidates.slide_ids[i])[int(candidates.indices[i])] for i in top])
    add_weak_slide(store_path, "w_copies", copies)

    result = run_mining(
        weak.best_checkpoint, store_path, tmp_path, MiningConfig(threshold=threshold, alpha=3)
    )
    fp_keys = result.false_positives.table.keys()
    assert result.weak_pool_size == 44
    by_query = {}
    for patch in result.mined:
        by_query.setdefault(patch.query, []).append(patch)
    for copy_index, row in enumerate(top):
        query = (str(candidates.slide_ids[row]), int(candidates.indices[row]))
        assert query in fp_keys
        first = min(by_query[query], key=lambda m: m.rank)
        assert first.rank == 1
        assert first.ref == ("w_copies", copy_index)
        assert first.distance < 1e-3
    # mined.csv carries the same rows, distances ascending within a query.
    import csv

    rows = list(csv.DictReader(result.csv_path.open()))
    assert list(rows[0]) == ["query_slide_id", "query_x", "query_y", "slide_id", "x", "y", "distance", "rank"]
    assert len(rows) == len(result.mined)
    assert len({(r["slide_id"], r["x"], r["y"]) for r in rows}) == len(rows)  # de-duplicated


def test_second_run_reuses_the_feature_cache_and_cosine_mines_by_similarity(weak_run, tmp_path):
    from wsi_tools.mining.mine import MiningConfig, run_mining

    store_path, weak = weak_run
    config = MiningConfig(threshold=0.0, alpha=4)
    first = run_mining(weak.best_checkpoint, store_path, tmp_path, config)
    again = run_mining(weak.best_checkpoint, store_path, tmp_path, config)
    assert not first.cache_reused and again.cache_reused
    assert [m.ref for m in first.mined] == [m.ref for m in again.mined]
    cosine = run_mining(
        weak.best_checkpoint,
        store_path,
        tmp_path / "cos",
        MiningConfig(threshold=0.0, alpha=4, metric="cosine"),
    )
    # Cosine neighbours: similarities in descending order for every false positive.
    similarities = cosine.neighbours.distances
    assert (np.diff(similarities, axis=1) <= 1e-6).all()
    assert all(0 <= m.distance <= 2 for m in cosine.mined)


def test_mining_never_touches_validation_test_or_training_patches(weak_run):
    from wsi_tools.mining.mine import FalsePositives, MiningConfig, nearest_weak_patches, weak_pool_table
    from wsi_tools.store import PatchStore
    from wsi_tools.train.data import select_patches

    store_path, weak = weak_run
    store = PatchStore(store_path)
    weak_slides = [s for s in store.slide_ids() if store.slide_attrs(s).get("set") == "weak"]
    splits = dict(weak.splits)
    # Pretend the weak slides were split too: one held out in test.
    splits[weak_slides[0]] = "test"
    pool = weak_pool_table(store, splits)
    assert weak_slides[0] not in set(pool.slide_ids)
    # Patches already in training are excluded even when they are the nearest.
    queries = select_patches(store, [s for s in weak_slides[1:]])
    features = np.random.default_rng(0).standard_normal((len(pool), 8)).astype(np.float32)
    fps = FalsePositives(queries.take([0, 1]), np.array([0.5, 0.5]), features[:2].copy(), n_candidates=2)
    training = {
        (str(pool.slide_ids[0]), int(pool.indices[0])),
        (str(pool.slide_ids[1]), int(pool.indices[1])),
    }
    mined, _ = nearest_weak_patches(fps, pool, features, MiningConfig(alpha=5), exclude=training)
    assert mined and not {(m.ref.slide_id, m.ref.index) for m in mined} & training


def test_test_split_is_never_a_false_positive_source():
    with pytest.raises(ConfigError, match="never"):
        from wsi_tools.mining.mine import MiningConfig

        MiningConfig(fp_source="test")


def test_implausible_mining_is_warned_about(weak_run, tmp_path, capsys):
    """Tried: 100 of 100 negatives flagged and 43% of the pool mined, silently."""
    from wsi_tools.cli import main
    from wsi_tools.mining.mine import implausible_mining

    assert implausible_mining(10, 100, 5, 1000, 0.1) == []
    assert len(implausible_mining(100, 100, 430, 1000, 0.1)) == 2
    store_path, weak = weak_run
    # Threshold 0: every negative scores at or above it, so every one is a "false positive".
    args = [
        "mine",
        "--checkpoint",
        str(weak.best_checkpoint),
        "--store",
        str(store_path),
        "--out",
        str(tmp_path),
    ]
    assert main([*args, "--threshold", "0", "--alpha", "5", "--no-progress", "--num-workers", "0"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "warning:" in line]
    assert any("negatives positive (100%) at threshold 0.0" in line for line in lines), err
    assert any("were mined: that is much of the pool" in line for line in lines), err
    assert all(line.startswith("wsi-tools mine: warning: ") for line in lines), lines
