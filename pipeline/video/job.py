"""``tomeray index``: embed a video corpus into a resumable, mergeable index on Ray Data.

    discover -> skip what is indexed -> decode (Ray tasks) -> embed (actor pool) -> Parquet shards
    (written by the driver as results stream in) -> FAISS index over all shards -> manifest

* Resume: shards are written atomically while the job runs; a rerun (after a crash, or with new
  inputs) embeds only the inputs without rows. Inputs that failed are retried by a rerun (they
  have no rows); their latest error stays in the errors table until they succeed.
* Ids: :mod:`tomeray.pipeline.video.ids` (a hash of the canonical path, or of the path relative to
  ``input.id_root``), so reruns, other machines and merges agree on them.
* Compatibility: the manifest pins the encoder identity (arch, weights, merge schedule, frames),
  the sampling and the id scheme; adding to an index with anything else is refused.
* Cluster: a local Ray cluster by default, or ``--address`` / ``RAY_ADDRESS``. Decoding and
  embedding run anywhere in the cluster; only the driver writes, so the output directory needs to
  be on storage the *driver* can write (for ``ray job submit`` that is the head node, so use a
  shared file system or a path that is local to the head node).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tomeray.models.errors import InputError
from tomeray.models.tempme import VideoModelConfig
from tomeray.operators.worker import process_started_at
from tomeray.pipeline.core.config import load_config, save_config
from tomeray.pipeline.core.graph import worker_lost_rows
from tomeray.pipeline.core.output import new_run_id
from tomeray.pipeline.core.timing import RunFigures, run_costs, startup_timeline
from tomeray.pipeline.video.config import FaissConfig, IndexConfig
from tomeray.pipeline.video.discover import discover_videos
from tomeray.pipeline.video.ids import id_key
from tomeray.pipeline.video.layout import IndexLayout, adapter_line, index_header
from tomeray.pipeline.video.writer import ShardWriter

log = logging.getLogger(__name__)

__all__ = ["IndexSummary", "completed_paths", "faiss_summary", "finish_index", "model_facts", "run_index"]


@dataclass
class IndexSummary(RunFigures):
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
    first_embedding_s: float = float("nan")  # run start -> first embedding computed (see startup)
    decode_nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> clips decoded
    embed_nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> clips embedded
    failures: list[dict] = field(default_factory=list)  # this run's error rows
    faiss: dict = field(default_factory=dict)  # what the FAISS build did (faiss_summary)
    adapter: str = ""  # layout.adapter_line(): the trained adapter the embeddings were made with
    shots_detected: int = 0  # videos run through the shot detector (segments=shots; stored shots are reused)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def completed_paths(layout: IndexLayout, segment_s: float | None = None,
                    shots: tuple[float, float] | None = None) -> set[str]:
    """Paths whose rows are all in the index: any row for whole videos; in segment mode every
    window of the video (recomputed from its stored n_frames and fps); with ``shots`` (min_s,
    max_s) every segment of its stored shots (:mod:`tomeray.pipeline.video.shots`)."""
    from tomeray.operators.video_decode import segment_windows

    if shots is not None:
        from tomeray.pipeline.video.shots import ShotsTable

        counts = Counter(layout.read_embeddings(["path"])["path"].to_pylist())
        return ShotsTable(layout.root).completed_paths(counts, *shots)
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


def finish_index(layout: IndexLayout, manifest: dict, faiss_cfg: FaissConfig, build_faiss: bool,
                 done_paths: set[str]) -> dict:
    """Bring the FAISS index up to date with every shard (trained once, then grown by the rows it
    lacks: :mod:`tomeray.pipeline.video.faiss_build`), then write the manifest (the last write).
    The manifest's ``faiss`` entry records the index; ``faiss_factory`` / ``faiss_spec`` are kept
    for readers of older manifests."""
    from tomeray.pipeline.video.faiss_build import faiss_entry, remove_faiss_files, update_faiss

    table = layout.read_embeddings(["video_id", "path"])
    entry = None
    if build_faiss:
        prior = faiss_entry(manifest)

        def mark_ondisk() -> None:  # searchers must know before the file changes form
            layout.write_manifest({**manifest, "faiss": {**(prior or {}), "ondisk": True}})

        entry = update_faiss(layout.faiss_path, layout.embedding_shards(), faiss_cfg,
                             dim=int(manifest["dim"]), metric=manifest["metric"], prior=prior,
                             before_ondisk_swap=mark_ondisk)
    else:  # a FAISS file from an earlier run would silently miss the new rows
        remove_faiss_files(layout.faiss_path)
    errors = layout.read_errors(done_paths=done_paths)
    counts = {"rows": table.num_rows, "videos": len(set(table["path"].to_pylist())),
              "errors": errors.num_rows}
    return layout.finish(manifest, faiss=entry, faiss_factory=entry["factory"] if entry else None,
                         faiss_spec=faiss_cfg.factory, counts=counts)


def faiss_summary(manifest: dict) -> dict:
    """The manifest's FAISS record without its bookkeeping: for run records and the report."""
    entry = manifest.get("faiss") or {}
    keys = ("factory", "ntotal", "trained_on", "bytes_per_vector", "build", "tuning")
    return {k: entry[k] for k in keys if k in entry}


