"""``tomeray index``: embed a video corpus into a resumable, mergeable index on Ray Data.

    discover -> skip what is indexed -> decode (Ray tasks) -> embed (actor pool) -> Parquet shards
    (written by the driver as results stream in) -> FAISS index over all shards -> manifest

* Resume: shards are written atomically while the job runs; a rerun (after a crash, or with new
  inputs) embeds only the inputs without rows. Inputs that failed are retried by a rerun (they
  have no rows); their latest error stays in the errors table until they succeed.
* Ids: see :mod:`pipeline.index_layout` (a hash of the canonical path, or of the path relative to
  ``input.id_root``), so reruns, other machines and merges agree on them.
* Compatibility: the manifest pins the encoder identity (arch, weights, merge schedule, frames),
  the sampling and the id scheme; adding to an index with anything else is refused.
* Cluster: a local Ray cluster by default, or ``--address`` / ``RAY_ADDRESS``. Decoding and
  embedding run anywhere in the cluster; only the driver writes, so the output directory needs to
  be on storage the *driver* can write (for ``ray job submit`` that is the head node, so use a
  shared file system or a path that is local to the head node).

Exit status of ``main``: 0 every input is indexed, 1 the index was updated but some inputs failed
(listed in the errors table), 2 nothing was done (bad arguments, config, weights or an
incompatible index), 130 interrupted (completed shards are kept; rerun to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tomeray.models.device import InferenceConfig
from tomeray.models.errors import InputError, TomerayError
from tomeray.models.tempme import VideoModelConfig
from tomeray.pipeline.config import load_config, save_config
from tomeray.pipeline.discover import VIDEO_EXTENSIONS, discover_videos
from tomeray.pipeline.index_layout import (
    SCHEMA_VERSION,
    IncompatibleIndexError,
    IndexLayout,
    embeddings_schema,
    errors_table,
    id_key,
    new_run_id,
    stable_id,
)
from tomeray.pipeline.store import atomic_write_json, remove_stale_temporaries, tomeray_version, utc_now

log = logging.getLogger(__name__)

__all__ = [
    "IndexConfig",
    "IndexSummary",
    "completed_paths",
    "main",
    "merge_indexes",
    "run_index",
]


# ------------------------------------------------------------------------------------------- config


@dataclass
class SamplingConfig:
    fps: float | None = None  # None: model.num_frames spread over each clip (TempMe's rule); x: x frames/s
    segment_s: float = 0.0  # > 0: one row per window of this many seconds (hits carry a time range)
    strict: bool = True  # a video whose decoder reports damaged data is an error, not indexed
    decode_threads: int = 1  # decord threads per decode task


@dataclass
class InputConfig:
    extensions: list[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))
    list_column: str = "path"  # column of CSV/Parquet input lists
    id_root: str | None = None  # ids from paths relative to this root (same ids wherever it is mounted)


@dataclass
class FaissConfig:
    factory: str = "flat"  # preset (flat, ivf, hnsw, ivfpq) or a FAISS factory string
    train_size: int | None = None
    use_gpu: str = "auto"


@dataclass
class RayConfig:
    address: str | None = None  # cluster to join; None: RAY_ADDRESS, else a local cluster
    num_cpus: int | None = None  # CPUs of the local cluster (None: all)
    decode_num_cpus: float = 0.5  # CPUs reserved per decode task (fits beside fractional actors)
    decode_memory_mb: int = 512  # memory reserved per decode task (worker process included)
    decode_concurrency: int | None = None  # max decode tasks at once (None: as many as fit)
    embed_actors: int = 0  # 0: one per GPU, or on CPU-only clusters max(1, round(0.75 * CPUs))
    embed_num_cpus: float = 0.5  # CPUs reserved per embed actor (fractional: decoding keeps a share)
    embed_num_gpus: float | None = None  # None: 1 per actor when the cluster has GPUs, else 0
    embed_threads: int = 1  # torch threads per CPU actor (0: torch's default)
    batch_size: int = 0  # clips per embed batch; 0: 8 on CPU, 32 on GPU
    max_input_blocks: int = 10000  # inputs are split into this many blocks at most


@dataclass
class OutputConfig:
    shard_rows: int = 256  # rows per Parquet part (a crash loses at most the rows not yet written)
    flush_s: float = 30.0  # ... or what arrived in the last flush_s seconds
    build_faiss: bool = True
    progress: bool = True  # Ray Data progress bars


@dataclass
class IndexConfig:
    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    input: InputConfig = field(default_factory=InputConfig)
    faiss: FaissConfig = field(default_factory=FaissConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


@dataclass
class IndexSummary:
    indexed: int  # videos indexed by this run
    skipped: int  # inputs already indexed before this run
    failed: int  # inputs that failed in this run (see the errors table)
    seconds: float
    videos_per_s: float  # indexed / seconds
    weights_id: str
    pipeline_s: float = 0.0  # decode + embed + shard writes (Ray Data execution, actor start-up included)
    rows: int = 0  # embedding rows written by this run (clips in segment mode)
    total_rows: int = 0  # rows in the whole index
    total_videos: int = 0
    out: str = ""
    run_id: str = ""
    decode_nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> clips decoded
    embed_nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> clips embedded
    failures: list[dict] = field(default_factory=list)  # this run's error rows

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


# --------------------------------------------------------------------------------------- manifest


def _manifest_header(cfg: IndexConfig, identity: dict, weights_id: str, dim: int) -> dict:
    """The pinned part of the manifest, in its JSON form (so it compares equal to a stored one)."""
    return json.loads(json.dumps({
        "schema_version": SCHEMA_VERSION,
        "model": identity,
        "weights_id": weights_id,
        "dim": int(dim),
        "metric": "ip",
        "sampling": {"fps": cfg.sampling.fps, "segment_s": float(cfg.sampling.segment_s or 0.0),
                     "num_frames": cfg.model.num_frames},
        "ids": {"hash": "blake2b-64", "relative": bool(cfg.input.id_root), "root": cfg.input.id_root},
    }, default=str))


_PINNED = ("model", "dim", "metric", "sampling")


def _check_same(a: dict, b: dict, what_a: str, what_b: str) -> None:
    """Refuse to combine embeddings made differently (model, dim, sampling or id scheme)."""
    differ = [k for k in _PINNED if a.get(k) != b.get(k)]
    if a.get("ids", {}).get("relative") != b.get("ids", {}).get("relative"):
        differ.append("ids (absolute paths vs paths relative to input.id_root)")
    if differ:
        detail = ""
        if "model" in differ:
            ma, mb = a.get("model", {}), b.get("model", {})
            keys = sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k))
            detail = f" (model differs in: {', '.join(keys)}; {what_a}: {a.get('weights_id')}, " \
                     f"{what_b}: {b.get('weights_id')})"
        raise IncompatibleIndexError(
            f"{what_a} and {what_b} are incompatible: they differ in {', '.join(differ)}{detail}; "
            "use the same model/sampling settings or a new --out directory")


def _open_index(layout: IndexLayout, header: dict, what: str) -> dict:
    """The index's manifest, created (pinning the model before any shard exists) when new."""
    if layout.exists():
        manifest = layout.read_manifest()
        _check_same(manifest, header, f"index '{layout.root}'", what)
        return manifest
    if layout.embedding_shards():
        raise InputError(f"'{layout.root}' holds embedding shards but no manifest.json, so the model that "
                         "made them is unknown; move them away or use a new --out directory")
    manifest = {**header, "faiss_factory": None, "counts": {"rows": 0, "videos": 0, "errors": 0},
                "created": utc_now(), "updated": utc_now(), "tomeray_version": tomeray_version()}
    layout.write_manifest(manifest)
    return manifest


