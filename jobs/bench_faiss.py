"""FAISS presets at corpus scale vs exact Flat search, built the way ``tomeray index`` builds them.

    python -m tomeray.jobs.bench_faiss --n 1000000 --json faiss.json

The vectors (``jobs/bench_faiss_data.py`` says how they are made: anisotropic clusters of mixed
sizes) are written as Parquet shards; every index is built from them by the indexing job's own
FAISS build (``faiss_build.update_faiss``: trained once on a sample, encoded one group of shards
at a time) in a subprocess of its own, so each row's peak RSS is that build's alone (it includes
~80 MB of imported libraries). Queries are 1000 fresh draws; ground truth is exact search.

Rows (``stage``): ``build`` per index type (build time, recall@10 at the default search settings,
ms/query single-threaded one query at a time and batched on all threads, speedup vs Flat measured
in the same run on the same vectors, bytes/vector on disk, builder peak RSS); ``incremental`` (1 %
new vectors added to the built index: time vs the full build, recall after); ``distributed`` (an
IVF build with 2 Ray workers vs 1 on a local Ray cluster, and whether both give the same index);
``mmap`` (a searcher that memory-maps the index: its RSS vs one that reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tomeray.models.host import process_memory_mb

PRESETS = ("ivf", "hnsw", "ivfpq")
SHARDS_PER_CORPUS = 20  # at most; shards hold at most 50,000 rows
FLAT_SINGLE_QUERIES = 100  # exact search is slow one query at a time: time it on this many


# --------------------------------------------------------------------------------------------
# subprocesses: one build or one searcher each


def _child_build(spec: dict) -> dict:
    from tomeray.pipeline.video.faiss_build import update_faiss
    from tomeray.pipeline.video.faiss_config import FaissConfig

    if spec.get("ray_cpus"):
        import ray

        ray.init(num_cpus=spec["ray_cpus"], include_dashboard=False, log_to_driver=False)
    out = Path(spec["out"])
    record = out / "entry.json"
    prior = json.loads(record.read_text()) if record.is_file() else None
    cfg = FaissConfig(factory=spec["factory"], use_gpu="always" if spec.get("gpu") else "never",
                      **spec.get("faiss", {}))
    start = time.perf_counter()
    entry = update_faiss(out / "index.faiss", [Path(p) for p in spec["shards"]], cfg, dim=spec["dim"],
                         prior=prior)
    seconds = time.perf_counter() - start
    record.write_text(json.dumps(entry))
    return {"build_s": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "entry": entry}


def _child_search(spec: dict) -> dict:
    import faiss
    from tomeray.pipeline.video.faiss_index import index_to_device, load_index, search_index

    entry = spec["entry"]
    index = load_index(Path(spec["out"]) / "index.faiss", mmap=spec["mmap"], factory=entry["factory"],
                       ondisk=bool(entry.get("ondisk")))
    if spec.get("gpu"):
        index = index_to_device(index, "always")
    loaded = process_memory_mb()
    queries = np.load(spec["queries"])
    search_index(index, queries[:8], 10)  # warm-up: thread pool, first page faults
    start = time.perf_counter()
    _, ids = search_index(index, queries, 10)
    batch_ms = (time.perf_counter() - start) * 1000 / len(queries)
    faiss.omp_set_num_threads(1)
    singles = queries[: spec["single_queries"]]
    start = time.perf_counter()
    for q in singles:
        search_index(index, q[None], 10)
    single_ms = (time.perf_counter() - start) * 1000 / len(singles)
    np.save(spec["found"], ids)
    return {"ms_per_query": single_ms, "ms_per_query_batch": batch_ms, "rss_loaded": loaded,
            "rss_searched": process_memory_mb()}


def _run_child(spec: dict) -> dict:
    """Run one measurement in a fresh Python process; its result is the last stdout line."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "tomeray.jobs.bench_faiss", "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step {spec['op']} ({spec.get('factory')}) failed:\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# the benchmark


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth))
    return round(hits / truth.size, 4)


