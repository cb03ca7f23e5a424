"""Search settings measured on the corpus itself: the smallest ``nprobe`` / ``ef_search`` /
``k_factor`` that reaches ``faiss.target_recall`` (recall@10) against exact search.

    held-out queries (sampled rows) -> exact neighbours, streamed with the build's own reads ->
    climb each setting's ladder on the built index until recall@10 >= target -> saved with it

The queries are rows of the corpus searched *without themselves* (their own id is never a
neighbour), so a preset is judged on the questions a user asks: which other rows are nearest.
A graph index finds a row's neighbours too easily when the row itself is in the graph (the
search walks to it, then along its links), so a fresh HNSW build holds the query rows back:
they join the graph after the tuning (``held_back``), and growth never lowers a setting.
Their exact neighbours (:class:`GroundTruth`, ``TRUTH_DEPTH`` per query) are kept next to the index
(``index.tuning.npz``) and kept exact as the index grows: rows added are scored against the
queries, rows removed leave their lists (the rest stay the exact top of what remains), so an
incremental build re-tunes without reading the corpus again.

A setting reaches the target when the one-sided 95 % lower confidence bound of its recall does
(mean minus 1.645 standard errors over the queries' own recalls), not merely its mean: a mean
measured on a few hundred queries is off by about 0.01 either way, and a preset tuned to the mean
misses the target on the next queries half the time. The record keeps both (``recall_at_10``,
``recall_at_10_lower``).

When no setting reaches the target within ``faiss.max_search_ms`` per query (one thread), the
best one within it is kept and the record says so (``met: false`` and a ``warning``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
from tomeray.models.errors import ConfigError
from tomeray.pipeline.core.atomic import atomic_write_with
from tomeray.pipeline.video.faiss_index import (
    ids_digest,
    inner_index,
    ivf_or_none,
    search_defaults,
    search_index,
)

log = logging.getLogger(__name__)

__all__ = ["GroundTruth", "apply_search_params", "exact_record", "settings_text", "tune_build", "tune_index",
           "tuning_path"]

K = 10  # recall@K is what a preset promises
TRUTH_DEPTH = 2 * K  # exact neighbours kept per query: removals eat into them before a refill
NPROBE_LADDER = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
K_FACTOR_LADDER = (1, 2, 4, 8, 16, 32, 64)
CONFIDENCE, Z = 0.95, 1.645  # one-sided: the target is met when the lower bound reaches it


def tuning_path(faiss_path: Path) -> Path:
    return faiss_path.parent / f"{faiss_path.stem}.tuning.npz"


class GroundTruth:
    """Held-out queries and their exact ``TRUTH_DEPTH`` nearest rows (inner product), each query's
    own row excluded."""

    def __init__(self, queries: np.ndarray, query_ids: np.ndarray, ids: np.ndarray | None = None,
                 scores: np.ndarray | None = None):
        self.queries = np.ascontiguousarray(queries, np.float32)
        self.query_ids = np.asarray(query_ids, np.int64)
        q = len(self.queries)
        self.ids = np.full((q, TRUTH_DEPTH), -1, np.int64) if ids is None else ids
        self.scores = np.full((q, TRUTH_DEPTH), -np.inf, np.float32) if scores is None else scores

    def __len__(self) -> int:
        return len(self.queries)

    def update(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Score rows (normalised like the index's) against the queries and keep the best."""
        if not len(ids) or not len(self):
            return
        # FAISS's exact search keeps a heap per query: no (queries x rows) matrix is sorted here.
        # One neighbour more than kept, as a query's own row may be among them.
        depth = min(TRUTH_DEPTH + 1, len(ids))
        scores, top = faiss.knn(self.queries, np.ascontiguousarray(vectors, np.float32), depth,
                                metric=faiss.METRIC_INNER_PRODUCT)
        found = ids[top]
        scores[found == self.query_ids[:, None]] = -np.inf  # a query is not its own neighbour
        all_scores = np.concatenate([self.scores, scores], axis=1)
        all_ids = np.concatenate([self.ids, found], axis=1)
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, :TRUTH_DEPTH]
        self.scores = np.take_along_axis(all_scores, order, 1)
        self.ids = np.take_along_axis(all_ids, order, 1)

    def drop(self, removed: np.ndarray) -> None:
        """Forget removed rows; what remains of each list is still the exact top of what remains."""
        if not len(removed):
            return
        gone = np.isin(self.ids, removed)
        self.scores[gone], self.ids[gone] = -np.inf, -1
        order = np.argsort(-self.scores, axis=1, kind="stable")
        self.scores = np.take_along_axis(self.scores, order, 1)
        self.ids = np.take_along_axis(self.ids, order, 1)

    def usable(self, k: int) -> np.ndarray:
        """Queries whose first ``k`` exact neighbours are known."""
        return (self.ids[:, :k] >= 0).all(axis=1)

    def save(self, path: Path, digest: str) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, queries=self.queries, query_ids=self.query_ids, ids=self.ids, scores=self.scores,
                         digest=np.array(digest))
        atomic_write_with(path, write)

    @classmethod
    def load(cls, path: Path, digest: str) -> GroundTruth | None:
        """The saved truth when it belongs to the index with this ``digest`` (else None)."""
        try:
            with np.load(path) as f:
                if str(f["digest"]) != digest or f["ids"].shape[1] != TRUTH_DEPTH:
                    return None
                return cls(f["queries"], f["query_ids"], f["ids"], f["scores"])
        except (OSError, KeyError, ValueError):
            return None