def completed_paths(layout: IndexLayout, segment_s: float | None = None) -> set[str]:
    """Paths whose rows are all in the index: any row for whole videos; in segment mode every
    window of the video (recomputed from its stored n_frames and fps)."""
    from tomeray.operators.video_decode import segment_windows

    if not segment_s or segment_s <= 0:
        return layout.indexed_paths()
    table = layout.read_embeddings(["path", "n_frames", "fps"])
    counts = Counter(table["path"].to_pylist())
    done = set()
    for path, n_frames, fps in zip(table["path"].to_pylist(), table["n_frames"].to_pylist(),
                                   table["fps"].to_pylist()):
        if path not in done and counts[path] >= len(segment_windows(int(n_frames), float(fps), segment_s)):
            done.add(path)
    return done


def _finish(layout: IndexLayout, manifest: dict, faiss_cfg: FaissConfig, build_faiss: bool,
            done_paths: set[str]) -> dict:
    """Rebuild the FAISS index over every shard, then write the manifest (the last write)."""
    table = layout.read_embeddings(["video_id", "path", "embedding"])
    dim = int(manifest["dim"])
    factory = manifest.get("faiss_factory")
    if build_faiss:
        from tomeray.pipeline.faiss_index import build_index, resolve_factory, save_index

        vectors = table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = vectors.reshape(table.num_rows, dim).astype(np.float32, copy=False)
        ids = table["video_id"].to_numpy()
        factory = resolve_factory(faiss_cfg.factory, table.num_rows, dim)
        index = build_index(vectors, ids, faiss_cfg.factory, metric=manifest["metric"],
                            train_size=faiss_cfg.train_size, use_gpu=faiss_cfg.use_gpu)
        save_index(index, layout.faiss_path)
    else:  # a FAISS file from an earlier run would silently miss the new rows
        layout.faiss_path.unlink(missing_ok=True)
        factory = None
    errors = layout.read_errors(done_paths=done_paths)
    manifest = {**manifest, "faiss_factory": factory, "faiss_spec": faiss_cfg.factory,
                "counts": {"rows": table.num_rows, "videos": len(set(table["path"].to_pylist())),
                           "errors": errors.num_rows},
                "updated": utc_now(), "tomeray_version": tomeray_version()}
    layout.write_manifest(manifest)
    return manifest


