"""The search service under closed-loop load: latency percentiles and queries/s of text queries from
1, 4 and 16 concurrent clients on loopback, for ``tomeray serve`` on uvicorn and on Ray Serve.

    python -m tomeray.jobs.bench_serve --rows 100000 --json serve.json

The index holds ``--rows`` synthetic clustered unit vectors (``bench_faiss.make_vectors``) with
metadata for ``rows / 10`` videos of ten 10 s segments, under the manifest of the real ViT-B-32 text
tower with random weights (the text encoding is real; the vectors it is compared with are not).
Every client sends its next query when the previous answer arrives; each run stops after
``--requests`` answers or ``--seconds`` seconds. The server reports per answer how long its batch
spent encoding text and in FAISS, and how long the metadata join took.

Baseline, measured in the same run in this process: one query at a time as ``tomeray search``
computes it (the padded 77-token text forward, FAISS, the join), no HTTP and no batching. Also
reported: the metadata join alone at several index sizes, and the largest difference between the
served (trimmed) text embeddings and the padded computation.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

QUERIES = [
    "people walking in the street", "a dog running on the beach", "a man talking to the camera",
    "cars driving at night", "a woman cooking in a kitchen", "children playing football in a park",
    "a cat sleeping on a sofa", "snow falling on trees", "a crowd at a concert", "someone riding a bike",
    "waves crashing on rocks", "a plane taking off", "two people shaking hands", "a city skyline at dusk",
    "a close-up of hands typing", "a train arriving at a station", "rain on a window", "a horse galloping",
    "fireworks over a river", "a chef slicing vegetables", "a person climbing a mountain", "traffic lights",
    "birds flying over a lake", "a meeting in an office", "a car crash", "dancing at a wedding",
    "a tree in the wind", "an empty corridor", "a boat on the sea", "people laughing at a table",
]
ARCH = "ViT-B-32"
SEGMENT_S = 10.0


def build_index(root: Path, rows: int, factory: str, dim: int, identity: dict, weights_id: str,
                seed: int = 0, build_faiss: bool = True) -> Path:
    """A synthetic index in the real layout (Parquet shards, FAISS, manifest); reused when present."""
    import pyarrow as pa
    from tomeray.jobs.bench_faiss_data import make_vectors
    from tomeray.pipeline.video.config import FaissConfig
    from tomeray.pipeline.video.job import finish_index
    from tomeray.pipeline.video.layout import IndexLayout, embeddings_schema, index_header

    layout = IndexLayout(root)
    if layout.exists() and layout.read_manifest().get("counts", {}).get("rows") == rows:
        return root
    sampling = {"fps": None, "segment_s": SEGMENT_S, "num_frames": int(identity.get("num_frames", 12))}
    manifest = layout.open(index_header(identity, weights_id, dim, sampling, None))
    vectors = make_vectors("clustered", rows, dim, 0, seed)[0] if build_faiss else \
        np.ones((rows, dim), np.float32)
    shard_rows = 50_000
    for part, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        index = np.arange(start, start + n)
        layout.write_embeddings(pa.Table.from_pydict({
            "video_id": pa.array(index * 7919 + 1, pa.int64()),
            "path": [f"/corpus/{i // 10 // 1000:03d}/video_{i // 10:07d}.mp4" for i in index],
            "start_s": (index % 10) * SEGMENT_S, "end_s": (index % 10 + 1) * SEGMENT_S,
            "duration_s": np.full(n, 10 * SEGMENT_S), "fps": np.full(n, 25.0), "n_frames": np.full(n, 2500),
            "frame_indices": [[int(i % 10) * 250] for i in index],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors[start:start + n].ravel()), dim),
        }, schema=embeddings_schema(dim)), f"bench-{part:05d}")
    finish_index(layout, manifest, FaissConfig(factory=factory, use_gpu="never"), build_faiss, set())
    return root


def percentiles(values) -> dict:
    v = np.asarray(values, np.float64)
    return {f"p{p}": float(np.percentile(v, p)) if len(v) else float("nan") for p in (50, 95, 99)}


# ---------------------------------------------------------------------------- in-process parts


def baseline_and_parity(encoder, index_dir: Path, k: int, repeats: int) -> tuple[list[dict], float]:
    """The sequential, padded, in-process query (the baseline) and the trimmed one, and the largest
    difference between trimmed and padded embeddings."""
    import torch
    from tomeray.pipeline.video.search import VideoSearcher

    searcher = VideoSearcher(index_dir, "cpu")
    searcher.use_encoder(encoder)
    text = encoder.text
    rows = []
    with torch.inference_mode():
        padded_all = text.model.encode_text(text.tokenize(QUERIES), normalize=True).float()
        parity = float((text(QUERIES) - padded_all).abs().max())
        for name, encode in (("in-process, padded (baseline)",
                              lambda q: text.model.encode_text(text.tokenize([q]), normalize=True).float()),
                             ("in-process, trimmed", lambda q: text([q]))):
            times = {"total": [], "encode": [], "faiss": [], "metadata": []}
            for i in range(repeats + 3):
                q = QUERIES[i % len(QUERIES)]
                t0 = time.perf_counter()
                vector = encode(q).numpy()
                t1 = time.perf_counter()
                ranking = searcher.rank(vector, k)
                t2 = time.perf_counter()
                searcher.join(ranking.scores[0], ranking.ids[0], 0, k)
                t3 = time.perf_counter()
                if i >= 3:  # warm-up
                    for key, value in zip(times, (t3 - t0, t1 - t0, t2 - t1, t3 - t2)):
                        times[key].append(value * 1e3)
            p = percentiles(times["total"])
            rows.append({"server": name, "clients": 1, "requests": repeats, "p50_ms": p["p50"],
                         "p95_ms": p["p95"], "p99_ms": p["p99"], "qps": 1e3 / np.mean(times["total"]),
                         **{f"{s}_ms": float(np.median(times[s])) for s in ("encode", "faiss", "metadata")},
                         "batch_mean": 1.0})
    return rows, parity


def join_sizes(sizes: list[int], workdir: Path, k: int, queries: int = 2000) -> list[dict]:
    """The metadata join alone (k hits per query, random ids) at several index sizes."""
    from tomeray.pipeline.video.layout import IndexLayout
    from tomeray.pipeline.video.metadata import MetadataTable

    out = []
    rng = np.random.default_rng(0)
    for n in sizes:
        root = build_index(workdir / f"join-{n}", n, "flat", 1, {"arch": "none"}, "none", build_faiss=False)
        layout = IndexLayout(root)
        start = time.perf_counter()
        MetadataTable.open(layout)
        first_open = time.perf_counter() - start
        start = time.perf_counter()
        table = MetadataTable.open(layout)
        reopen = time.perf_counter() - start
        ids = np.asarray(table.ids)[rng.integers(0, n, (queries, k))]
        times = []
        for row in ids:
            t = time.perf_counter()
            table.rows(table.positions(row))
            times.append((time.perf_counter() - t) * 1e3)
        p = percentiles(times[10:])
        out.append({"server": "metadata join", "clients": 1, "rows": n, "k": k, "p50_ms": p["p50"],
                    "p99_ms": p["p99"], "qps": 1e3 / float(np.mean(times[10:])), "first_open_s": first_open,
                    "reopen_ms": reopen * 1e3})
    return out


# ---------------------------------------------------------------------------- servers and load


class Server:
    """``tomeray serve ARGS`` in a child process, ready (``url``) when it prints its URL; a context
    manager that stops it (Ctrl-C, then kill)."""

    def __init__(self, args: list[str], timeout: float = 600):
        self.process = subprocess.Popen([sys.executable, "-m", "tomeray.pipeline.cli", "serve", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url, lines, ready = "", [], threading.Event()

        def read():
            for line in self.process.stdout:
                lines.append(line)
                if line.startswith("serving") and (match := re.search(r" at (http://\S+)", line)):
                    self.url = match.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(lines[-30:]))

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def load(url: str, clients: int, requests: int, seconds: float, k: int) -> dict:
    """Closed loop: ``clients`` threads, each with a keep-alive connection, one query at a time."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    lock, results, stop = threading.Lock(), [], threading.Event()
    counter = iter(range(10**9))

    def client(number: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        while not stop.is_set():
            with lock:
                i = next(counter)
                if i >= requests:
                    stop.set()
                    return
            q = QUERIES[(i * 7 + number) % len(QUERIES)]
            started = time.perf_counter()
            connection.request("GET", f"/api/search?k={k}&q={quote(q)}")
            response = connection.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
            timing = json.loads(body)["timing_ms"]
            with lock:
                results.append((elapsed * 1e3, timing))

    for _ in range(3):  # warm-up
        client_warm = http.client.HTTPConnection(host, int(port), timeout=120)
        client_warm.request("GET", f"/api/search?k={k}&q=warm+up")
        client_warm.getresponse().read()
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    deadline = start + seconds
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()))
    stop.set()
    for t in threads:
        t.join(120)
    wall = time.perf_counter() - start
    latency = [r[0] for r in results]
    p = percentiles(latency)
    return {"clients": clients, "requests": len(results), "p50_ms": p["p50"], "p95_ms": p["p95"],
            "p99_ms": p["p99"], "qps": len(results) / wall,
            **{f"{s}_ms": float(np.median([r[1][s] for r in results]))
               for s in ("encode", "faiss", "metadata")},
            "batch_mean": float(np.mean([r[1]["batch"] for r in results]))}