# --------------------------------------------------------------------------------------------
# measuring


class Recall(NamedTuple):
    """recall@k over the queries, its one-sided lower confidence bound, and ms per query."""

    mean: float
    lower: float
    ms: float


def recall_at(index: faiss.Index, truth: GroundTruth, k: int, **params) -> Recall:
    """recall@k of ``index`` with search ``params``, and ms per query on one thread."""
    usable = truth.usable(k)
    queries, own, expected = truth.queries[usable], truth.query_ids[usable], truth.ids[usable, :k]
    if not len(queries):
        return Recall(float("nan"), float("nan"), 0.0)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # latency of one query, as a searcher answering one user sees it
    try:
        start = time.perf_counter()
        _, found = search_index(index, queries, k + 1, **params)
        ms = (time.perf_counter() - start) * 1000 / len(queries)
    finally:
        faiss.omp_set_num_threads(threads)
    per_query = np.array([len(np.intersect1d(row[(row >= 0) & (row != self_id)][:k], exact)) / k
                          for row, self_id, exact in zip(found, own, expected)])
    mean = float(per_query.mean())
    error = float(per_query.std(ddof=1) / np.sqrt(len(per_query))) if len(per_query) > 1 else 0.0
    return Recall(mean, mean - Z * error, ms)


def _climb(measure, ladder, target: float, max_ms: float):
    """The first setting of ``ladder`` whose recall's lower bound reaches ``target``: (setting,
    Recall, met). When none does within ``max_ms``, the smallest setting whose recall is within the
    measurement's error of the best one's: where recall levels off, searching further buys time
    spent, not neighbours found."""
    tried: list[tuple[int, Recall]] = []
    for value in ladder:
        recall = measure(value)
        if recall.ms > max_ms and tried:
            break
        tried.append((value, recall))
        if recall.lower >= target:
            return value, recall, True
        if recall.ms > max_ms:
            break
    best = max(tried, key=lambda t: t[1].mean)[1]
    value, recall = next(t for t in tried if t[1].mean >= best.lower)
    return value, recall, False


def _ladder(values, limit: int) -> list[int]:
    return [v for v in values if v < limit] + [limit]


def exact_record(target: float) -> dict:
    """The tuning record of an exact (Flat) index: nothing to tune."""
    return {"target_recall": target, "recall_at_10": 1.0, "recall_at_10_lower": 1.0, "exact": True,
            "met": True}