# ---------------------------------------------------------------------------------- shard writing


class _ShardWriter:
    """Collects embedded rows on the driver and writes them as Parquet parts (atomic, unique
    names), every ``shard_rows`` rows or ``flush_s`` seconds, and at the end."""

    def __init__(self, layout: IndexLayout, run_id: str, dim: int, shard_rows: int, flush_s: float):
        self.layout, self.run_id, self.dim = layout, run_id, dim
        self.shard_rows, self.flush_s = max(1, shard_rows), flush_s
        self.schema = embeddings_schema(dim)
        self._rows: list[pa.Table] = []
        self._errors: list[dict] = []
        self._pending = 0
        self._last_flush = time.monotonic()
        self._seq = 0
        self.rows_written = 0
        self.ok_paths: set[str] = set()
        self.failed: dict[str, dict] = {}
        self.seen_paths: set[str] = set()
        self.decode_nodes: Counter = Counter()
        self.embed_nodes: Counter = Counter()

    def add_errors(self, rows: list[dict]) -> None:
        for r in rows:
            self.failed[r["path"]] = r
            self.seen_paths.add(r["path"])
        self._errors.extend(rows)

    def add(self, batch: dict[str, np.ndarray]) -> None:
        paths = [str(p) for p in batch["path"]]
        self.seen_paths.update(paths)
        self.decode_nodes.update(str(n) for n in batch["decode_node"])
        self.embed_nodes.update(str(n) for n in batch["embed_node"])
        failed = np.asarray([str(t) != "" for t in batch["error_type"]], dtype=bool)
        self.add_errors([
            {"path": paths[i], "stage": str(batch["error_stage"][i]),
             "error_type": str(batch["error_type"][i]), "message": str(batch["error_message"][i])}
            for i in np.flatnonzero(failed)
        ])
        ok = np.flatnonzero(~failed)
        if len(ok):
            emb = np.ascontiguousarray(np.asarray(batch["embedding"])[ok], dtype=np.float32)
            columns = {
                "video_id": pa.array(np.asarray(batch["video_id"])[ok].astype(np.int64)),
                "path": pa.array([paths[i] for i in ok], pa.string()),
                **{name: pa.array(np.asarray(batch[name])[ok].astype(np.float64))
                   for name in ("start_s", "end_s", "duration_s", "fps")},
                "n_frames": pa.array(np.asarray(batch["n_frames"])[ok].astype(np.int64)),
                "frame_indices": pa.array([np.asarray(batch["frame_indices"][i], np.int64).tolist()
                                           for i in ok], pa.list_(pa.int64())),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), self.dim),
            }
            self._rows.append(pa.Table.from_pydict(columns, schema=self.schema))
            self._pending += len(ok)
            self.ok_paths.update(paths[i] for i in ok)
        if self._pending >= self.shard_rows or time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        name = f"{self.run_id}-{self._seq:05d}"
        if self._rows:
            table = pa.concat_tables(self._rows)
            self.layout.write_embeddings(table, name)
            self.rows_written += table.num_rows
        if self._errors:
            self.layout.write_errors(errors_table(self._errors), name)
        if self._rows or self._errors:
            self._seq += 1
        self._rows, self._errors, self._pending = [], [], 0
        self._last_flush = time.monotonic()


# ------------------------------------------------------------------------------------- the job