def run_servers(index_dir: Path, servers: list[str], clients: list[int], requests: int, seconds: float,
                k: int, port: int) -> list[dict]:
    rows = []
    common = ["inference.device=cpu", "server.reload_s=0", "search.cache_size=0"]  # every query encoded
    for name in servers:
        if name == "uvicorn":
            args = [str(index_dir), "--port", "0", *common]
        else:
            args = [str(index_dir), "--ray", "--replicas", "2", "--port", str(port), "ray.num_cpus=1",
                    *common]
        with Server(args) as server:
            for c in clients:
                rows.append({"server": "uvicorn" if name == "uvicorn" else "ray-serve x2",
                             **load(server.url, c, requests, seconds, k)})
                print(f"  {rows[-1]['server']:>13}  {c:>2} clients: p50 {rows[-1]['p50_ms']:.1f} ms, "
                      f"{rows[-1]['qps']:.1f} q/s", flush=True)
    return rows


def run_sharded(index_dir: Path, shards: list[int], requests: int, seconds: float, k: int,
                port: int) -> list[dict]:
    """Ray Serve with the index split over S shard replicas (one front replica): 1-client latency and
    what each shard replica holds (its anonymous memory growth while loading its part: the index
    memory; its peak RSS, which also counts the index file's mapped pages it read)."""
    rows = []
    for s in shards:
        args = [str(index_dir), "--ray", "--replicas", "1", "--shards", str(s), "--port", str(port),
                "ray.num_cpus=1", "ray.shard_cpus=0.5", "inference.device=cpu", "server.reload_s=0",
                "search.cache_size=0"]
        with Server(args) as server:
            measured = load(server.url, 1, requests, seconds, k)
            connection = http.client.HTTPConnection(*server.url.removeprefix("http://").rsplit(":", 1))
            connection.request("GET", "/api/stats")
            replicas = json.loads(connection.getresponse().read())["indexes"][0]["search"]["shard_replicas"]
        index_mb = [round(r["memory_loaded_mb"]["RssAnon"] - r["memory_before_mb"]["RssAnon"], 1)
                    for r in replicas]
        rows.append({"server": f"ray-serve, {s} shard(s)", "shards": s, **measured,
                     "shard_rows": [r["rows"] for r in replicas], "shard_index_mb": index_mb,
                     "shard_peak_rss_mb": [r["memory_mb"]["VmHWM"] for r in replicas]})
        print(f"  {s} shard(s): p50 {measured['p50_ms']:.1f} ms, index memory per shard {index_mb} MB",
              flush=True)
    one = next((r for r in rows if r["shards"] == 1), None)
    for r in rows:
        if one:
            r["index_mb_vs_1_shard"] = round(max(r["shard_index_mb"]) / max(one["shard_index_mb"][0], 1e-9),
                                             3)
    return rows