def model_facts(model: VideoModelConfig, *, with_text: bool = False) -> tuple[dict, str, int, int]:
    """Identity, weights id, embedding dim and image size of the encoder, built once on the driver
    (on CPU): this checks the weights (and an adapter) before any work starts and pins the output.
    Its values are never used, so no random values are drawn, and the text tower is built only
    ``with_text`` (to check an adapter's text part too); named weights are still read, so a missing
    or mismatched checkpoint fails here."""
    from tomeray.models.clip import skip_weight_init
    from tomeray.models.tempme import create_video_encoder

    with skip_weight_init():
        encoder = create_video_encoder(model, with_text=with_text, device="cpu", precision="fp32")
    return encoder.identity(), encoder.weights_id, encoder.embed_dim, encoder.image_size


def stored_shots(layout: IndexLayout, cfg: IndexConfig, header: dict) -> dict[str, str]:
    """path -> shots already detected (JSON): ``sampling.shots.reuse``'s, then this index's own."""
    from tomeray.pipeline.video.shots import ShotsTable, reusable_shots

    reuse = cfg.sampling.shots.reuse
    stored = reusable_shots(reuse, header["sampling"]["shots"]) if reuse else {}
    return {**stored, **ShotsTable(layout.root).stored_json()}


def _work_likely(layout: IndexLayout, paths: list[str]) -> bool:
    """Whether some input has no rows yet (then Ray is started early; a wrong guess only moves
    or wastes Ray's start-up, never changes what is indexed)."""
    if not paths:
        return False
    if not layout.has_results():
        return True
    try:
        return not set(paths) <= layout.indexed_paths()
    except Exception:  # noqa: BLE001 - unreadable shards are reported by the real check later
        return True