def _model_facts(model: VideoModelConfig) -> tuple[dict, str, int, int]:
    """Identity, weights id, embedding dim and image size of the encoder, built once on the driver
    (on CPU): this checks the weights before any work starts and pins the manifest."""
    from tomeray.models.tempme import create_video_encoder

    encoder = create_video_encoder(model, device="cpu", precision="fp32")
    facts = encoder.identity(), encoder.weights_id, encoder.embed_dim, encoder.image_size
    del encoder
    return facts


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def _plan_embedding(cfg: RayConfig) -> dict:
    """Actor count, resources and batch size for the embed stage on the connected cluster."""
    import ray

    gpus = _cluster_gpus()
    num_gpus = cfg.embed_num_gpus if cfg.embed_num_gpus is not None else (1.0 if gpus else 0.0)
    if cfg.embed_actors > 0:
        actors = cfg.embed_actors
    elif num_gpus > 0:
        actors = max(1, int(gpus / num_gpus))
    else:
        actors = max(1, round(0.75 * float(ray.cluster_resources().get("CPU", 1))))
    batch = cfg.batch_size or (32 if num_gpus > 0 else 8)
    return {"actors": actors, "num_gpus": num_gpus, "num_cpus": cfg.embed_num_cpus, "batch_size": batch,
            "threads": 0 if num_gpus > 0 else cfg.embed_threads}


def build_dataset(items: list[dict], cfg: IndexConfig, image_size: int):
    """The Ray Data graph: input rows -> decode tasks -> embed actor pool."""
    import ray
    from tomeray.operators.video_decode import VideoDecoder
    from tomeray.operators.video_embed import VideoEmbedder

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.output.progress
    # A worker that dies (e.g. a decoder crash) loses its block, not the whole job; the inputs of
    # such blocks are reported as errors after the run (they produced no result).
    ctx.max_errored_blocks = len(items)
    blocks = max(1, min(len(items), cfg.ray.max_input_blocks))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    decoder = VideoDecoder(image_size, cfg.model.num_frames, cfg.sampling.fps, cfg.sampling.segment_s,
                           cfg.sampling.decode_threads, cfg.sampling.strict)
    # Decode tasks declare their memory: besides being true, it keeps Ray Data from fusing decoding
    # into the embed actors (it fuses stages whose resource requests are equal), so decoding stays
    # in separate tasks that spread over the cluster and overlap with inference.
    ds = ds.map_batches(decoder, batch_size=1, num_cpus=cfg.ray.decode_num_cpus,
                        memory=cfg.ray.decode_memory_mb * 2**20,
                        compute=ray.data.TaskPoolStrategy(size=cfg.ray.decode_concurrency))
    plan = _plan_embedding(cfg.ray)
    plan["actors"] = min(plan["actors"], len(items))  # more actors than videos would only idle
    log.info("embedding with %d actor(s), %s CPU / %s GPU each, batches of %d",
             plan["actors"], plan["num_cpus"], plan["num_gpus"], plan["batch_size"])
    return ds.map_batches(
        VideoEmbedder,
        fn_constructor_kwargs={"model": dataclasses.asdict(cfg.model), "num_threads": plan["threads"],
                               **dataclasses.asdict(cfg.inference)},
        batch_size=plan["batch_size"], compute=ray.data.ActorPoolStrategy(size=plan["actors"]),
        num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"] or None,
    )