def tune_index(index: faiss.Index, truth: GroundTruth, target: float, max_ms: float,
               floor: dict | None = None) -> dict:
    """Set ``index``'s saved search defaults to the smallest that reach ``target`` recall@10 on
    ``truth`` (within ``max_ms`` per query; never below the settings in ``floor``); returns the
    tuning record (``search`` settings, measured ``recall_at_10``, ``ms_per_query``, ``met``,
    ``queries``, a ``warning`` when missed)."""
    k = int(min(K, max(1, index.ntotal - 1)))
    ivf, hnsw, refine = _tunable_parts(index)
    kf_max = K_FACTOR_LADDER[-1]
    floor = {k_: v for k_, v in (floor or {}).items() if v is not None}

    def above(ladder, key):
        return [v for v in ladder if v >= floor.get(key, 0)] or [ladder[-1]]

    started = time.perf_counter()

    def measure(nprobe=None, ef_search=None, k_factor=None):
        return recall_at(index, truth, k, nprobe=nprobe, ef_search=ef_search, k_factor=k_factor)

    chosen: dict = {}
    if ivf is not None:
        ladder = above(_ladder(NPROBE_LADDER, int(ivf.nlist)), "nprobe")
        nprobe, recall, met = _climb(lambda v: measure(nprobe=v, k_factor=refine and kf_max), ladder,
                                     target, max_ms)
        chosen["nprobe"] = nprobe
    elif hnsw is not None:
        ef, recall, met = _climb(lambda v: measure(ef_search=max(v, k + 1), k_factor=refine and kf_max),
                                 above(EF_LADDER, "ef_search"), target, max_ms)
        chosen["ef_search"] = max(ef, k + 1)
    else:
        recall, met = measure(k_factor=refine and kf_max), None
    if refine is not None:  # the fewest refined candidates that keep what the base search reached
        kf, recall, met_kf = _climb(lambda v: measure(**chosen, k_factor=v),
                                    above(K_FACTOR_LADDER, "k_factor"),
                                    target if met is not False else recall.lower, max_ms)
        met = met_kf if met is None else (met and recall.lower >= target)
        chosen["k_factor"] = kf
    met = bool(recall.lower >= target) if met is None else bool(met)
    _apply(ivf, hnsw, refine, chosen)
    params = search_defaults(index)
    record = {"target_recall": target, "recall_at_10": round(recall.mean, 4),
              "recall_at_10_lower": round(recall.lower, 4), "confidence": CONFIDENCE, "met": met,
              "search": {k_: v for k_, v in params.items() if v is not None},
              "ms_per_query": round(recall.ms, 3), "max_search_ms": max_ms,
              "queries": int(truth.usable(k).sum()), "k": k,
              "seconds": round(time.perf_counter() - started, 2)}
    if not met:
        record["warning"] = (f"no search setting reaches recall@10 {target:g} (at {CONFIDENCE:.0%} "
                             f"confidence) within {max_ms:g} ms per query: best {recall.mean:.3f} "
                             f"(lower bound {recall.lower:.3f}) at {settings_text(record['search'])}; use a "
                             "larger faiss.max_search_ms, a flat index, or more IVF lists / HNSW links")
        log.warning("FAISS tuning: %s", record["warning"])
    else:
        log.info("FAISS tuning: %s reaches recall@10 %.3f (lower bound %.3f, target %g), %.2f ms/query",
                 settings_text(record["search"]), recall.mean, recall.lower, target, recall.ms)
    return record


def apply_search_params(index: faiss.Index, params: dict) -> None:
    """Set an index's saved search defaults (``nprobe``, ``ef_search``, ``k_factor``; None: keep)."""
    _apply(*_tunable_parts(index), {k: v for k, v in params.items() if v is not None})


def _tunable_parts(index: faiss.Index) -> tuple:
    """(IVF, HNSW, re-ranking) parts of an id-mapped index whose search settings can be tuned,
    each None where the index has no such part."""
    inner = inner_index(index)
    refine = inner if isinstance(inner, faiss.IndexRefine) else None
    base = faiss.downcast_index(refine.base_index) if refine is not None else inner
    return ivf_or_none(base), base if isinstance(base, faiss.IndexHNSW) else None, refine


def _apply(ivf, hnsw, refine, chosen: dict) -> None:
    if "nprobe" in chosen:
        ivf.nprobe = int(chosen["nprobe"])
    if "ef_search" in chosen:
        hnsw.hnsw.efSearch = int(chosen["ef_search"])
    if "k_factor" in chosen:
        refine.k_factor = float(chosen["k_factor"])


def settings_text(search: dict) -> str:
    """Search settings as a user reads them: ``nprobe=24, k_factor=64``."""
    return ", ".join(f"{k}={v:g}" for k, v in search.items()) or "defaults"


def tune_build(faiss_path: Path, index: faiss.Index, truth: GroundTruth | None, cfg, full_truth,
               held_back: bool = False, floor: dict | None = None) -> dict | None:
    """Tune a built index before it is saved and keep its ground truth next to it; ``truth``: the
    one kept up to date during the build (None: ``full_truth()`` computes it from the corpus);
    ``held_back``: the query rows are not in the index or the truth yet (added after the tuning).
    Returns the manifest's tuning record (None when ``faiss.target_recall`` is 0)."""
    if not 0 <= cfg.target_recall <= 1:
        raise ConfigError(f"faiss.target_recall must be in [0, 1] (0: no tuning), got {cfg.target_recall}")
    if cfg.target_recall == 0:
        return None
    if isinstance(inner_index(index), faiss.IndexFlat):
        tuning_path(faiss_path).unlink(missing_ok=True)
        return exact_record(cfg.target_recall)
    held = (truth.queries, truth.query_ids) if held_back and truth is not None else None
    partial = truth is not None and truth.usable(K).sum() >= len(truth) // 2
    if not partial:
        truth = full_truth()  # (over every row, held-back ones included)
    record = tune_index(index, truth, float(cfg.target_recall), float(cfg.max_search_ms), floor)
    if held is not None:  # the held-back rows join the index, and the truth as neighbours
        index.add_with_ids(*held)
        if partial:
            truth.update(*held)
    truth.save(tuning_path(faiss_path), ids_digest(index))
    return record