class _Bench:
    def __init__(self, work: Path, n: int, dim: int, n_queries: int, seed: int, gpu: bool = False):
        from tomeray.jobs.bench_faiss_data import Mixture, write_shards

        self.work, self.dim, self.gpu = work, dim, gpu
        mixture = Mixture(n, dim, seed)
        shard_rows = min(50_000, -(-n // SHARDS_PER_CORPUS))
        self.shards = write_shards(work / "data", mixture, n, shard_rows)
        self.shard_rows = shard_rows
        self.new = write_shards(work / "data", mixture, max(1, n // 100), shard_rows, first_id=n, name="new",
                                stream=10**6)  # the 1 % added incrementally ("new" sorts after "base")
        self.queries = work / "queries.npy"
        np.save(self.queries, mixture.draw(n_queries, 1))
        self._truth: dict = {}

    def corpus(self, n: int) -> list[Path]:
        """The first shards holding at least ``n`` rows (a smaller corpus for slow index types)."""
        return self.shards[: max(1, -(-n // self.shard_rows))]

    def truth(self, shards: list[Path]) -> np.ndarray:
        from tomeray.jobs.bench_faiss_data import exact_top_k

        key = tuple(shards)
        if key not in self._truth:
            self._truth[key] = exact_top_k(shards, np.load(self.queries))
        return self._truth[key]

    def build(self, name: str, factory: str, shards: list[Path], **extra) -> tuple[Path, dict]:
        out = self.work / name
        result = _run_child({"op": "build", "out": str(out), "factory": factory, "dim": self.dim,
                             "shards": [str(p) for p in shards], "gpu": self.gpu, **extra})
        return out, result

    def search(self, out: Path, entry: dict, shards: list[Path], mmap: bool = False,
               single_queries: int = 1000) -> dict:
        found = out / "found.npy"
        result = _run_child({"op": "search", "out": str(out), "entry": entry, "mmap": mmap, "gpu": self.gpu,
                             "queries": str(self.queries), "found": str(found),
                             "single_queries": single_queries})
        result["recall_at_10"] = _recall(np.load(found), self.truth(shards))
        return result


def run_faiss_bench(n: int, dim: int = 512, n_queries: int = 1000, *, presets: tuple[str, ...] = PRESETS,
                    max_n: dict | None = None, seed: int = 0, distributed_n: int | None = None,
                    incremental: bool = True, mmap: bool = True, work: Path | None = None,
                    use_gpu: bool = False) -> list[dict]:
    """The rows described in the module doc. ``max_n``: a smaller corpus for some index types
    (``{"hnsw": 300000}``: its build does not fit the time), measured against a Flat search over
    the same smaller corpus. ``distributed_n``: corpus of the 1-vs-2-workers rows (0: none)."""
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="bench-faiss-")) if own else Path(work)
    try:
        bench = _Bench(work, n, dim, n_queries, seed, gpu=use_gpu)
        rows, flat_ms = [], {}
        raw_mb = lambda rows_: rows_ * dim * 4 / 2**20  # noqa: E731
        for preset in ("flat", *presets):
            shards = bench.corpus(min(n, (max_n or {}).get(preset, n)))
            n_p = min(n, len(shards) * bench.shard_rows)
            if n_p not in flat_ms:  # the baseline for this corpus size, measured in this run
                out, _ = bench.build(f"flat-{n_p}", "flat", shards)
                entry = json.loads((out / "entry.json").read_text())
                flat_ms[n_p] = bench.search(out, entry, shards, single_queries=FLAT_SINGLE_QUERIES)
            out, built = bench.build(preset, preset, shards)
            entry = built["entry"]
            searched = bench.search(out, entry, shards, single_queries=FLAT_SINGLE_QUERIES
                                    if preset == "flat" else n_queries)
            flat = flat_ms[n_p]
            rows.append({
                "stage": "build", "index": preset, "factory": entry["factory"], "n": n_p, "dim": dim,
                "n_queries": n_queries, "search": _settings(entry["params"]),
                **_tuning_fields(entry.get("tuning")),
                "build_s": round(built["build_s"], 2), "train_s": entry["build"].get("train_s"),
                "recall_at_10": searched["recall_at_10"],
                "ms_per_query": round(searched["ms_per_query"], 4),
                "ms_per_query_batch": round(searched["ms_per_query_batch"], 4),
                "speedup_vs_flat": round(flat["ms_per_query"] / searched["ms_per_query"], 2),
                "speedup_vs_flat_batch": round(flat["ms_per_query_batch"] / searched["ms_per_query_batch"],
                                               2),
                "bytes_per_vector": entry["bytes_per_vector"], "peak_rss_mb": round(built["peak_rss_mb"], 1),
                "raw_vectors_mb": round(raw_mb(n_p), 1),
                "rss_vs_raw": round(built["peak_rss_mb"] / raw_mb(n_p), 3),
            })
            if mmap:
                mapped = bench.search(out, entry, shards, mmap=True, single_queries=min(100, n_queries))
                rows.append({"stage": "mmap", "index": preset, "factory": entry["factory"], "n": n_p,
                             "mapped": entry["mmap"], "recall_at_10": mapped["recall_at_10"],
                             "ms_per_query": round(mapped["ms_per_query"], 4),
                             "rss_loaded_mb": searched["rss_loaded"]["VmRSS"],
                             "rss_mapped_mb": mapped["rss_loaded"]["VmRSS"],
                             "rss_mapped_after_queries_mb": mapped["rss_searched"]["VmRSS"],
                             "anon_mapped_after_queries_mb": mapped["rss_searched"].get("RssAnon")})
            if incremental:
                grown = shards + bench.new
                _, added = bench.build(preset, preset, grown)
                after = bench.search(out, added["entry"], grown, single_queries=10)
                rows.append({"stage": "incremental", "index": preset, "factory": entry["factory"], "n": n_p,
                             "added": added["entry"]["build"]["added"],
                             "mode": added["entry"]["build"]["mode"],
                             "build_s": round(added["build_s"], 2), "rebuild_s": round(built["build_s"], 2),
                             "add_vs_rebuild": round(added["build_s"] / built["build_s"], 4),
                             "recall_at_10": after["recall_at_10"], "recall_before": searched["recall_at_10"],
                             "trained_on": added["entry"]["trained_on"],
                             "peak_rss_mb": round(added["peak_rss_mb"], 1)})
            shutil.rmtree(out, ignore_errors=True)
        if distributed_n != 0:
            rows.extend(_distributed_rows(bench, min(n, distributed_n or n)))
        return rows
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _distributed_rows(bench: _Bench, n: int) -> list[dict]:
    """The IVF build with 1 and with 2 Ray workers (local 2-CPU cluster, one CPU per task)."""
    shards = bench.corpus(n)
    group_rows = max(1, (len(shards) * bench.shard_rows) // 8)  # 8 groups: work for both workers
    rows, results = [], []
    for workers in (1, 2):
        out, built = bench.build(f"ivf-{workers}w", "ivf", shards, ray_cpus=2,
                                 faiss={"workers": workers, "group_rows": group_rows})
        bench.search(out, built["entry"], shards, single_queries=10)
        results.append(np.load(out / "found.npy"))
        rows.append({"stage": "distributed", "index": "ivf", "factory": built["entry"]["factory"],
                     "n": built["entry"]["ntotal"], "workers": workers, "build_s": round(built["build_s"], 2),
                     "train_s": built["entry"]["build"].get("train_s"),
                     "nodes": built["entry"]["build"]["nodes"]})
        shutil.rmtree(out, ignore_errors=True)
    rows[1]["speedup_vs_1_worker"] = round(rows[0]["build_s"] / rows[1]["build_s"], 2)
    rows[1]["same_results"] = bool(np.array_equal(results[0], results[1]))
    return rows


def _tuning_fields(tuning: dict | None) -> dict:
    """What the build's own tuning chose and measured (on held-out corpus rows; the row's
    ``recall_at_10`` is measured on this benchmark's fresh queries)."""
    if not tuning:
        return {"target_recall": None}
    return {"target_recall": tuning["target_recall"], "tuned_recall_at_10": tuning["recall_at_10"],
            "tuned_recall_lower": tuning.get("recall_at_10_lower"),
            "tuning_met": tuning["met"], "tuning_s": tuning.get("seconds")}


def _settings(params: dict) -> str:
    return ",".join(f"{k}={v:g}" for k, v in params.items() if v is not None) or "exact"


def format_table(rows: list[dict]) -> str:
    header = (f"{'index':<6} {'factory':<27} {'n':>8} {'build_s':>8} {'search':<16} {'recall@10':>9} "
              f"{'ms/q':>8} "
              f"{'ms/q bat':>8} {'x flat':>7} {'x bat':>6} {'B/vec':>7} {'peak MB':>8} {'/raw':>5}")
    lines = [header, "-" * len(header)]
    for r in (r for r in rows if r["stage"] == "build"):
        lines.append(f"{r['index']:<6} {r['factory']:<27} {r['n']:>8} {r['build_s']:>8.1f} "
                     f"{r['search']:<16} {r['recall_at_10']:>9.3f} {r['ms_per_query']:>8.3f} "
                     f"{r['ms_per_query_batch']:>8.3f} "
                     f"{r['speedup_vs_flat']:>7.1f} {r['speedup_vs_flat_batch']:>6.1f} "
                     f"{r['bytes_per_vector'] or 0:>7.0f} {r['peak_rss_mb']:>8.0f} {r['rss_vs_raw']:>5.2f}")
    for r in rows:
        if r["stage"] == "incremental":
            lines.append(f"incremental {r['index']}: +{r['added']} vectors ({r['mode']}) in "
                         f"{r['build_s']:.1f} s"
                         f" = {r['add_vs_rebuild']:.3f} x the full build; recall@10 {r['recall_before']:.3f}"
                         f" -> {r['recall_at_10']:.3f}")
        elif r["stage"] == "distributed":
            extra = (f", {r['speedup_vs_1_worker']:.2f} x 1 worker, same results: {r['same_results']}"
                     if "speedup_vs_1_worker" in r else "")
            lines.append(f"distributed ivf, {r['workers']} worker(s): {r['build_s']:.1f} s over {r['n']} "
                         f"vectors{extra}")
        elif r["stage"] == "mmap":
            lines.append(f"mmap {r['index']} ({r['mapped']}): RSS {r['rss_mapped_mb']:.0f} MB mapped vs "
                         f"{r['rss_loaded_mb']:.0f} MB read ({r['rss_mapped_after_queries_mb']:.0f} MB after "
                         f"the queries, {r['anon_mapped_after_queries_mb']:.0f} MB of it anonymous), "
                         f"recall@10 {r['recall_at_10']:.3f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="corpus vectors (default 200000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets vs flat")
    parser.add_argument("--max-n", default="", help="smaller corpora for slow types, e.g. hnsw=300000")
    parser.add_argument("--distributed-n", type=int, default=None, help="corpus of the 1-vs-2-workers rows "
                        "(default: --n; 0: skip them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--gpu", action="store_true", help="train and search on the GPU (needs faiss-gpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps({"build": _child_build, "search": _child_search}[spec["op"]](spec)))
        return 0
    max_n = {k: int(v) for k, v in (item.split("=") for item in args.max_n.split(",") if item)}
    started = time.perf_counter()
    presets = tuple(p for p in args.presets.split(",") if p)
    rows = run_faiss_bench(args.n, args.dim, args.queries, presets=presets, max_n=max_n, seed=args.seed,
                           distributed_n=args.distributed_n, work=args.work, use_gpu=args.gpu)
    import faiss

    print(f"FAISS {faiss.__version__}, {os.cpu_count()} CPUs, {args.queries} queries; recall and speed "
          "relative to exact Flat search over the same vectors in this run "
          f"({time.perf_counter() - started:.0f} s)")
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
