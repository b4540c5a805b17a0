"""Exact kNN search, false positives and mining."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import zarr

from wsi_tools.errors import ConfigError
from wsi_tools.mining.knn import knn_search


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
    short = knn_search(queries[:2], database[:2], 4)
    assert (short.indices[:, 2:] == -1).all()
    assert np.isinf(short.distances[:, 2:]).all()


def test_zarr_database_gives_same_answer(features, tmp_path):
    queries, database = features
    array = zarr.create_array(tmp_path / "f.zarr", shape=database.shape, chunks=(512, 48), dtype="float32")
    array[:] = database
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
        key = np.asarray(key)
        return np.concatenate([self.rows(int(i), int(i) + 1) for i in key]) if len(key) else self.rows(0, 0)


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
    assert sum(database.read_sizes) == n_rows  # one pass over the database
    # numpy buffers alive at once: a few chunks, never the 128 MB database.
    assert peak < full_bytes / 10, (peak, full_bytes)
    assert result.indices[0, 0] == 123_456
    assert result.indices[2, 0] == 123_458
