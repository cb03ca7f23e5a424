"""The on-disk layout of a video index (ARCHITECTURE.md section 3) and its stable ids.

```
<root>/manifest.json              model identity, weights, dim, metric, faiss factory, counts (last write)
<root>/config.yaml                the resolved config of the latest run
<root>/embeddings/part-*.parquet  one row per video (or per window in segment mode)
<root>/errors/part-*.parquet      inputs that failed: path, stage, error_type, message
<root>/index.faiss                IDMap2 over video_id
```

Shards are immutable and named ``part-<UTC time>-<run>-<seq>.parquet``, so the lexicographic
order of names is the order in which they were written. Readers take the union of all shards;
a crash can only lose the shard in flight (writes are atomic), never corrupt one.

Ids: ``video_id`` is a 63-bit BLAKE2b hash of the input's *id key*: its canonical path (absolute,
symlinks resolved) or, when the index is built with ``ids.root``, the path relative to that
root, so the same corpus mounted at different places on different machines gets the same ids.
A segment id hashes the key plus the window's start in milliseconds. The same file indexed twice
gives one id (merges deduplicate by id); different keys collide with probability ~n²/2⁶⁴.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tomeray.models.errors import InputError, TomerayError
from tomeray.pipeline.store import atomic_write_json, atomic_write_parquet

__all__ = [
    "ERRORS_SCHEMA",
    "SCHEMA_VERSION",
    "IncompatibleIndexError",
    "IndexLayout",
    "embeddings_schema",
    "errors_table",
    "id_key",
    "stable_id",
]

SCHEMA_VERSION = 1

ERRORS_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("stage", pa.string()),
    ("error_type", pa.string()),
    ("message", pa.string()),
])


class IncompatibleIndexError(TomerayError):
    """Two indexes (or an index and a model) cannot be combined."""


def embeddings_schema(dim: int) -> pa.Schema:
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
    ])


def errors_table(rows: list[dict]) -> pa.Table:
    """An errors table from dicts with the keys of :data:`ERRORS_SCHEMA`."""
    return pa.Table.from_pylist([{k: str(r.get(k, "")) for k in ERRORS_SCHEMA.names} for r in rows],
                                schema=ERRORS_SCHEMA)


def canonical_path(path: str | os.PathLike) -> str:
    """Absolute path with symlinks resolved: the one spelling of a file stored in the index."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def id_key(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """The string an id is derived from: the canonical path, or the path relative to ``root``."""
    canon = canonical_path(path)
    if root:
        base = canonical_path(root)
        rel = os.path.relpath(canon, base)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise InputError(f"'{canon}' is not under ids.root '{base}'; set ids.root to the corpus root")
        return Path(rel).as_posix()
    return Path(canon).as_posix()


def stable_id(key: str, start_s: float | None = None) -> int:
    """A positive int64 from ``key`` (and a window start for segments); -1 stays free for FAISS."""
    text = key if start_s is None else f"{key}#{round(start_s * 1000)}"
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def new_run_id() -> str:
    """A sortable, unique prefix for the shards one run writes."""
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{now}-{os.urandom(3).hex()}"


class IndexLayout:
    """Paths and readers of one index directory. Cheap to create; touches the disk only when asked."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.config_path = self.root / "config.yaml"
        self.embeddings_dir = self.root / "embeddings"
        self.errors_dir = self.root / "errors"
        self.faiss_path = self.root / "index.faiss"

    def __repr__(self) -> str:
        return f"IndexLayout('{self.root}')"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    # --- manifest -----------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        if not self.manifest_path.is_file():
            raise InputError(
                f"no index at '{self.root}' (manifest.json is missing); build one with 'tomeray index'")
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"index manifest '{self.manifest_path}' is unreadable: {e}") from None
        if not isinstance(manifest, dict) or "schema_version" not in manifest:
            raise InputError(f"index manifest '{self.manifest_path}' is not a tomeray manifest")
        if manifest["schema_version"] > SCHEMA_VERSION:
            raise InputError(
                f"index '{self.root}' has schema version {manifest['schema_version']}, newer than this "
                f"tomeray understands ({SCHEMA_VERSION}); upgrade tomeray")
        return manifest

    def write_manifest(self, manifest: dict) -> Path:
        return atomic_write_json(self.manifest_path, manifest)

    def check_compatible(self, model: dict, what: str = "this model") -> None:
        """Refuse to mix embeddings of different models (``model`` is ``enc.identity()``)."""
        if not self.exists():
            return
        pinned = self.read_manifest()["model"]
        if pinned != model:
            diff = sorted(k for k in set(pinned) | set(model) if pinned.get(k) != model.get(k))
            raise IncompatibleIndexError(
                f"index '{self.root}' was built with a different model than {what} (differs in: "
                f"{', '.join(diff)}); use the index's model settings or a new --out directory")

    # --- shards -------------------------------------------------------------------------------
    def embedding_shards(self) -> list[Path]:
        return sorted(self.embeddings_dir.glob("part-*.parquet"))

    def error_shards(self) -> list[Path]:
        return sorted(self.errors_dir.glob("part-*.parquet"))

    def write_embeddings(self, table: pa.Table, name: str) -> Path:
        return atomic_write_parquet(self.embeddings_dir / f"part-{name}.parquet", table)

    def write_errors(self, table: pa.Table, name: str) -> Path:
        return atomic_write_parquet(self.errors_dir / f"part-{name}.parquet", table)

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
        """The inputs that currently fail: the latest error per path, leaving out paths that are
        indexed (``done_paths``, default: every path with an embedding row), since a rerun retries
        failed inputs. ``include_resolved=True`` returns every error ever recorded, in order."""
        tables = [_read_shard(p, None) for p in self.error_shards()]
        table = pa.concat_tables(tables) if tables else ERRORS_SCHEMA.empty_table()
        if include_resolved or table.num_rows == 0:
            return table
        done = self.indexed_paths() if done_paths is None else done_paths
        latest: dict[str, int] = {}
        for i, path in enumerate(table["path"].to_pylist()):
            if path not in done:
                latest.pop(path, None)  # re-insert so the order follows the latest occurrence
                latest[path] = i
        return table.take(sorted(latest.values()))


def _read_shard(path: Path, columns: list[str] | None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise InputError(
            f"index shard '{path}' is unreadable ({e}); delete it and rerun 'tomeray index'") from None
