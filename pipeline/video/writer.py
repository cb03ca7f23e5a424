"""Writes embedded rows as they stream back to the driver: Parquet parts (atomic, run-unique names)
every ``shard_rows`` rows or ``flush_s`` seconds, and at the end. A crash loses at most the rows
not yet written; a rerun embeds only videos without rows. Rows that carry a ``thumbnail`` (JPEG
bytes from the decode stage) get it written to a thumbnails part of the same name, before the
embeddings part (so an embedded row never lacks a thumbnail that was made for it)."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pyarrow as pa
from tomeray.pipeline.core.timing import CostTotals
from tomeray.pipeline.video.discover import Discovery
from tomeray.pipeline.video.ids import stable_id
from tomeray.pipeline.video.layout import IndexLayout, embeddings_schema, thumbnails_schema

__all__ = ["ShardWriter"]


class ShardWriter:
    """Collects embedded rows (see ``pipeline.video.graph``) and writes them to ``layout``."""

    def __init__(self, layout: IndexLayout, run_id: str, dim: int, shard_rows: int, flush_s: float,
                 segmented: bool, discovery: Discovery | None = None, shots: bool = False):
        self.layout, self.run_id, self.dim = layout, run_id, dim
        self.shard_rows, self.flush_s = max(1, shard_rows), flush_s
        self.segmented = segmented
        self.discovery = discovery or Discovery()  # how error rows name each video (see Discovery)
        self.shots = shots  # rows are shots: a shot column, and each video's shots to the shots table
        self.schema = embeddings_schema(dim, shots)
        self._shot_rows: list[dict] = []
        self.shots_detected = 0  # videos this run ran through the shot detector
        self._rows: list[pa.Table] = []
        self._thumbnails: list[pa.Table] = []
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
        self.costs = CostTotals(("decode", "embed"))  # the stages' cost columns (pipeline.core.timing)
        self.first_row_at = 0.0  # epoch seconds when the first embedded row reached the driver

    def add_errors(self, rows: list[dict]) -> None:
        for r in rows:
            self.failed[r["item"]] = r
            self.seen_paths.add(r["item"])
        self._errors.extend(rows)

    def _error(self, path: str, stage: str, error_type: str, message: str) -> dict:
        return self.discovery.error_row(path, stage, error_type, message)

    def add(self, batch: dict[str, np.ndarray]) -> None:
        paths = [str(p) for p in batch["path"]]
        self.first_row_at = self.first_row_at or time.time()
        self.costs.add(batch)
        self.seen_paths.update(paths)
        self.decode_nodes.update(str(n) for n in batch["decode_node"])
        self.embed_nodes.update(str(n) for n in batch["embed_node"])
        failed = np.asarray([str(t) != "" for t in batch["error_type"]], dtype=bool)
        self.add_errors([self._error(paths[i], str(batch["error_stage"][i]), str(batch["error_type"][i]),
                                     str(batch["error_message"][i])) for i in np.flatnonzero(failed)])
        ok = np.flatnonzero(~failed)
        if len(ok):
            table = self._table(batch, paths, ok)
            self._rows.append(table)
            thumbnails = _thumbnail_table(table["video_id"], batch["thumbnail"][ok]) if "thumbnail" in batch \
                else None
            if thumbnails is not None and thumbnails.num_rows:
                self._thumbnails.append(thumbnails)
            if self.shots:
                self._add_shots(batch, paths, ok)
            self._pending += len(ok)
            self.ok_paths.update(paths[i] for i in ok)
        if self._pending >= self.shard_rows or time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def _table(self, batch: dict[str, np.ndarray], paths: list[str], ok: np.ndarray) -> pa.Table:
        keys = [str(batch["key"][i]) for i in ok]
        starts = np.asarray(batch["start_s"], np.float64)[ok]
        ids = [stable_id(k, s) if self.segmented else stable_id(k) for k, s in zip(keys, starts)]
        emb = np.ascontiguousarray(np.asarray(batch["embedding"])[ok], dtype=np.float32)
        columns = {
            "video_id": pa.array(np.asarray(ids, np.int64)),
            "path": pa.array([paths[i] for i in ok], pa.string()),
            **{name: pa.array(np.asarray(batch[name])[ok].astype(np.float64))
               for name in ("start_s", "end_s", "duration_s", "fps")},
            "n_frames": pa.array(np.asarray(batch["n_frames"])[ok].astype(np.int64)),
            "frame_indices": pa.array([np.asarray(batch["frame_indices"][i], np.int64).tolist() for i in ok],
                                      pa.list_(pa.int64())),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), self.dim),
        }
        if self.shots:
            columns["shot"] = pa.array(np.asarray(batch["shot"])[ok].astype(np.int32))
        return pa.Table.from_pydict(columns, schema=self.schema)

    def _add_shots(self, batch: dict[str, np.ndarray], paths: list[str], ok: np.ndarray) -> None:
        from tomeray.pipeline.video.shots import shot_rows

        for i in ok:
            if str(batch["shot_table"][i]):
                self._shot_rows.extend(shot_rows(str(batch["key"][i]), paths[i], float(batch["fps"][i]),
                                                 str(batch["shot_table"][i])))
                self.shots_detected += bool(batch["shots_detected"][i])

    def flush(self) -> None:
        name = f"{self.run_id}-{self._seq:05d}"
        if self._shot_rows:  # before the rows: a video counts as complete only with its shots
            from tomeray.pipeline.video.shots import ShotsTable

            ShotsTable(self.layout.root).write(self._shot_rows, name)
            self._shot_rows = []
        if self._thumbnails:
            self.layout.write_thumbnails(pa.concat_tables(self._thumbnails), name)
        if self._rows:
            table = pa.concat_tables(self._rows)
            self.layout.write_embeddings(table, name)
            self.rows_written += table.num_rows
        if self._errors:
            self.layout.write_errors(self._errors, name)
        if self._rows or self._errors:
            self._seq += 1
        self._rows, self._errors, self._thumbnails, self._pending = [], [], [], 0
        self._last_flush = time.monotonic()


def _thumbnail_table(video_ids: pa.Array, thumbnails) -> pa.Table:
    """The (video_id, thumbnail) rows of the thumbnails that were made (empty bytes: none)."""
    data = [bytes(t) if t is not None else b"" for t in thumbnails]
    keep = [i for i, t in enumerate(data) if t]
    return pa.Table.from_pydict({"video_id": video_ids.take(keep), "thumbnail": [data[i] for i in keep]},
                                schema=thumbnails_schema())