def run_index(
    inputs: list[str],
    out: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    address: str | None = None,
    *,
    config: IndexConfig | None = None,
) -> IndexSummary:
    """Index ``inputs`` into ``out`` (created or extended). See the module docstring."""
    started = time.perf_counter()
    cfg = config if config is not None else load_config(IndexConfig, "index", list(overrides))
    layout = IndexLayout(out)
    discovery = discover_videos(inputs, tuple(cfg.input.extensions), cfg.input.list_column)
    identity, weights_id, dim, image_size = _model_facts(cfg.model)  # fails early on missing weights
    layout.root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(layout.root)
    manifest = _open_index(layout, _manifest_header(cfg, identity, weights_id, dim), "this run's settings")
    save_config(cfg, layout.config_path)
    if weights_id.startswith("random-init"):
        log.warning("model weights are RANDOM (%s): embeddings are for smoke tests, not retrieval",
                    weights_id)

    segment_s = cfg.sampling.segment_s
    done = completed_paths(layout, segment_s)
    run_id = new_run_id()
    writer = _ShardWriter(layout, run_id, dim, cfg.output.shard_rows, cfg.output.flush_s)
    writer.add_errors(discovery.errors)
    items, skipped = [], 0
    for path in discovery.paths:
        if path in done:
            skipped += 1
            continue
        try:
            key = id_key(path, cfg.input.id_root)
        except InputError as e:
            writer.add_errors([{"path": path, "stage": "discover", "error_type": "InputError",
                                "message": str(e)}])
            continue
        items.append({"path": path, "key": key, "video_id": stable_id(key)})
    log.info("%d input(s): %d to index, %d already indexed, %d failed discovery",
             len(discovery.paths) + len(discovery.errors), len(items), skipped, len(discovery.errors))

    pipeline_s = 0.0
    if items:
        from tomeray.pipeline.ray_session import init_ray

        init_ray(address or cfg.ray.address, num_cpus=cfg.ray.num_cpus)
        pipeline_start = time.perf_counter()
        try:
            for batch in build_dataset(items, cfg, image_size).iter_batches(batch_size=None,
                                                                              batch_format="numpy"):
                writer.add(batch)
        finally:
            writer.flush()  # on Ctrl-C too: completed rows are kept
        pipeline_s = time.perf_counter() - pipeline_start
        lost = [it["path"] for it in items if it["path"] not in writer.seen_paths]
        writer.add_errors([{"path": p, "stage": "decode", "error_type": "WorkerLost",
                            "message": "no result came back (the worker processing it died); rerun to retry"}
                           for p in lost])
    writer.flush()

    # A video is indexed by this run when all its rows are in and it had no error.
    done_now = completed_paths(layout, segment_s)
    indexed = len({p for p in writer.ok_paths if p in done_now and p not in writer.failed})
    manifest = _finish(layout, manifest, cfg.faiss, cfg.output.build_faiss, done_now)
    seconds = time.perf_counter() - started
    summary = IndexSummary(
        indexed=indexed, skipped=skipped, failed=len(writer.failed), seconds=seconds,
        videos_per_s=indexed / seconds if seconds > 0 else 0.0, weights_id=weights_id,
        pipeline_s=pipeline_s, rows=writer.rows_written, total_rows=manifest["counts"]["rows"],
        total_videos=manifest["counts"]["videos"], out=str(layout.root), run_id=run_id,
        decode_nodes=dict(writer.decode_nodes), embed_nodes=dict(writer.embed_nodes),
        failures=list(writer.failed.values()),
    )
    atomic_write_json(layout.root / "runs" / f"{run_id}.json", dataclasses.asdict(summary))
    return summary


# ------------------------------------------------------------------------------------------ merge


def merge_indexes(sources: list[str | Path], out: str | Path, overrides: list[str] | tuple[str, ...] = ()
                  ) -> IndexSummary:
    """Merge indexes built separately into ``out`` without re-embedding: refuses incompatible
    manifests, deduplicates by ``video_id``, carries the sources' current errors over, and
    rebuilds the FAISS index. ``out`` may be new or an existing compatible index."""
    started = time.perf_counter()
    cfg = load_config(IndexConfig, "index", list(overrides))
    out_layout = IndexLayout(out)
    layouts = [IndexLayout(s) for s in sources]
    if not layouts:
        raise InputError("--merge needs at least one source index")
    for src in layouts:
        if src.root.resolve() == out_layout.root.resolve():
            raise InputError(f"--out '{out}' is also a source; merge into a different directory")
    manifests = [src.read_manifest() for src in layouts]
    for src, m in zip(layouts[1:], manifests[1:]):
        _check_same(manifests[0], m, f"index '{layouts[0].root}'", f"index '{src.root}'")
    if not any(o.startswith("faiss.factory=") for o in overrides):
        cfg.faiss.factory = manifests[0].get("faiss_spec") or manifests[0].get("faiss_factory") or "flat"
    header = {k: manifests[0][k] for k in ("schema_version", "model", "weights_id", "dim", "metric",
                                            "sampling", "ids")}
    out_layout.root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_layout.root)
    manifest = _open_index(out_layout, header, f"index '{layouts[0].root}'")

    run_id = new_run_id()
    have = set(out_layout.read_embeddings(["video_id"])["video_id"].to_pylist())
    added_rows, duplicates, added_paths = 0, 0, set()
    for i, src in enumerate(layouts):
        table = src.read_embeddings()
        ids = table["video_id"].to_numpy()
        new = np.fromiter((v not in have for v in ids.tolist()), dtype=bool, count=len(ids))
        duplicates += int((~new).sum())
        if new.any():
            part = table.filter(pa.array(new))
            out_layout.write_embeddings(part, f"{run_id}-merge{i:03d}")
            have.update(part["video_id"].to_pylist())
            added_rows += part.num_rows
            added_paths.update(part["path"].to_pylist())
        errors = src.read_errors()
        if errors.num_rows:
            out_layout.write_errors(errors, f"{run_id}-merge{i:03d}")

    segment_s = manifest["sampling"].get("segment_s") or 0.0
    done = completed_paths(out_layout, segment_s)
    manifest = _finish(out_layout, manifest, cfg.faiss, cfg.output.build_faiss, done)
    seconds = time.perf_counter() - started
    summary = IndexSummary(
        indexed=len(added_paths), skipped=duplicates, failed=manifest["counts"]["errors"], seconds=seconds,
        videos_per_s=0.0, weights_id=manifest["weights_id"], rows=added_rows,
        total_rows=manifest["counts"]["rows"], total_videos=manifest["counts"]["videos"],
        out=str(out_layout.root), run_id=run_id,
    )
    atomic_write_json(out_layout.root / "runs" / f"{run_id}.json",
                      {**dataclasses.asdict(summary), "merged_from": [str(s.root) for s in layouts]})
    return summary


