"""``tomeray index --merge A B ... --out D``: merge indexes built separately, without re-embedding."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from tomeray.models.errors import InputError
from tomeray.pipeline.core.config import load_config
from tomeray.pipeline.core.output import new_run_id
from tomeray.pipeline.video.config import IndexConfig
from tomeray.pipeline.video.faiss_build import faiss_entry
from tomeray.pipeline.video.job import IndexSummary, completed_paths, faiss_summary, finish_index
from tomeray.pipeline.video.layout import IndexLayout, adapter_line, check_same_embeddings
from tomeray.pipeline.video.shots import ShotsTable

__all__ = ["merge_indexes"]

HEADER_KEYS = ("model", "weights_id", "dim", "metric", "sampling", "ids", "adapter")


def merge_indexes(sources: list[str | Path], out: str | Path, overrides: list[str] | tuple[str, ...] = ()
                  ) -> IndexSummary:
    """Merge ``sources`` into ``out`` (new, or an existing compatible index): refuses incompatible
    manifests, deduplicates by ``video_id``, carries the sources' errors over, rebuilds FAISS."""
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
        check_same_embeddings(manifests[0], m, f"index '{layouts[0].root}'", f"index '{src.root}'",
                              hint="merge only indexes built with the same model and sampling")
    if not any(o.startswith("faiss.factory=") for o in overrides):
        source = faiss_entry(manifests[0]) or {}
        cfg.faiss.factory = source.get("spec") or source.get("factory") or "flat"
    header = {k: manifests[0].get(k) for k in HEADER_KEYS}  # "adapter": absent before adapters
    manifest = out_layout.open(header, f"index '{layouts[0].root}'")

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
            _copy_thumbnails(src, out_layout, part["video_id"], f"{run_id}-merge{i:03d}")
            out_layout.write_embeddings(part, f"{run_id}-merge{i:03d}")
            have.update(part["video_id"].to_pylist())
            added_rows += part.num_rows
            added_paths.update(part["path"].to_pylist())
        shots = ShotsTable(src.root).read()  # segments=shots: the detected shots travel with the rows
        if shots.num_rows:
            ShotsTable(out_layout.root).write(shots.to_pylist(), f"{run_id}-merge{i:03d}")
        errors = src.read_errors()
        if errors.num_rows:
            out_layout.write_errors(errors.to_pylist(), f"{run_id}-merge{i:03d}")

    segment_s = manifest["sampling"].get("segment_s") or 0.0
    manifest = finish_index(out_layout, manifest, cfg.faiss, cfg.output.build_faiss,
                            completed_paths(out_layout, segment_s))
    summary = IndexSummary(
        indexed=len(added_paths), skipped=duplicates, failed=manifest["counts"]["errors"],
        seconds=time.perf_counter() - started, videos_per_s=0.0, weights_id=manifest["weights_id"],
        rows=added_rows, total_rows=manifest["counts"]["rows"], total_videos=manifest["counts"]["videos"],
        out=str(out_layout.root), run_id=run_id, faiss=faiss_summary(manifest),
        adapter=adapter_line(manifest),
    )
    out_layout.write_run_record(run_id, {**dataclasses.asdict(summary),
                                         "merged_from": [str(s.root) for s in layouts]})
    return summary


def _copy_thumbnails(src: IndexLayout, out: IndexLayout, ids: pa.ChunkedArray, name: str) -> None:
    """The source's thumbnails of the merged rows, one part at a time."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for number, part in enumerate(src.thumbnail_shards()):
        table = pq.read_table(part)
        table = table.filter(pc.is_in(table["video_id"], value_set=ids.combine_chunks()))
        if table.num_rows:
            out.write_thumbnails(table, f"{name}-{number:05d}")
