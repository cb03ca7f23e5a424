"""Which rows of which Parquet shards a FAISS build reads, and reading them: ids first (cheap),
embeddings one group of shards at a time (the group is the only copy held)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tomeray.pipeline.video.faiss_index import as_vectors
from tomeray.pipeline.video.layout import _read_shard

__all__ = ["ShardRows", "embedding_matrix", "read_rows", "row_groups", "sample_rows", "scan_shards"]


def embedding_matrix(table, dim: int) -> np.ndarray:
    """The ``embedding`` column of an Arrow table as an (N, dim) float32 array."""
    values = table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.reshape(table.num_rows, dim).astype(np.float32, copy=False)


@dataclass
class ShardRows:
    path: Path
    rows: np.ndarray  # row numbers within the shard
    ids: np.ndarray  # their video ids


def scan_shards(shards: list[Path]) -> list[ShardRows]:
    """The rows each shard contributes, reading ids only. An id in several shards counts once,
    from the earliest shard (the rule of ``IndexLayout.read_embeddings``)."""
    per_shard = [_read_shard(p, ["video_id"])["video_id"].to_numpy() for p in shards]
    if not per_shard:
        return []
    ids = np.concatenate(per_shard)
    starts = np.cumsum([0] + [len(a) for a in per_shard])
    _, first = np.unique(ids, return_index=True)
    first.sort()
    # first is sorted, so each shard's rows are one slice of it: no pass over all rows per shard
    edges = np.searchsorted(first, starts)
    out = []
    for s, path in enumerate(shards):
        chosen = first[edges[s]:edges[s + 1]]
        out.append(ShardRows(path, chosen - starts[s], ids[chosen]))
    return out


def read_rows(selection: list[ShardRows], dim: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, ids) of the selected rows, normalised for ``ip``, read one shard at a time into
    one array (the group is the only copy held)."""
    n = sum(len(s.rows) for s in selection)
    vectors, ids = np.empty((n, dim), np.float32), np.empty(n, np.int64)
    at = 0
    for s in selection:
        if len(s.rows):
            vectors[at:at + len(s.rows)] = embedding_matrix(_read_shard(s.path, ["embedding"]), dim)[s.rows]
            ids[at:at + len(s.rows)] = s.ids
            at += len(s.rows)
    return as_vectors(vectors, "embeddings", metric, copy=False), ids


def row_groups(selection: list[ShardRows], group_rows: int) -> list[list[ShardRows]]:
    """Consecutive shards with at least ``group_rows`` rows per group (a shard is never split)."""
    groups, current, count = [], [], 0
    for s in selection:
        if not len(s.rows):
            continue
        current.append(s)
        count += len(s.rows)
        if count >= group_rows:
            groups.append(current)
            current, count = [], 0
    return groups + ([current] if current else [])


def sample_rows(selection: list[ShardRows], size: int, seed: int) -> list[ShardRows]:
    """``size`` rows drawn at random (by ``seed``) from the selection, in shard order."""
    total = sum(len(s.rows) for s in selection)
    if size >= total:
        return selection
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    starts = np.cumsum([0] + [len(s.rows) for s in selection])
    edges = np.searchsorted(chosen, starts)  # chosen is sorted: each shard's picks are one slice
    out = []
    for i, s in enumerate(selection):
        local = chosen[edges[i]:edges[i + 1]] - starts[i]
        out.append(ShardRows(s.path, s.rows[local], s.ids[local]))
    return out