# -------------------------------------------------------------------------------------------- CLI

_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """``section.key=value`` items are overrides (unless a file of that name exists); the rest are inputs."""
    overrides = [s for s in items if _OVERRIDE.match(s) and not os.path.exists(s)]
    return [s for s in items if s not in overrides], overrides


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tomeray index",
        description="Embed videos into a FAISS + Parquet index with the TempMe encoder on Ray "
                    "(resumable: a rerun indexes only what is missing).",
        epilog="Examples:\n"
               "  tomeray index videos/ --out idx model.pretrained=none\n"
               "  tomeray index 'clips/**/*.mp4' list.csv --out idx sampling.segment_s=10\n"
               "  tomeray index --merge idx_a idx_b --out idx_all\n"
               "Exit status: 0 all inputs indexed, 1 some inputs failed (see the errors table),\n"
               "2 nothing done (bad arguments, config, weights, incompatible index), 130 interrupted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("items", nargs="*", metavar="INPUT|KEY=VALUE",
                   help="video files, directories (recursive), globs, or .txt/.csv/.parquet lists of paths; "
                        "and config overrides such as model.pretrained=none (see configs/index.yaml)")
    p.add_argument("--out", required=True, help="index directory (created, or extended when it exists)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")
    p.add_argument("--merge", nargs="+", metavar="INDEX", default=None,
                   help="merge these index directories into --out instead of indexing videos")
    return p


def _print_summary(s: IndexSummary, merged: bool = False) -> None:
    if merged:
        print(f"merged: {s.rows} new rows from {s.indexed} videos, {s.skipped} duplicate rows skipped "
              f"-> {s.out}")
    else:
        print(f"indexed {s.indexed} videos ({s.rows} rows), skipped {s.skipped} already indexed, "
              f"failed {s.failed} -> {s.out}")
        print(f"time {s.seconds:.1f} s (decode + embed pipeline {s.pipeline_s:.1f} s), "
              f"{s.videos_per_s:.2f} videos/s")
    print(f"index now holds {s.total_rows} rows from {s.total_videos} videos")
    random = " (RANDOM weights: not meaningful for retrieval)" if s.weights_id.startswith("random") else ""
    print(f"weights: {s.weights_id}{random}")
    for f in s.failures[:20]:
        print(f"  failed [{f['stage']}] {f['path']}: {f['error_type']}: {f['message']}")
    if len(s.failures) > 20:
        print(f"  ... and {len(s.failures) - 20} more (see {s.out}/errors)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    inputs, overrides = _split_overrides(args.items)
    try:
        if args.merge is not None:
            if inputs:
                raise InputError(f"--merge takes index directories only; unexpected inputs: {inputs}")
            summary = merge_indexes(args.merge, args.out, overrides)
            _print_summary(summary, merged=True)
            return 0
        if not inputs:
            raise InputError("no inputs given: pass video files, directories, globs or list files")
        summary = run_index(inputs, args.out, overrides, args.address)
    except TomerayError as e:
        print(f"tomeray index: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tomeray index: interrupted; completed shards are kept, rerun to resume", file=sys.stderr)
        return 130
    _print_summary(summary)
    return summary.exit_code
