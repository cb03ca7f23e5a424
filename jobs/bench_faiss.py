"""FAISS presets vs exact Flat search: build time, query latency, recall@10.

    python -m tomeray.jobs.bench_faiss --n 200000 --dim 512 --queries 1000 --json faiss.json

Two datasets, both reported: ``uniform`` (random unit vectors, the worst case for IVF and HNSW as
there is no cluster structure to exploit) and ``clustered`` (a Gaussian mixture on the sphere,
closer to real embeddings, which form topical clusters). Queries are fresh draws from the same
distribution, never database vectors. The baseline, Flat, is measured in the same run on the
same vectors; its results are the ground truth for recall.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from tomeray.pipeline.video.faiss_index import build_index, index_to_device, resolve_factory, search_index

DATASETS = ("uniform", "clustered")
PRESETS = ("ivf", "hnsw", "ivfpq")


def make_vectors(kind: str, n: int, dim: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(database (n, dim), queries (n_queries, dim)), float32, unit norm."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        x = rng.standard_normal((n + n_queries, dim), dtype=np.float32)
    elif kind == "clustered":
        # ~sqrt(N) topics; the spread makes neighbours within a topic non-trivial to rank.
        n_clusters = max(2, int(np.sqrt(n)))
        centers = rng.standard_normal((n_clusters, dim), dtype=np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        labels = rng.integers(0, n_clusters, n + n_queries)
        x = centers[labels]
        x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(0.6 / np.sqrt(dim))
    else:
        raise ValueError(f"unknown dataset {kind!r}; choose from {DATASETS}")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth))
    return hits / (len(truth) * k)


def _timed_search(index, queries, k, repeats: int = 3, **knobs) -> tuple[np.ndarray, float]:
    """Batch search; the best of ``repeats`` timings, as the machine may be shared."""
    search_index(index, queries[:8], k, **knobs)  # warm-up: page faults, thread pool start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = search_index(index, queries, k, **knobs)
        best = min(best, time.perf_counter() - start)
    return ids, best * 1000 / len(queries)


def search_settings(index) -> list[dict]:
    """The index's saved default first, then a faster and a more exhaustive setting."""
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexIVF):
        values = [inner.nprobe, max(1, inner.nlist // 64), max(1, inner.nlist // 4)]
        return [{"nprobe": v} for v in dict.fromkeys(values)]
    if isinstance(inner, faiss.IndexHNSW):
        return [{"ef_search": v} for v in dict.fromkeys([inner.hnsw.efSearch, 16, 256])]
    return [{}]


def run_faiss_bench(
    n: int,
    dim: int = 512,
    n_queries: int = 1000,
    *,
    k: int = 10,
    presets: tuple[str, ...] = PRESETS,
    datasets: tuple[str, ...] = DATASETS,
    seed: int = 0,
    threads: int | None = None,
    sweep: bool = True,
    use_gpu: bool = False,
) -> list[dict]:
    """Rows per dataset: Flat first (the baseline and ground truth), then each preset at its
    default search setting and, with ``sweep``, a faster and a more exhaustive one. Rows hold
    index, factory, search (the setting), dataset, n, dim, n_queries, build_s, ms_per_query,
    recall_at_10 and speedup_vs_flat."""
    if threads:
        faiss.omp_set_num_threads(threads)
    rows: list[dict] = []
    ids = np.arange(n, dtype=np.int64)
    for dataset in datasets:
        base, queries = make_vectors(dataset, n, dim, n_queries, seed)
        flat_ms = truth = None
        for preset in ("flat", *presets):
            start = time.perf_counter()
            index = build_index(base, ids, preset, seed=seed, use_gpu="always" if use_gpu else "never")
            build_s = time.perf_counter() - start
            settings = search_settings(index)
            searched = index_to_device(index, "auto") if use_gpu else index
            device = "gpu" if searched is not index else "cpu"
            for knobs in settings if sweep else settings[:1]:
                found, ms = _timed_search(searched, queries, k, **knobs)
                if truth is None:
                    truth, flat_ms = found, ms
                rows.append({
                    "index": preset,
                    "factory": resolve_factory(preset, n, dim),
                    "search": ",".join(f"{key}={value}" for key, value in knobs.items()) or "exact",
                    "dataset": dataset,
                    "n": n,
                    "dim": dim,
                    "n_queries": n_queries,
                    "build_s": round(build_s, 3),
                    "ms_per_query": round(ms, 4),
                    "recall_at_10": round(_recall(found[:, :10], truth[:, :10]), 4),
                    "speedup_vs_flat": round(flat_ms / ms, 2),
                    "device": device,
                })
            del index, searched
            gc.collect()
        del base, queries
    return rows


def format_table(rows: list[dict]) -> str:
    header = (f"{'dataset':<10} {'index':<6} {'factory':<16} {'search':<13} {'n':>8} {'dim':>4} "
              f"{'build_s':>8} {'ms/query':>9} {'recall@10':>9} {'x flat':>7}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['dataset']:<10} {r['index']:<6} {r['factory']:<16} {r['search']:<13} "
                     f"{r['n']:>8} {r['dim']:>4} {r['build_s']:>8.2f} {r['ms_per_query']:>9.4f} "
                     f"{r['recall_at_10']:>9.3f} {r['speedup_vs_flat']:>7.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="database vectors (default 200000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets vs flat")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sweep", action="store_true", help="only each index's default search setting")
    parser.add_argument("--gpu", action="store_true", help="build and search on the GPU (needs faiss-gpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    return parser.parse_args(sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run_faiss_bench(args.n, args.dim, args.queries,
                           presets=tuple(p for p in args.presets.split(",") if p),
                           datasets=tuple(d for d in args.datasets.split(",") if d),
                           seed=args.seed, threads=args.threads, sweep=not args.no_sweep, use_gpu=args.gpu)
    print(f"FAISS {faiss.__version__}, {faiss.omp_get_max_threads()} threads, "
          f"{args.queries} queries, recall and speed relative to exact Flat search in the same run")
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
