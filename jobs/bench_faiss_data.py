"""Benchmark vectors for FAISS: unit vectors with the cluster structure of real embeddings, written
as Parquet shards like an index's, plus fresh queries and exact ground truth.

How they are made (``clustered``): a corpus of N vectors has ``K = max(8, N / 10000)`` clusters of
mixed sizes (weights log-normal, sigma 1, so the largest clusters are ~50x the smallest). All
centres share a common direction (the "cone" of CLIP embeddings: random pairs have cosine ~0.2),
and clusters group into ``sqrt(K)`` topics. Each cluster is *anisotropic*: a point is its centre
plus a Gaussian in a random subspace of ``3/8 D`` dimensions (192 of 512) with a decaying spectrum
(variance of direction j ~ 1/j) scaled per cluster, plus weak isotropic noise, then normalised.
Nearest neighbours have cosine ~0.7 and often lie across cluster boundaries, so IVF must probe
several lists (unlike isotropic blobs, where one list holds every neighbour). Queries are fresh
draws from the same mixture, never corpus vectors. ``uniform``: random directions (no structure,
the worst case for IVF and HNSW).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["DATASETS", "Mixture", "exact_top_k", "make_vectors", "write_shard", "write_shards"]

DATASETS = ("uniform", "clustered")
ROWS_PER_CLUSTER = 10_000
ISOTROPIC, ANISOTROPIC = 0.4, 1.2  # noise norms: isotropic, and along each cluster's subspace
CONE, TOPIC_SPREAD = 0.6, 0.6  # weight of the common direction, spread of centres in a topic


@dataclass
class Mixture:
    """The clustered distribution for a corpus of ``n`` vectors of dimension ``dim``."""

    n: int
    dim: int
    seed: int = 0
    _bases: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        rng = np.random.default_rng([self.seed, 1])
        self.k = max(8, self.n // ROWS_PER_CLUSTER)
        self.weights = rng.lognormal(0.0, 1.0, self.k)
        self.weights /= self.weights.sum()
        cone = rng.standard_normal(self.dim).astype(np.float32)
        cone /= np.linalg.norm(cone)
        topics = rng.standard_normal((max(2, int(np.sqrt(self.k))), self.dim)).astype(np.float32)
        topics /= np.sqrt(self.dim)
        spread = rng.standard_normal((self.k, self.dim)).astype(np.float32) / np.sqrt(self.dim)
        centres = CONE * cone + topics[rng.integers(0, len(topics), self.k)] + TOPIC_SPREAD * spread
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        self.rank = max(1, round(self.dim * 3 / 8))
        spectrum = 1.0 / np.sqrt(np.arange(1, self.rank + 1, dtype=np.float32))
        self.spectrum = spectrum * np.float32(ANISOTROPIC / np.linalg.norm(spectrum))
        self.spread = rng.lognormal(0.0, 0.3, self.k).astype(np.float32)

    def _basis(self, c: int) -> np.ndarray:
        if c not in self._bases:
            rng = np.random.default_rng([self.seed, 2, c])
            self._bases[c], _ = np.linalg.qr(rng.standard_normal((self.dim, self.rank)).astype(np.float32))
        return self._bases[c]

    def draw(self, n: int, stream: int) -> np.ndarray:
        """``n`` unit vectors (float32), the same for the same ``stream``."""
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        rng = np.random.default_rng([self.seed, 3, stream])
        labels = rng.choice(self.k, size=n, p=self.weights)
        x = self.centres[labels].copy()
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1], True])
        for start, end in zip(bounds[:-1], bounds[1:]):
            rows, c = order[start:end], labels[order[start]]
            scale = self.spectrum * self.spread[c]
            z = rng.standard_normal((len(rows), self.rank)).astype(np.float32) * scale
            x[rows] += z @ self._basis(c).T
        x += rng.standard_normal(x.shape).astype(np.float32) * np.float32(ISOTROPIC / np.sqrt(self.dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def make_vectors(kind: str, n: int, dim: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(database (n, dim), queries (n_queries, dim)), float32, unit norm."""
    if kind == "uniform":
        x = np.random.default_rng(seed).standard_normal((n + n_queries, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x[:n], x[n:]
    if kind == "clustered":
        mixture = Mixture(n, dim, seed)
        return mixture.draw(n, 0), mixture.draw(n_queries, 1)
    raise ValueError(f"unknown dataset {kind!r}; choose from {DATASETS}")


def write_shard(path: Path, ids: np.ndarray, x: np.ndarray) -> None:
    """One shard with the two columns a FAISS build reads (``video_id``, ``embedding``)."""
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), x.shape[1])
    pq.write_table(pa.table({"video_id": pa.array(ids, pa.int64()), "embedding": embedding}), path)


def write_shards(folder: Path, mixture: Mixture, n: int, shard_rows: int, first_id: int = 0,
                 name: str = "base", stream: int = 10) -> list[Path]:
    """``n`` vectors of ``mixture`` in Parquet shards of ``shard_rows`` (ids from ``first_id``),
    generated one shard at a time (the corpus is never in memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, n, shard_rows)):
        rows = min(shard_rows, n - start)
        path = folder / f"part-{name}-{i:05d}.parquet"
        ids = np.arange(first_id + start, first_id + start + rows)
        write_shard(path, ids, mixture.draw(rows, stream + i))
        paths.append(path)
    return paths


def exact_top_k(shards: list[Path], queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Ids of the exact ``k`` nearest neighbours (inner product) of each query over ``shards``,
    streamed one shard at a time."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for path in shards:
        table = pq.read_table(path)
        x = table["embedding"].combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
        scores = queries @ x.T
        top = np.argpartition(-scores, min(k, len(x)) - 1, axis=1)[:, :k]
        scores = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
        ids = np.concatenate([best_i, table["video_id"].to_numpy()[top]], axis=1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    return best_i