def fidelity_queries() -> list[str]:
    """480 short captions (10 subjects x 8 actions x 6 places): enough queries that the top-10
    overlap is known to about +-0.01."""
    subjects = ["a dog", "a man", "two children", "a red car", "an old woman", "a cat", "a crowd", "a horse",
                "a chef", "a boat"]
    actions = ["running", "sleeping", "talking", "jumping", "cooking", "waiting", "dancing", "swimming"]
    places = ["on the beach", "in a kitchen", "at night", "in the rain", "in a park", "on a street"]
    return [f"{s} {a} {p}" for s in subjects for a in actions for p in places]


def run_text_precision(index_dir: Path, encoder, requests: int, seconds: float, k: int,
                       n_queries: int | None = None) -> list[dict]:
    """The text tower in each precision (``models.quantize.TEXT_PRECISIONS``) against fp32: per
    query the cosine between the embeddings and the overlap of their top 10 (over
    :func:`fidelity_queries`, or its first ``n_queries``), and the served 1-client latency (query
    cache off, so every query runs the tower)."""
    from tomeray.models.quantize import TEXT_PRECISIONS
    from tomeray.pipeline.video.query_text import QueryTextEncoder
    from tomeray.pipeline.video.search import VideoSearcher

    searcher = VideoSearcher(index_dir, "cpu")
    searcher.use_encoder(encoder)
    queries = fidelity_queries()[:n_queries]
    fp32 = QueryTextEncoder(encoder).encode(queries)
    fp32_top = searcher.rank(fp32, 10).ids
    rows = []
    for precision in TEXT_PRECISIONS:
        vectors = fp32 if precision == "fp32" else QueryTextEncoder(encoder, precision).encode(queries)
        norms = np.linalg.norm(fp32, axis=1) * np.linalg.norm(vectors, axis=1)
        cosine = np.minimum((fp32 * vectors).sum(1) / norms, 1.0)  # (rounding: an unchanged vector is at 1)
        overlap = [len(np.intersect1d(a, b)) / 10 for a, b in zip(fp32_top, searcher.rank(vectors, 10).ids)]
        args = [str(index_dir), "--port", "0", "inference.device=cpu", "server.reload_s=0",
                f"search.text_precision={precision}", "search.cache_size=0"]
        with Server(args) as server:
            measured = load(server.url, 1, requests, seconds, k)
        rows.append({"server": f"uvicorn, text {precision}", "text_precision": precision, **measured,
                     "fidelity_queries": len(queries), "cosine_min": float(cosine.min()),
                     "cosine_mean": float(cosine.mean()), "top10_overlap": float(np.mean(overlap)),
                     "top10_overlap_min": float(np.min(overlap))})
        print(f"  text {precision}: p50 {measured['p50_ms']:.1f} ms, encode {measured['encode_ms']:.1f} ms, "
              f"top-10 overlap with fp32 {np.mean(overlap):.3f}", flush=True)
    return rows


