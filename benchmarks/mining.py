"""Mining benchmark. Prints progress, then one JSON object on the last line.

(a) Exact kNN, CPU: 1,000 queries over 1,000,000 random 512-d float32
    features streamed from an uncompressed zarr array on disk (the format of
    the weak-set feature cache), against the bare matrix products of the same
    queries with the same chunks (chunk reads not timed). Peak RSS is the
    process's high-water mark (``ru_maxrss``), torch itself included.
(b) End-to-end mining on a generated store (false positives, weak-set
    features computed once, kNN, mined.csv) against the naive approach of the
    authors' code, which re-embeds the whole weak set for every false
    positive: a few false positives are timed that way and extrapolated.

    .venv/bin/python benchmarks/mining.py [--rows 1000000] [--weak-patches 2000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def bench_knn(folder: Path, rows: int, queries: int, dim: int, k: int) -> dict[str, float]:
    import torch
    import zarr

    from wsi_tools.mining.knn import default_chunk_rows, knn_search

    block = 16384
    database = zarr.create_array(
        folder / "features.zarr", shape=(rows, dim), chunks=(block, dim), dtype="float32", compressors=None
    )
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for start in range(0, rows, block):  # generated chunk by chunk: never resident as a whole
        n = min(block, rows - start)
        database[start : start + n] = rng.standard_normal((n, dim), dtype=np.float32)
    print(f"(a) wrote {rows} x {dim} features in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    q = rng.standard_normal((queries, dim), dtype=np.float32)

    chunk_rows = default_chunk_rows(queries, database=database)
    q_tensor = torch.from_numpy(q)
    matmul_s = 0.0
    for start in range(0, rows, chunk_rows):
        x = torch.from_numpy(database[start : start + chunk_rows])
        began = time.perf_counter()
        _ = q_tensor @ x.T
        matmul_s += time.perf_counter() - began
    began = time.perf_counter()
    result = knn_search(q, database, k, device="cpu")
    knn_s = time.perf_counter() - began
    # Spot-check exactness on two queries against a brute-force float64 pass (small blocks).
    checked = [0, queries - 1]
    best = np.full((len(checked), k), np.inf)
    for start in range(0, rows, block):
        rows_block = database[start : start + block].astype(np.float64)
        for j, i in enumerate(checked):
            d = np.sqrt(((rows_block - q[i]) ** 2).sum(axis=1))
            best[j] = np.sort(np.concatenate([best[j], np.partition(d, k)[:k] if len(d) > k else d]))[:k]
    assert np.allclose(result.distances[checked], best, rtol=1e-4), "kNN result is not exact"
    print(
        f"(a) kNN {queries} x {rows}: {knn_s:.1f} s; bare matmul {matmul_s:.1f} s; ratio {knn_s / matmul_s:.2f}; "
        f"chunk {chunk_rows} rows; peak RSS {peak_rss_mb():.0f} MB",
        file=sys.stderr,
    )
    return {
        "knn_s": knn_s,
        "matmul_s": matmul_s,
        "knn_over_matmul": knn_s / matmul_s,
        "chunk_rows": chunk_rows,
    }


def bench_mining(folder: Path, weak_patches: int, naive_queries: int) -> dict[str, float]:
    from wsi_tools.mining.knn import knn_search
    from wsi_tools.mining.mine import (
        MiningConfig,
        fp_candidate_table,
        run_mining,
        training_table,
        weak_pool_table,
    )
    from wsi_tools.store import PatchStore
    from wsi_tools.testing.toy import write_toy_store
    from wsi_tools.train import TrainConfig, train
    from wsi_tools.train.checkpoint import read_checkpoint
    from wsi_tools.train.inference import embed_patches, load_model

    per_slide = 500
    slides = [(f"h{i}", "hard", 24, 8) for i in range(5)]
    slides += [(f"w{i}", "weak", per_slide, 0) for i in range(max(1, weak_patches // per_slide))]
    started = time.perf_counter()
    store_path = write_toy_store(folder / "store.zarr", slides, patch_size=128)
    print(f"(b) generated store in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    recipe = TrainConfig(epochs=1, input_size=64, batch_size=32, num_workers=0, bootstrap=0, progress=False)
    weak = train(recipe, store_path, folder / "weak")
    # Threshold 0: every training negative is a false positive (a realistic count for this size).
    config = MiningConfig(threshold=0.0, alpha=20, batch_size=128, device="cpu", progress=False)
    began = time.perf_counter()
    result = run_mining(weak.best_checkpoint, store_path, folder / "mine", config)
    ours_s = time.perf_counter() - began
    n_fp = len(result.false_positives.table)

    # Naive: per false positive, embed the whole weak set again, then rank by distance.
    store = PatchStore(store_path)
    state = read_checkpoint(weak.best_checkpoint)
    model, train_config = load_model(weak.best_checkpoint)
    pool = weak_pool_table(store, state["splits"])
    queries = fp_candidate_table(
        store, state["splits"], "train", training=training_table(store, state, train_config)
    )
    query_features = embed_patches(model, store_path, queries.refs[:naive_queries], 128, "cpu")
    began = time.perf_counter()
    for i in range(naive_queries):
        features = embed_patches(model, store_path, pool.refs, 128, "cpu")
        knn_search(query_features[i : i + 1], features, config.alpha, device="cpu")
    naive_per_fp = (time.perf_counter() - began) / naive_queries
    naive_s = naive_per_fp * n_fp
    print(
        f"(b) mining {n_fp} false positives over {len(pool)} weak patches: {ours_s:.1f} s (features once); "
        f"naive {naive_per_fp:.1f} s per false positive -> {naive_s:.0f} s; speedup {naive_s / ours_s:.1f}x",
        file=sys.stderr,
    )
    return {
        "mining_s": ours_s,
        "naive_mining_s_extrapolated": naive_s,
        "naive_s_per_false_positive": naive_per_fp,
        "n_false_positives": n_fp,
        "weak_patches": len(pool),
        "speedup_vs_naive_mining": naive_s / ours_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="database rows for (a) (default 1e6)")
    parser.add_argument("--queries", type=int, default=1000, help="queries for (a) (default 1000)")
    parser.add_argument(
        "--weak-patches", type=int, default=2000, help="weak-set patches for (b) (default 2000)"
    )
    parser.add_argument(
        "--naive-queries", type=int, default=2, help="false positives timed naively (default 2)"
    )
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="wsi-tools-bench-mining-") as tmp:
        folder = Path(tmp)
        knn = bench_knn(folder, args.rows, args.queries, 512, 20)
        rss = peak_rss_mb()
        mining = bench_mining(folder, args.weak_patches, args.naive_queries)
    result = {
        "knn_s": round(knn["knn_s"], 2),
        "matmul_s": round(knn["matmul_s"], 2),
        "knn_over_matmul": round(knn["knn_over_matmul"], 3),
        "peak_rss_mb": round(rss, 1),
        "speedup_vs_naive_mining": round(mining["speedup_vs_naive_mining"], 1),
        "knn_rows": args.rows,
        "knn_queries": args.queries,
        "knn_chunk_rows": knn["chunk_rows"],
        "mining_s": round(mining["mining_s"], 2),
        "naive_mining_s_extrapolated": round(mining["naive_mining_s_extrapolated"], 1),
        "n_false_positives": mining["n_false_positives"],
        "weak_patches": mining["weak_patches"],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
