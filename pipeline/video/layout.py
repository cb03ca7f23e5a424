"""The on-disk layout of a video index.

```
<root>/manifest.json              model identity, weights, dim, metric, faiss factory, counts (last write)
<root>/config.yaml                the resolved config of the latest run
<root>/runs/<run_id>.json         what each run did
<root>/embeddings/part-*.parquet  one row per video (or per window in segment mode)
<root>/thumbnails/part-*.parquet  (video_id, thumbnail): a small JPEG per row (indexes made before
                                  thumbnails have none; a rerun of ``tomeray index`` adds them)
<root>/lookup/<fingerprint>/      id -> metadata table for search (pipeline.video.metadata; derived,
                                  rebuilt from the shards whenever they change)
<root>/shots/part-*.parquet       detected shots (sampling.segments=shots: pipeline.video.shots)
<root>/errors/part-*.parquet      inputs that failed (pipeline.core.errors_table)
<root>/index.faiss                IDMap2 over video_id
```

Shards are immutable and named ``part-<run id>-<seq>.parquet``, so the lexicographic order of
names is the order in which they were written. Readers take the union of all shards; a crash can
only lose the shard in flight (writes are atomic), never corrupt one. Ids: ``pipeline.video.ids``.

The manifest pins what makes embeddings comparable (``PINNED``): the encoder identity, the
embedding dimension and metric, the sampling, and the id scheme. Adding to an index, merging
indexes and searching one with a model all go through the same ``check_compatible``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tomeray.models.errors import InputError, TomerayError
from tomeray.pipeline.core.atomic import atomic_write_parquet, atomic_write_with
from tomeray.pipeline.core.errors_table import current_errors, read_error_parts, write_error_part
from tomeray.pipeline.core.output import JobOutput, check_compatible

__all__ = ["PINNED", "THUMBNAIL_ROW_GROUP", "IndexLayout", "adapter_line", "check_same_embeddings",
           "describe_adapter", "embeddings_schema", "index_header", "thumbnails_schema"]

# Manifest paths two sets of embeddings must agree on to be searched or merged together. The id
# root itself is not pinned: the same corpus may be mounted elsewhere on another machine.
PINNED = ("model", "dim", "metric", "sampling", "ids.hash", "ids.relative")


def embeddings_schema(dim: int, shots: bool = False) -> pa.Schema:
    """``shots``: rows of ``sampling.segments=shots`` also carry their segment's number in the video."""
    return pa.schema([
        ("video_id", pa.int64()),
        ("path", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("n_frames", pa.int64()),
        ("frame_indices", pa.list_(pa.int64())),
        ("embedding", pa.list_(pa.float32(), dim)),
        *([("shot", pa.int32())] if shots else []),
    ])


# Thumbnail parts are read one row group at a time by the search service: small groups keep one
# lookup at ~100 KB instead of a whole part.
THUMBNAIL_ROW_GROUP = 16


def thumbnails_schema() -> pa.Schema:
    return pa.schema([("video_id", pa.int64()), ("thumbnail", pa.binary())])


def index_header(identity: dict, weights_id: str, dim: int, sampling: dict, id_root: str | None,
                 adapter_path: str | None = None) -> dict:
    """The pinned part of a manifest, in its JSON form (so it compares equal to a stored one), plus
    where the model's adapter file was (``adapter.path``, not pinned: the adapter's identity is part
    of ``model``, and the file may move; a searcher reloads it from there)."""
    return json.loads(json.dumps({
        "model": identity,
        "weights_id": weights_id,
        "dim": int(dim),
        "metric": "ip",
        "sampling": sampling,
        "ids": {"hash": "blake2b-64", "relative": bool(id_root), "root": id_root},
        "adapter": {"path": str(Path(adapter_path).expanduser().resolve())} if adapter_path else None,
    }, default=str))


def adapter_line(manifest: dict, path: str | None = None) -> str:
    """``adapter: ...``: which trained adapter an index's embeddings were made with, if any, and its
    file (``path``: where it is loaded from now, when not where the manifest recorded it)."""
    return describe_adapter((manifest.get("model") or {}).get("adapter"),
                            path or (manifest.get("adapter") or {}).get("path"))


def describe_adapter(adapter: dict | None, path: str | None) -> str:
    """``adapter: <id> (<name>, <path>)`` for an adapter's ``{"id", "name"}``, or that there is none."""
    if not adapter:
        return "adapter: none (TempMe's training-free form)"
    return f"adapter: {adapter.get('id')} ({adapter.get('name')}, {path or 'file not recorded'})"


def check_same_embeddings(a: dict, b: dict, what_a: str, what_b: str,
                          hint: str = "use the same model and sampling settings, or a new --out directory",
                          paths: tuple[str, ...] = PINNED) -> None:
    """Refuse to combine embeddings made differently (manifests or headers ``a`` and ``b``)."""
    check_compatible(a, b, paths, what_a, what_b, hint)


class IndexLayout(JobOutput):
    """Paths and readers of one index directory. Cheap to create; touches the disk only when asked."""

    kind = "index"
    command = "tomeray index"
    schema_version = 2  # 2: error parts in the shared error-table columns (1 is read as well)
    pinned = PINNED
    incompatible_hint = "use the index's model and sampling settings, or a new --out directory"

    def __init__(self, root):
        super().__init__(root)
        self.embeddings_dir = self.root / "embeddings"
        self.thumbnails_dir = self.root / "thumbnails"
        self.lookup_dir = self.root / "lookup"
        self.faiss_path = self.root / "index.faiss"

    def has_results(self) -> bool:
        return bool(self.embedding_shards())

    # --- shards -------------------------------------------------------------------------------
    def embedding_shards(self) -> list[Path]:
        return sorted(self.embeddings_dir.glob("part-*.parquet"))

    def thumbnail_shards(self) -> list[Path]:
        return sorted(self.thumbnails_dir.glob("part-*.parquet"))

    def write_thumbnails(self, table: pa.Table, name: str) -> Path:
        path = self.thumbnails_dir / f"part-{name}.parquet"
        # JPEGs are compressed already
        return atomic_write_with(path, lambda tmp: pq.write_table(
            table, tmp, row_group_size=THUMBNAIL_ROW_GROUP, compression="none"))

    def thumbnail_ids(self) -> np.ndarray:
        """The ids that have a thumbnail (sorted, unique)."""
        ids = [_read_shard(p, ["video_id"])["video_id"].to_numpy() for p in self.thumbnail_shards()]
        return np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)

    def error_shards(self) -> list[Path]:
        return sorted(self.errors_dir.glob("part-*.parquet"))

    def write_embeddings(self, table: pa.Table, name: str) -> Path:
        return atomic_write_parquet(self.embeddings_dir / f"part-{name}.parquet", table)

    def write_errors(self, rows: list[dict], name: str) -> Path:
        return write_error_part(self.errors_dir / f"part-{name}.parquet", rows)

    def _dim(self) -> int:
        try:
            return int(self.read_manifest()["dim"])
        except (TomerayError, KeyError, TypeError, ValueError):
            return 0

    def read_embeddings(self, columns: list[str] | None = None) -> pa.Table:
        """All embedding rows, deduplicated by ``video_id`` (the earliest shard wins)."""
        wanted = None if columns is None else list(dict.fromkeys(["video_id", *columns]))
        tables = [_read_shard(p, wanted) for p in self.embedding_shards()]
        if tables:
            table = pa.concat_tables(tables)
        else:
            schema = embeddings_schema(self._dim())
            table = schema.empty_table() if wanted is None else schema.empty_table().select(wanted)
        ids = table["video_id"].to_numpy()
        _, first = np.unique(ids, return_index=True)
        if len(first) < len(ids):
            table = table.take(np.sort(first))
        return table if columns is None else table.select(columns)

    def indexed_paths(self) -> set[str]:
        """Canonical paths with at least one embedding row: what a rerun skips."""
        return set(self.read_embeddings(["path"])["path"].to_pylist())

    def read_errors(self, include_resolved: bool = False, done_paths: set[str] | None = None) -> pa.Table:
        """The inputs that currently fail: the latest error per item, leaving out videos that are
        indexed (``done_paths``, default: every path with an embedding row), since a rerun retries
        failed inputs. ``include_resolved=True`` returns every error ever recorded, in order."""
        table = read_error_parts(self.error_shards())
        if include_resolved or table.num_rows == 0:
            return table
        return current_errors(table, self.indexed_paths() if done_paths is None else done_paths)


def _read_shard(path: Path, columns: list[str] | None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise InputError(
            f"index shard '{path}' is unreadable ({e}); delete it and rerun 'tomeray index'") from None
