"""The id -> metadata lookup of an index, for search: a table sorted by ``video_id`` on disk and
memory-mapped, so joining a hit to its path and times is one binary search whatever the size of
the index, and the table never has to fit in memory.

```
<root>/lookup/<fingerprint>/ids.npy           int64, sorted, unique (the earliest shard's row wins)
                            shard.npy row.npy  int32: where the row is (embedding part, row in it)
                            start_s.npy end_s.npy duration_s.npy   float64
                            path.npy           int32: index into the path list (one per video)
                            paths.npy path_offsets.npy   UTF-8 bytes of the paths, and their offsets
                            thumb_part.npy thumb_row.npy int32: the row's thumbnail (-1: none)
                            parts.json         the embedding and thumbnail part names
```

The fingerprint hashes the names and sizes of the embedding and thumbnail parts (parts are
immutable), so a table always matches the shards it was built from, and an index that changes gets
a new one (readers of the old one keep their mapped files). It is built on first open from the
shards' metadata columns (never the embeddings) and kept; where the index is read-only, under the
user's cache directory. Building holds the ids and times of all rows in memory once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tomeray.models.errors import InputError
from tomeray.pipeline.video.layout import IndexLayout

__all__ = ["MetadataTable", "ParquetCells", "lookup_fingerprint"]

log = logging.getLogger(__name__)

COLUMNS = {"ids": np.int64, "shard": np.int32, "row": np.int32, "start_s": np.float64, "end_s": np.float64,
           "duration_s": np.float64, "path": np.int32, "thumb_part": np.int32, "thumb_row": np.int32}
TABLE_VERSION = 1


def lookup_fingerprint(layout: IndexLayout) -> str:
    """A hash of the embedding and thumbnail parts (names and sizes) the table is built from."""
    digest = hashlib.sha256(f"v{TABLE_VERSION}".encode())
    for kind, parts in (("e", layout.embedding_shards()), ("t", layout.thumbnail_shards())):
        for part in parts:
            digest.update(f"{kind}:{part.name}:{part.stat().st_size}\n".encode())
    return digest.hexdigest()[:20]


def _cache_home(layout: IndexLayout) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tomeray" / "lookup"
    return base / hashlib.sha256(str(layout.root.resolve()).encode()).hexdigest()[:16]


class MetadataTable:
    """One built lookup table, opened read-only (``MetadataTable.open(layout)`` builds it if needed)."""

    def __init__(self, folder: Path, layout: IndexLayout):
        self.folder = Path(folder)
        parts = json.loads((self.folder / "parts.json").read_text())
        self.shards = [layout.embeddings_dir / name for name in parts["shards"]]
        self.thumbnail_parts = [layout.thumbnails_dir / name for name in parts["thumbnails"]]
        self.columns = {name: _load(self.folder / f"{name}.npy") for name in COLUMNS}
        self.ids = self.columns["ids"]
        self._paths = _load(self.folder / "paths.npy")
        self._offsets = _load(self.folder / "path_offsets.npy")
        self._all_paths: list[str] | None = None

    @classmethod
    def open(cls, layout: IndexLayout) -> MetadataTable:
        fingerprint = lookup_fingerprint(layout)
        for home in (layout.lookup_dir, _cache_home(layout)):
            folder = home / fingerprint
            if (folder / "parts.json").is_file():
                return cls(folder, layout)
            try:
                _build(layout, folder)
            except OSError as e:  # read-only index: try the cache directory
                log.info("cannot write the lookup table under %s (%s)", home, e)
                continue
            return cls(folder, layout)
        raise InputError(f"cannot write a lookup table for index '{layout.root}' (neither in the index nor "
                         f"under {_cache_home(layout)}); make one of them writable")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_paths(self) -> int:
        return len(self._offsets) - 1

    def positions(self, ids) -> np.ndarray:
        """Table positions of ``ids`` (-1 where an id is not in the table)."""
        return _positions(self.ids, np.asarray(ids, np.int64))

    def path(self, number: int) -> str:
        start, end = self._offsets[number : number + 2].tolist()
        return self._paths[start:end].tobytes().decode("utf-8")

    def all_paths(self) -> list[str]:
        """Every path (one per video), in path-number order; decoded once, for path filters."""
        if self._all_paths is None:
            blob = bytes(self._paths)
            offsets = self._offsets.tolist()
            self._all_paths = [blob[a:b].decode("utf-8") for a, b in zip(offsets, offsets[1:])]
        return self._all_paths

    def row(self, position: int) -> dict:
        return self.rows([position])[0]

    def rows(self, positions) -> list[dict]:
        """The metadata of the rows at ``positions`` (one gather per column: a search's hits)."""
        positions = np.asarray(positions, np.int64)
        c = self.columns
        ids, paths = c["ids"][positions].tolist(), c["path"][positions].tolist()
        starts, ends = c["start_s"][positions].tolist(), c["end_s"][positions].tolist()
        durations = c["duration_s"][positions].tolist()
        return [{"video_id": v, "path": self.path(p), "start_s": s, "end_s": e, "duration_s": d}
                for v, p, s, e, d in zip(ids, paths, starts, ends, durations)]

    def shard_row(self, position: int) -> tuple[Path, int]:
        return self.shards[int(self.columns["shard"][position])], int(self.columns["row"][position])

    def thumbnail_row(self, position: int) -> tuple[Path, int] | None:
        part = int(self.columns["thumb_part"][position])
        return None if part < 0 else (self.thumbnail_parts[part], int(self.columns["thumb_row"][position]))


def _positions(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    if not len(sorted_ids):
        return np.full(len(ids), -1, np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1)


def _load(path: Path) -> np.ndarray:
    """Memory-mapped (a plain ndarray over the mapping: indexing skips np.memmap's per-access
    overhead); an empty array (nothing to map) is read normally."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        shape = np.lib.format.read_array_header_1_0(f)[0]
    return np.asarray(np.load(path, mmap_mode="r")) if int(np.prod(shape)) else np.load(path)


def _build(layout: IndexLayout, folder: Path) -> None:
    """Write the table for the current parts to ``folder`` (atomically: a temporary sibling renamed)."""
    shards, thumbnail_parts = layout.embedding_shards(), layout.thumbnail_shards()
    columns: dict[str, list[np.ndarray]] = {name: [] for name in list(COLUMNS)[:7]}
    path_numbers: dict[str, int] = {}
    for number, shard in enumerate(shards):
        table = pq.read_table(shard, columns=["video_id", "path", "start_s", "end_s", "duration_s"])
        n = table.num_rows
        columns["ids"].append(table["video_id"].to_numpy())
        columns["shard"].append(np.full(n, number, np.int32))
        columns["row"].append(np.arange(n, dtype=np.int32))
        for name in ("start_s", "end_s", "duration_s"):
            columns[name].append(table[name].to_numpy().astype(np.float64))
        paths = table["path"].to_pylist()
        columns["path"].append(np.asarray([path_numbers.setdefault(p, len(path_numbers)) for p in paths],
                                          np.int32))
    merged = {name: np.concatenate(parts).astype(COLUMNS[name], copy=False) if parts
              else np.zeros(0, COLUMNS[name]) for name, parts in columns.items()}
    order = np.argsort(merged["ids"], kind="stable")
    ids = merged["ids"][order]
    first = np.ones(len(ids), bool)
    first[1:] = ids[1:] != ids[:-1]  # duplicates: the earliest shard's row wins, as in read_embeddings
    keep = order[first]
    out = {name: values[keep] for name, values in merged.items()}
    out["thumb_part"] = np.full(len(keep), -1, np.int32)
    out["thumb_row"] = np.full(len(keep), -1, np.int32)
    for number, part in enumerate(thumbnail_parts):
        part_ids = pq.read_table(part, columns=["video_id"])["video_id"].to_numpy()
        pos = _positions(out["ids"], part_ids)
        rows = np.flatnonzero(pos >= 0)  # a part's own row numbers
        out["thumb_part"][pos[rows]] = number
        out["thumb_row"][pos[rows]] = rows

    encoded = [p.encode("utf-8") for p in path_numbers]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    offsets[1:] = np.cumsum([len(e) for e in encoded])
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name in COLUMNS:
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(out[name]))
        np.save(tmp / "paths.npy", np.frombuffer(b"".join(encoded), np.uint8))
        np.save(tmp / "path_offsets.npy", offsets)
        (tmp / "parts.json").write_text(json.dumps({"shards": [p.name for p in shards],
                                                    "thumbnails": [p.name for p in thumbnail_parts]}))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "parts.json").is_file():  # not a concurrent builder's finished table
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in folder.parent.iterdir():  # tables of earlier parts; open readers keep their mappings
        if stale.name != folder.name and not stale.name.startswith("."):
            shutil.rmtree(stale, ignore_errors=True)
    log.info("lookup table of %s: %d rows, %d videos -> %s", layout.root, len(keep), len(encoded), folder)


class ParquetCells:
    """Single cells of Parquet parts (a thumbnail, a stored embedding) by row number: the row group
    holding the row is read and kept in a small LRU cache, so neighbouring rows cost nothing."""

    def __init__(self, groups: int = 16):
        self._files: OrderedDict[Path, tuple[pq.ParquetFile, np.ndarray]] = OrderedDict()
        self._groups: OrderedDict[tuple, object] = OrderedDict()
        self._limit = groups
        self._lock = threading.Lock()

    def _file(self, path: Path) -> tuple[pq.ParquetFile, np.ndarray]:
        with self._lock:
            if path in self._files:
                self._files.move_to_end(path)
                return self._files[path]
        handle = pq.ParquetFile(path)
        starts = np.cumsum([0] + [handle.metadata.row_group(g).num_rows
                                  for g in range(handle.metadata.num_row_groups)])
        with self._lock:
            self._files[path] = (handle, starts)
            while len(self._files) > 4 * self._limit:
                self._files.popitem(last=False)
        return handle, starts

    def value(self, path: Path, row: int, column: str):
        handle, starts = self._file(path)
        group = int(np.searchsorted(starts, row, side="right")) - 1
        key = (path, group, column)
        with self._lock:
            cached = self._groups.get(key)
            if cached is not None:
                self._groups.move_to_end(key)
        if cached is None:
            cached = handle.read_row_group(group, columns=[column])[column]
            with self._lock:
                self._groups[key] = cached
                while len(self._groups) > self._limit:
                    self._groups.popitem(last=False)
        return cached[row - int(starts[group])]
