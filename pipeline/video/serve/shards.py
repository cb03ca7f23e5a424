"""Sharded search on Ray Serve: ``tomeray serve IDX --ray --shards S``.

    HTTP -> front (SearchDeployment: encoder, metadata, filters, paging) --query vectors-->
            SearchShard-0 .. SearchShard-{S-1} (each: the FAISS rows with video_id % S == its number)
         <- (score, id) top lists, merged by score on the front -> metadata join -> answer

* **Shards are cut at serve time** from the one index ``tomeray index`` writes: each shard replica
  memory-maps ``index.faiss`` and copies out its rows (``faiss_merge.subset``, a list or chunk at a
  time, with the index's own trained parts and tuned search settings), so its memory holds its
  part only. The index directory stays one index: building, growing, merging and single-process
  serving are unchanged, and S is a serving decision that can change between deployments without
  a rebuild. (HNSW shards rebuild their graph from the mapped vectors at start-up: slow for big
  shards; IVF and flat shards are copies.)
* **Rows go to shards by id** (``video_id % S``), so every node agrees without coordination, and
  a filter's matching ids are split the same way before they are sent.
* **Exact merge**: every shard returns its ``want`` best (same metric, same query vector), so the
  front's merged ``want`` best are exactly the unsharded index's (for exact Flat shards).
* **Hot swap**: every call carries the front's index version (the manifest file's identity); a
  shard that holds another version reloads its part before answering, so a request never mixes
  versions once the front has swapped.
* **Faults**: each shard is its own deployment; Ray Serve restarts a dead replica. While it is
  down, searches answer 503 (retry) instead of partial results.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
from ray import serve
from starlette.exceptions import HTTPException
from tomeray.models.errors import InputError
from tomeray.models.host import process_memory_mb
from tomeray.pipeline.video.faiss_build import faiss_entry, trained_paths
from tomeray.pipeline.video.faiss_index import build_index, index_ids, load_index, search_defaults
from tomeray.pipeline.video.faiss_merge import subset
from tomeray.pipeline.video.faiss_rows import embedding_matrix
from tomeray.pipeline.video.faiss_tune import apply_search_params
from tomeray.pipeline.video.filters import Ranking, rank
from tomeray.pipeline.video.layout import IndexLayout
from tomeray.pipeline.video.search import VideoSearcher

__all__ = ["SearchShard", "ShardedSearcher", "load_shard", "shard_deployments", "shard_of"]

log = logging.getLogger(__name__)

SHARD_CALL_TIMEOUT_S = 120.0


def shard_of(ids: np.ndarray, shards: int) -> np.ndarray:
    """The shard each id belongs to (the same on every node)."""
    return np.mod(np.asarray(ids, np.int64), shards)


def load_shard(index_dir: str, shard: int, shards: int) -> tuple[faiss.Index, tuple]:
    """(the index over this shard's rows, the index version it was cut from)."""
    layout = IndexLayout(index_dir)
    stamp = layout.manifest_stamp()  # (the index version the shard is cut from)
    manifest = layout.read_manifest()
    entry = faiss_entry(manifest)
    if entry is None or not layout.faiss_path.exists():  # built without FAISS: exact, from its rows
        table = layout.read_embeddings(["video_id", "embedding"])
        ids = table["video_id"].to_numpy()
        keep = shard_of(ids, shards) == shard
        vectors = embedding_matrix(table, int(manifest["dim"]))[keep]
        return build_index(vectors, ids[keep], "flat", use_gpu="never"), stamp
    mapped = load_index(layout.faiss_path, mmap=True, factory=str(entry.get("factory") or ""),
                        ondisk=bool(entry.get("ondisk")))
    template_path = trained_paths(layout.faiss_path, str(entry.get("trained_fingerprint")))[0]
    if not template_path.is_file():
        raise InputError(f"index {layout.root} has no trained template ({template_path.name}) to cut "
                         "shards with: rebuild it with 'tomeray index' (faiss.retrain=true)")
    part = subset(mapped, shard_of(index_ids(mapped), shards) == shard, load_index(template_path))
    apply_search_params(part, search_defaults(mapped))  # the settings tuned for the whole index
    return part, stamp


@serve.deployment(max_ongoing_requests=16)
class SearchShard:
    """One shard of one index: ranks query vectors among its rows."""

    def __init__(self, index_dir: str, shard: int, shards: int, nprobe: int | None = None,
                 ef_search: int | None = None, threads: int = 1):
        faiss.omp_set_num_threads(max(1, int(threads)))
        self.index_dir, self.shard, self.shards = index_dir, shard, shards
        self.nprobe, self.ef_search = nprobe, ef_search
        self._lock = threading.Lock()
        self.memory_before = process_memory_mb()
        self.index, self.stamp = load_shard(index_dir, shard, shards)
        self.memory_loaded = process_memory_mb()
        log.info("shard %d/%d of %s: %d rows", shard, shards, index_dir, self.index.ntotal)

    def rank(self, queries: np.ndarray, want: int, allowed: np.ndarray | None, stamp: tuple) -> tuple:
        """(scores, ids, complete) of the ``want`` best rows per query (among ``allowed`` ids)."""
        if tuple(stamp) != self.stamp:
            with self._lock:
                if tuple(stamp) != self.stamp:
                    self.index, self.stamp = load_shard(self.index_dir, self.shard, self.shards)
                    log.info("shard %d/%d reloaded: %d rows", self.shard, self.shards, self.index.ntotal)
        r = rank(self.index, queries, want, allowed, nprobe=self.nprobe, ef_search=self.ef_search)
        return r.scores, r.ids, r.complete

    def info(self) -> dict:
        return {"shard": self.shard, "shards": self.shards, "rows": int(self.index.ntotal),
                "pid": os.getpid(), "stamp": list(self.stamp), "memory_before_mb": self.memory_before,
                "memory_loaded_mb": self.memory_loaded, "memory_mb": process_memory_mb()}


class _Remote:
    """What the front's searcher knows of the FAISS index that its shards hold between them."""

    def __init__(self, dim: int, ntotal: int, metric_type: int):
        self.d, self.ntotal, self.metric_type = dim, ntotal, metric_type


class ShardedSearcher(VideoSearcher):
    """A :class:`VideoSearcher` whose FAISS step runs on shard deployments (``handles``, one per
    shard); the encoder, metadata, filters, ``like=`` embeddings and the join stay here."""

    def __init__(self, index_dir, *args, handles: list, **kwargs):
        self.handles = list(handles)
        super().__init__(index_dir, *args, **kwargs)
        self.stamp = self.layout.manifest_stamp()

    def _load_index(self):
        entry = faiss_entry(self.manifest) or {}
        metric = faiss.METRIC_L2 if self.manifest.get("metric") == "l2" else faiss.METRIC_INNER_PRODUCT
        rows = int(entry.get("ntotal") or (self.manifest.get("counts") or {}).get("rows") or 0)
        return _Remote(int(self.manifest["dim"]), rows, metric)

    def _saved_search_params(self) -> dict:
        return (faiss_entry(self.manifest) or {}).get("params") or {}  # (the shards hold the index)

    def search_settings(self) -> dict:
        def fetch() -> list[dict]:
            return [h.info.remote().result(timeout_s=SHARD_CALL_TIMEOUT_S) for h in self.handles]

        try:  # (on a thread of its own: a blocking call must not come from the server's event loop)
            with ThreadPoolExecutor(1) as pool:
                replicas = pool.submit(fetch).result()
        except Exception as e:  # noqa: BLE001 - stats still answer while a shard restarts
            replicas = [f"unavailable: {type(e).__name__}"]
        return {**super().search_settings(), "shards": len(self.handles), "shard_replicas": replicas}

    def rank(self, queries: np.ndarray, want: int, filters=None) -> Ranking:
        queries = np.ascontiguousarray(queries, np.float32)
        allowed = self.matching_ids(filters) if filters else None
        shards = len(self.handles)
        calls = []
        for number, handle in enumerate(self.handles):
            mine = None if allowed is None else allowed[shard_of(allowed, shards) == number]
            calls.append(handle.rank.remote(queries, want, mine, self.stamp))
        try:
            parts = [call.result(timeout_s=SHARD_CALL_TIMEOUT_S) for call in calls]
        except Exception as e:  # noqa: BLE001 - a shard being restarted: the client retries
            log.warning("a search shard did not answer: %s", e)
            raise HTTPException(503, "a search shard is unavailable (restarting); retry shortly",
                                headers={"Retry-After": "2"}) from None
        scores = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
        # by score, then id: the order one unsharded index gives (filters.rank), ties included
        order = np.lexsort((ids, -scores.astype(np.float64)), axis=1)[:, :want]
        complete = [all(p[2][q] for p in parts) for q in range(len(queries))]
        return Ranking(np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1), complete,
                       None if allowed is None else len(allowed))


def shard_deployments(index_dir: str, shards: int, cfg) -> list:
    """The bound shard deployments of one index: ``SearchShard-i``, one replica each."""
    return [SearchShard.options(name=f"SearchShard-{i}", num_replicas=1,
                                ray_actor_options={"num_cpus": cfg.ray.shard_cpus}).bind(
        index_dir, i, shards, cfg.search.nprobe, cfg.search.ef_search, max(1, round(cfg.ray.shard_cpus)))
        for i in range(shards)]