# ---------------------------------------------------------------------------- report


# (key, title, width, format): the columns of the table
COLUMNS = [("server", "server", -30, ""), ("clients", "clients", 7, "d"), ("requests", "reqs", 5, "d"),
           ("p50_ms", "p50 ms", 7, ".1f"), ("p95_ms", "p95 ms", 7, ".1f"), ("p99_ms", "p99 ms", 7, ".1f"),
           ("qps", "q/s", 7, ".1f"), ("encode_ms", "encode", 7, ".2f"), ("faiss_ms", "faiss", 7, ".2f"),
           ("metadata_ms", "join", 6, ".3f"), ("batch_mean", "batch", 5, ".1f")]


def format_table(rows: list[dict]) -> str:
    def cells(values) -> str:
        return " ".join(f"{v:<{-w}}" if w < 0 else f"{v:>{w}}" for v, (_, _, w, _) in zip(values, COLUMNS))

    header = cells([title for _, title, _, _ in COLUMNS])
    body = [cells([format(r[key], fmt) for key, _, _, fmt in COLUMNS]) for r in rows]
    return "\n".join([header, "-" * len(header), *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the synthetic index")
    parser.add_argument("--faiss", default="flat", help="FAISS preset or factory of the index (default flat)")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated")
    parser.add_argument("--servers", default="uvicorn,ray", help="uvicorn and/or ray (2 replicas)")
    parser.add_argument("--requests", type=int, default=400, help="answers per run at most")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per run at most")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--join-sizes", default="10000,100000,1000000",
                        help="index sizes of the metadata join benchmark")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tomeray-bench-serve"),
                        help="where the synthetic indexes are written (kept and reused)")
    parser.add_argument("--port", type=int, default=8765, help="Ray Serve's HTTP port")
    parser.add_argument("--shards", default="", help="also Ray Serve with the index in S shards, e.g. 1,2")
    parser.add_argument("--text-precision", action="store_true",
                        help="also the text tower in fp32 vs int8 (fidelity and 1-client latency)")
    parser.add_argument("--fidelity-queries", type=int, default=None,
                        help="captions the text precisions are compared on (default: all 480)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    import torch
    from tomeray.models.tempme import VideoModelConfig, create_video_encoder

    torch.set_num_threads(os.cpu_count() or 1)
    encoder = create_video_encoder(VideoModelConfig(arch=ARCH, pretrained="none"), device="cpu",
                                   precision="fp32")
    index_dir = build_index(args.workdir / f"index-{args.rows}-{args.faiss}", args.rows, args.faiss,
                            encoder.embed_dim, json.loads(json.dumps(encoder.identity(), default=str)),
                            encoder.weights_id)
    print(f"index: {args.rows} rows ({args.faiss}), text tower {ARCH} with random weights", flush=True)
    rows, parity = baseline_and_parity(encoder, index_dir, args.k, repeats=60)
    rows[1]["parity_max_abs"] = parity
    extra_rows = run_text_precision(index_dir, encoder, args.requests, args.seconds, args.k,
                                    args.fidelity_queries) \
        if args.text_precision else []
    del encoder
    rows += run_servers(index_dir, [s for s in args.servers.split(",") if s],
                        [int(c) for c in args.clients.split(",")], args.requests, args.seconds, args.k,
                        args.port)
    if args.shards:
        extra_rows += run_sharded(index_dir, [int(s) for s in args.shards.split(",")], args.requests,
                                  args.seconds, args.k, args.port)
    joins = join_sizes([int(n) for n in args.join_sizes.split(",") if n], args.workdir, args.k)

    print(format_table(rows + extra_rows))
    for r in extra_rows:
        if "shards" in r:
            print(f"{r['server']}: rows per shard {r['shard_rows']}, index memory per shard "
                  f"{r['shard_index_mb']} MB ({r.get('index_mb_vs_1_shard', float('nan')):.2f}x 1 shard), "
                  f"peak RSS per shard {r['shard_peak_rss_mb']} MB")
        else:
            print(f"{r['server']}: cosine to fp32 min {r['cosine_min']:.4f}, top-10 overlap mean "
                  f"{r['top10_overlap']:.3f} (min {r['top10_overlap_min']:.2f})")
    base = rows[0]
    for name in dict.fromkeys(r["server"] for r in rows[2:]):
        mine = {r["clients"]: r for r in rows if r["server"] == name}
        one, most = mine[min(mine)], mine[max(mine)]
        print(f"{name}: p50 at 1 client {one['p50_ms']:.1f} ms = {base['p50_ms'] / one['p50_ms']:.2f}x "
              f"faster than the baseline; q/s at {max(mine)} clients = {most['qps'] / one['qps']:.2f}x "
              "that at 1")
    print("metadata join (k hits): " + "; ".join(
        f"{j['rows']:,} rows p50 {j['p50_ms'] * 1e3:.0f} us, p99 {j['p99_ms'] * 1e3:.0f} us "
        f"(reopen {j['reopen_ms']:.1f} ms)" for j in joins))
    print(f"trimmed vs padded text embeddings: max abs difference {parity:.2e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        extra = {"index_rows": args.rows, "faiss": args.faiss}
        rows = [{**r, **extra} for r in rows + extra_rows]
        args.json.write_text(json.dumps(rows + joins, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
