"""Exact k-nearest-neighbour search streamed over a database of feature rows.

The database is anything with ``shape`` and row slicing (a numpy array or
memmap, a zarr array, a torch tensor): it is read ``chunk_rows`` rows at a
time, so a weak set of 10^7 embeddings never sits in memory and no full
queries x database matrix is ever formed. Each chunk is scored with one
matrix product; the entries that beat a query's worst kept candidate join
its running top-k. Chunks follow the database's own storage chunks (zarr), so
no stored chunk is decoded twice.

L2 ranks by ``|x|^2 - 2 q.x`` (``|q|^2`` is constant per query and does not
change the order). That expansion loses precision in float32 exactly where it
matters most, near distance 0, so the search keeps a few spare candidates per
query, takes their true distances in float64 from the rows themselves while
each chunk is in memory, and makes the final cut on those: exact copies come
first, at distance 0, and the database is read once.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from wsi_tools.errors import ConfigError

METRICS = ("l2", "cosine")
DEFAULT_QUERY_ROWS = 4_096
# Budget for one query-block x chunk score matrix; sets the default chunk size.
DEFAULT_SCORES_MB = 64.0
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 1_024, 131_072
# Spare candidates per query, re-ranked with exact distances at the end.
SPARE_CANDIDATES = 8


@dataclass(frozen=True)
class KnnResult:
    """Row indices into the database and their distances, best first.

    For ``l2`` the distances are Euclidean (ascending); for ``cosine`` they
    are cosine similarities (descending: the most similar first). Where the
    database has fewer than ``k`` eligible rows, indices are -1 and distances
    inf (l2) or -inf (cosine).
    """

    indices: np.ndarray  # (Q, k) int64
    distances: np.ndarray  # (Q, k) float32
    metric: str


def _as_float_tensor(rows: Any, device: torch.device) -> torch.Tensor:
    tensor = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.asarray(rows))
    return tensor.to(device=device, dtype=torch.float32, non_blocking=True)


def _chunks(database: Any, chunk_rows: int) -> Iterator[tuple[int, Any]]:
    """Database chunks, the next one read in a background thread while the
    current one is scored (matrix products release the GIL)."""
    n_rows = int(database.shape[0])
    starts = list(range(0, n_rows, chunk_rows))
    if not starts:
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(lambda s: database[s : s + chunk_rows], starts[0])
        for position, start in enumerate(starts):
            rows = pending.result()
            if position + 1 < len(starts):
                pending = reader.submit(lambda s: database[s : s + chunk_rows], starts[position + 1])
            yield start, rows


def _take_rows(database: Any, indices: np.ndarray) -> np.ndarray:
    """Rows at sorted unique ``indices`` (memmap, zarr and tensors alike)."""
    if isinstance(database, torch.Tensor):
        return database[torch.from_numpy(indices)].cpu().numpy()
    oindex = getattr(database, "oindex", None)
    if oindex is not None and not isinstance(database, np.ndarray):
        return np.asarray(oindex[indices, :])
    return np.asarray(database[indices])


def default_chunk_rows(n_queries: int, scores_mb: float = DEFAULT_SCORES_MB, database: Any = None) -> int:
    """Database rows per chunk so that the score matrix fits ``scores_mb``,
    rounded to whole storage chunks when ``database`` is chunked (zarr)."""
    rows = int(min(max(scores_mb * 2**20 / (4 * max(n_queries, 1)), MIN_CHUNK_ROWS), MAX_CHUNK_ROWS))
    stored = getattr(database, "chunks", None)
    if isinstance(stored, tuple) and stored and isinstance(stored[0], int) and stored[0] > 0:
        rows = max(1, round(rows / stored[0])) * stored[0]
    return rows


def _validate(queries: np.ndarray, database: Any, k: int, metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(f"unknown kNN metric {metric!r}; use one of {', '.join(METRICS)}")
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if queries.ndim != 2 or len(database.shape) != 2 or queries.shape[1] != database.shape[1]:
        raise ConfigError(
            f"queries {tuple(queries.shape)} and database {tuple(database.shape)} must be 2-D "
            "with the same feature width"
        )


def knn_search(
    queries: np.ndarray | torch.Tensor,
    database: Any,
    k: int,
    *,
    metric: str = "l2",
    exclude: np.ndarray | None = None,
    chunk_rows: int | None = None,
    query_rows: int = DEFAULT_QUERY_ROWS,
    scores_mb: float = DEFAULT_SCORES_MB,
    device: str | torch.device | None = None,
    backend: str = "torch",
) -> KnnResult:
    """Exact ``k`` nearest database rows for every query row.

    ``exclude`` is an optional boolean mask over database rows that may not be
    returned (patches already in training). Working memory is one
    ``query_rows x chunk_rows`` float32 score matrix plus two database chunks
    (one being read ahead), whatever the database size; ``chunk_rows``
    defaults to what fits ``scores_mb``. ``device`` defaults to CUDA when
    present.
    """
    queries_np = queries.cpu().numpy() if isinstance(queries, torch.Tensor) else np.asarray(queries)
    queries_np = queries_np.astype(np.float32, copy=False)
    _validate(queries_np, database, k, metric)
    n_database = int(database.shape[0])
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != (n_database,):
            raise ConfigError(f"exclude mask has shape {exclude.shape}, expected ({n_database},)")
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(min(len(queries_np), query_rows), scores_mb, database)
    if backend == "faiss":
        return _faiss_search(queries_np, database, k, metric, exclude, chunk_rows)
    if backend != "torch":
        raise ConfigError(f"unknown kNN backend {backend!r}; use torch or faiss")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n_candidates = min(k + SPARE_CANDIDATES, max(n_database, 1))
    all_distances: list[np.ndarray] = []
    all_indices: list[np.ndarray] = []
    for q_start in range(0, len(queries_np), query_rows):
        block = queries_np[q_start : q_start + query_rows]
        distances, indices = _stream_topk(block, database, n_candidates, metric, exclude, chunk_rows, device)
        all_distances.append(distances)
        all_indices.append(indices)
    if not all_indices:
        return KnnResult(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32), metric)
    return _cut(np.concatenate(all_indices), np.concatenate(all_distances), k, metric)


@dataclass
class _RunningBest:
    """The kept candidates of one query block: approximate scores (which decide
    what is kept), database indices and exact float64 distances (which decide
    the final order), each ``(Q, n)``."""

    scores: torch.Tensor
    indices: torch.Tensor
    exact: torch.Tensor

    def merge(self, scores: torch.Tensor, indices: torch.Tensor, exact: torch.Tensor, keep: int) -> None:
        merged_scores = torch.cat([self.scores, scores], dim=1)
        take = min(keep, merged_scores.shape[1])
        self.scores, order = torch.topk(merged_scores, take, dim=1, largest=False, sorted=False)
        self.indices = torch.gather(torch.cat([self.indices, indices], dim=1), 1, order)
        self.exact = torch.gather(torch.cat([self.exact, exact], dim=1), 1, order)


def _approximate_scores(q: torch.Tensor, x: torch.Tensor, metric: str) -> torch.Tensor:
    """Smaller is better: ``|x|^2 - 2 q.x`` (L2 order) or ``-cos`` (``q`` already unit)."""
    if metric == "cosine":
        return -(q @ torch.nn.functional.normalize(x, dim=1).T)
    return torch.addmm((x * x).sum(dim=1)[None, :], q, x.T, beta=1.0, alpha=-2.0)


def _exact_distances(
    q64: torch.Tensor, query_rows: torch.Tensor, x: torch.Tensor, columns: torch.Tensor, metric: str
) -> torch.Tensor:
    """Float64 distance (L2) or ``-cos`` of query ``query_rows[i]`` to chunk row
    ``columns[i]``: the difference itself, so an exact copy is at exactly 0."""
    out = torch.empty(len(columns), dtype=torch.float64, device=x.device)
    block = 8_192
    for start in range(0, len(columns), block):
        picked = x[columns[start : start + block]].double()
        queries = q64[query_rows[start : start + block]]
        if metric == "cosine":
            norms = (picked.norm(dim=1) * queries.norm(dim=1)).clamp_min(1e-12)
            out[start : start + block] = -(picked * queries).sum(dim=1) / norms
        else:
            out[start : start + block] = (picked - queries).square().sum(dim=1).sqrt()
    return out


def _stream_topk(
    queries: np.ndarray,
    database: Any,
    n_candidates: int,
    metric: str,
    exclude: np.ndarray | None,
    chunk_rows: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """The running top-``n_candidates`` of one query block over all chunks,
    by approximate score, with their exact distances.

    Once every query holds ``n_candidates`` finite candidates, a chunk entry
    can only enter if it beats its query's worst kept score: one comparison
    pass finds the few that do (about ``n_candidates * chunk / rows seen`` per
    query), instead of a ``topk`` over the whole score matrix. Exact
    distances are taken while the chunk is in memory, so the database is read
    once.
    """
    q = _as_float_tensor(queries, device)
    q64 = q.double()
    if metric == "cosine":
        q = torch.nn.functional.normalize(q, dim=1)
    n_queries = len(q)
    best = _RunningBest(
        torch.zeros((n_queries, 0), device=device),
        torch.zeros((n_queries, 0), dtype=torch.int64, device=device),
        torch.zeros((n_queries, 0), dtype=torch.float64, device=device),
    )
    for start, rows in _chunks(database, chunk_rows):
        x = _as_float_tensor(rows, device)
        scores = _approximate_scores(q, x, metric)
        banned = None if exclude is None else torch.from_numpy(exclude[start : start + len(x)]).to(device)
        threshold = best.scores.max(dim=1).values if best.scores.shape[1] else None
        if threshold is None or best.scores.shape[1] < n_candidates or bool(torch.isinf(threshold).any()):
            # Still filling: take the chunk's own top candidates.
            if banned is not None:
                scores.masked_fill_(banned[None, :], float("inf"))
            take = min(n_candidates, scores.shape[1])
            chunk_scores, columns = torch.topk(scores, take, dim=1, largest=False, sorted=False)
            query_rows = torch.arange(n_queries, device=device).repeat_interleave(take)
            exact = _exact_distances(q64, query_rows, x, columns.reshape(-1), metric).reshape(n_queries, take)
            exact.masked_fill_(torch.isinf(chunk_scores), float("inf"))
            best.merge(chunk_scores, columns + start, exact, n_candidates)
            continue
        query_rows, columns = torch.nonzero(scores < threshold[:, None], as_tuple=True)
        if banned is not None:
            allowed = ~banned[columns]
            query_rows, columns = query_rows[allowed], columns[allowed]
        if not len(columns):
            continue
        # Pad the entrants into a (Q, most per query) block; nonzero is row-major.
        counts = torch.bincount(query_rows, minlength=n_queries)
        slot = torch.arange(len(columns), device=device) - (torch.cumsum(counts, 0) - counts)[query_rows]
        width = int(counts.max())
        new_scores = torch.full((n_queries, width), float("inf"), device=device)
        new_indices = torch.full((n_queries, width), -1, dtype=torch.int64, device=device)
        new_exact = torch.full((n_queries, width), float("inf"), dtype=torch.float64, device=device)
        new_scores[query_rows, slot] = scores[query_rows, columns]
        new_indices[query_rows, slot] = columns + start
        new_exact[query_rows, slot] = _exact_distances(q64, query_rows, x, columns, metric)
        best.merge(new_scores, new_indices, new_exact, n_candidates)
    indices = best.indices.masked_fill(torch.isinf(best.scores), -1)
    exact = best.exact.masked_fill(indices < 0, float("inf"))
    return exact.cpu().numpy(), indices.cpu().numpy()


def _exact_rerank(
    queries: np.ndarray, database: Any, candidates: np.ndarray, metric: str, block: int = 512
) -> np.ndarray:
    """True distances (float64 maths) of every candidate; inf where none."""
    valid = candidates >= 0
    unique = np.unique(candidates[valid])
    if not len(unique):
        return np.full(candidates.shape, np.inf)
    rows = _take_rows(database, unique).astype(np.float64)
    position = np.searchsorted(unique, np.where(valid, candidates, unique[0]))
    distances = np.empty(candidates.shape)
    for start in range(0, len(candidates), block):
        q = queries[start : start + block].astype(np.float64)[:, None, :]
        picked = rows[position[start : start + block]]  # (block, C, D)
        if metric == "cosine":
            norms = np.linalg.norm(picked, axis=2) * np.linalg.norm(q, axis=2)
            distances[start : start + block] = -(picked * q).sum(axis=2) / np.maximum(norms, 1e-12)
        else:
            distances[start : start + block] = np.sqrt(((picked - q) ** 2).sum(axis=2))
    distances[~valid] = np.inf
    return distances


def _cut(candidates: np.ndarray, distances: np.ndarray, k: int, metric: str) -> KnnResult:
    """Sort by exact distance (index breaks ties), keep ``k``, pad with -1."""
    n_queries = len(candidates)
    indices = np.full((n_queries, k), -1, np.int64)
    out = np.full((n_queries, k), np.inf, np.float64)
    for i in range(n_queries):
        order = np.lexsort((candidates[i], distances[i]))[:k]
        order = order[np.isfinite(distances[i][order])]
        indices[i, : len(order)] = candidates[i][order]
        out[i, : len(order)] = distances[i][order]
    if metric == "cosine":
        out = -out  # back to similarities, most similar first
    return KnnResult(indices, out.astype(np.float32), metric)


def _faiss_search(
    queries: np.ndarray,
    database: Any,
    k: int,
    metric: str,
    exclude: np.ndarray | None,
    chunk_rows: int,
) -> KnnResult:
    """Exact search with faiss' flat index (holds the database in memory)."""
    try:
        import faiss
    except ImportError as error:
        raise ConfigError(
            "the faiss kNN backend needs faiss: pip install 'wsi-tools[faiss]', or use backend torch"
        ) from error
    dim = queries.shape[1]
    index = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
    for _, rows in _chunks(database, chunk_rows):
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if metric == "cosine":
            faiss.normalize_L2(rows)
        index.add(rows)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if metric == "cosine":
        q = q.copy()
        faiss.normalize_L2(q)
    n_excluded = int(exclude.sum()) if exclude is not None else 0
    n_fetch = min(k + SPARE_CANDIDATES + n_excluded, index.ntotal)
    _, found = index.search(q, max(n_fetch, 1))
    if exclude is not None:
        found = np.where((found >= 0) & exclude[np.clip(found, 0, None)], -1, found)
    distances = _exact_rerank(queries, database, found.astype(np.int64), metric)
    return _cut(found.astype(np.int64), distances, k, metric)