def run_index(
    inputs: list[str],
    out: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    address: str | None = None,
    *,
    config: IndexConfig | None = None,
) -> IndexSummary:
    """Index ``inputs`` into ``out`` (created or extended). See the module docstring."""
    started, started_at = time.perf_counter(), time.time()
    marks = {"driver_process_at": process_started_at()}
    cfg = config if config is not None else load_config(IndexConfig, "index", list(overrides))
    layout = IndexLayout(out)
    discovery = discover_videos(inputs, tuple(cfg.input.extensions), cfg.input.list_column)
    marks["discovered_at"] = time.time()

    def check_model() -> tuple[dict, str, int, int]:
        facts = model_facts(cfg.model)  # fails early on missing weights
        marks["model_facts_at"] = time.time()
        return facts

    with ThreadPoolExecutor(1) as background:
        facts = background.submit(check_model)
        if _work_likely(layout, discovery.paths):  # Ray's start-up overlaps the driver's model build
            from tomeray.pipeline.core.ray_session import init_ray

            init_ray(address or cfg.ray.address, num_cpus=cfg.ray.num_cpus)
            marks["ray_ready_at"] = time.time()
        identity, weights_id, dim, image_size = facts.result()
    header = index_header(identity, weights_id, dim, cfg.sampling_header(), cfg.input.id_root,
                          adapter_path=cfg.model.adapter)
    manifest = layout.open(header)
    manifest["adapter"] = header["adapter"]  # where the adapter file is now (it may have moved)
    save_config(cfg, layout.config_path)
    if weights_id.startswith("random-init"):
        log.warning("model weights are RANDOM (%s): embeddings are for smoke tests, not retrieval",
                    weights_id)

    segment_s = cfg.sampling.window_s
    shots = cfg.sampling.segments == "shots"
    shot_lengths = (cfg.sampling.shots.min_s, cfg.sampling.shots.max_s) if shots else None
    done = completed_paths(layout, segment_s, shot_lengths)
    stored = stored_shots(layout, cfg, header) if shots else {}
    run_id = new_run_id()
    writer = ShardWriter(layout, run_id, dim, cfg.output.shard_rows, cfg.output.flush_s,
                         segmented=bool(segment_s > 0 or shots), discovery=discovery, shots=shots)
    writer.add_errors(discovery.errors)
    items, skipped = [], 0
    for path in discovery.paths:
        if path in done:
            skipped += 1
            continue
        try:
            items.append({"path": path, "key": id_key(path, cfg.input.id_root),
                          **({"stored_shots": stored.get(path, "")} if shots else {})})
        except InputError as e:
            writer.add_errors([discovery.error_row(path, "discover", "InputError", str(e))])
    log.info("%d input(s): %d to index, %d already indexed, %d failed discovery",
             len(discovery.paths) + len(discovery.errors), len(items), skipped, len(discovery.errors))

    pipeline_s, costs, startup, startup_cpu = 0.0, {}, {}, {}
    if items:
        from tomeray.pipeline.core.graph import cluster_resources
        from tomeray.pipeline.core.ray_session import init_ray
        from tomeray.pipeline.video.graph import build_dataset

        init_ray(address or cfg.ray.address, num_cpus=cfg.ray.num_cpus)
        marks.setdefault("ray_ready_at", time.time())
        cores = float(cluster_resources().get("CPU", 0.0))
        pipeline_start = time.perf_counter()
        marks["graph_started_at"] = time.time()
        driver_cpu_s = time.process_time()  # this process so far: imports, model facts, Ray's client
        ds, plan = build_dataset(items, cfg, image_size)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                writer.add(batch)
        finally:
            writer.flush()  # on Ctrl-C too: completed rows are kept
        pipeline_s = time.perf_counter() - pipeline_start
        marks.update(first_row_at_driver=writer.first_row_at, pipeline_done_at=time.time())
        processed = len(writer.seen_paths & {it["path"] for it in items})  # came back, failed or not
        costs = run_costs(writer.costs, processed, marks["graph_started_at"], marks["pipeline_done_at"],
                          cores, "embed" if plan.on_gpu else None, plan.actors if plan.on_gpu else 0,
                          steady_from=writer.costs.first.get("embed_done_at"))
        startup = startup_timeline(started_at, marks, writer.costs.first)
        startup_cpu = {"driver_cpu_s": round(driver_cpu_s, 3), **writer.costs.startup_cpu()}
        expected = [{"item": it["path"], "input": discovery.origin[it["path"]],
                     "path": discovery.shown.get(it["path"], it["path"])} for it in items]
        writer.add_errors(worker_lost_rows(expected, writer.seen_paths, "decode"))
    writer.flush()
    if cfg.output.thumbnails:  # rows indexed before thumbnails existed get theirs now
        from tomeray.pipeline.video.thumbnails import backfill_thumbnails

        backfill_thumbnails(layout, cfg, run_id, image_size, address)

    # A video is indexed by this run when all its rows are in and it had no error.
    done_now = completed_paths(layout, segment_s, shot_lengths)
    indexed = len({p for p in writer.ok_paths if p in done_now and p not in writer.failed})
    manifest = finish_index(layout, manifest, cfg.faiss, cfg.output.build_faiss, done_now)
    seconds = time.perf_counter() - started
    summary = IndexSummary(
        indexed=indexed, skipped=skipped, failed=len(writer.failed), seconds=seconds,
        videos_per_s=indexed / seconds if seconds > 0 else 0.0, weights_id=weights_id,
        pipeline_s=pipeline_s, rows=writer.rows_written, total_rows=manifest["counts"]["rows"],
        total_videos=manifest["counts"]["videos"], out=str(layout.root), run_id=run_id,
        decode_nodes=dict(writer.decode_nodes), embed_nodes=dict(writer.embed_nodes),
        failures=list(writer.failed.values()), faiss=faiss_summary(manifest), adapter=adapter_line(manifest),
        shots_detected=writer.shots_detected,
        first_embedding_s=startup.get("embed_done_at", float("nan")), startup=startup,
        startup_cpu=startup_cpu, costs=costs,
    )
    layout.write_run_record(run_id, dataclasses.asdict(summary))
    return summary
