"""Filtered search: which rows a filter on the index's metadata lets through, and a FAISS search
restricted to them.

Filtering happens before the nearest-neighbour search (a FAISS id selector), not after it, so a
filtered query gets its k best matching rows even when they rank far down the unfiltered list.
Approximate indexes search a subset of the vectors: when they find fewer matches than asked for and
more exist, the search is repeated exhaustively (all IVF lists, a deep HNSW search, or the matching
vectors scored exactly), and a result that is still short says so (``complete=False``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
from dataclasses import dataclass

import faiss
import numpy as np
from tomeray.models.errors import InputError
from tomeray.pipeline.video.faiss_index import search_index
from tomeray.pipeline.video.metadata import MetadataTable

__all__ = ["Ranking", "SearchFilters", "display_path", "matching_ids", "rank"]

EXACT_FALLBACK_ROWS = 50_000  # an approximate index that misses matches re-scores up to this many exactly
HNSW_DEEP_EF = 4096


@dataclass(frozen=True)
class SearchFilters:
    """Conditions on a row's metadata; None leaves a condition out. Paths are matched as results
    show them (relative to the corpus root when the index has one); ``path_glob`` is a shell pattern
    (``*`` also matches ``/``). The time range keeps clips that overlap ``[time_min, time_max]``."""

    path_prefix: str | None = None
    path_glob: str | None = None
    duration_min: float | None = None  # of the whole video, seconds
    duration_max: float | None = None
    time_min: float | None = None  # of the clip, seconds from the start of its video
    time_max: float | None = None

    def __post_init__(self):
        for name in ("duration_min", "duration_max", "time_min", "time_max"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)
                                      or not math.isfinite(value) or value < 0):
                raise InputError(f"filter {name} must be a non-negative number of seconds, got {value!r}")
        for low, high in (("duration_min", "duration_max"), ("time_min", "time_max")):
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a > b:
                raise InputError(f"filter {low} ({a}) is larger than {high} ({b})")
        for name in ("path_prefix", "path_glob"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InputError(f"filter {name} must be a string, got {value!r}")

    def __bool__(self) -> bool:
        return any(v not in (None, "") for v in dataclasses.astuple(self))


def display_path(path: str, root: str | None) -> str:
    """``path`` as results show it: relative to the corpus root when the index has one."""
    if root:
        rel = os.path.relpath(path, root)
        if not rel.startswith(os.pardir):
            return rel.replace(os.sep, "/")
    return path


def matching_ids(table: MetadataTable, filters: SearchFilters, root: str | None = None) -> np.ndarray:
    """The sorted ids of the rows ``filters`` lets through."""
    c = table.columns
    keep = np.ones(len(table), bool)
    if filters.path_prefix or filters.path_glob:
        wanted = []
        for number, path in enumerate(table.all_paths()):
            shown = display_path(path, root)
            if filters.path_prefix and not shown.startswith(filters.path_prefix):
                continue
            if filters.path_glob and not fnmatch.fnmatchcase(shown, filters.path_glob):
                continue
            wanted.append(number)
        keep &= np.isin(c["path"], np.asarray(wanted, np.int32))
    with np.errstate(invalid="ignore"):  # unknown times (NaN) never match a condition on them
        if filters.duration_min is not None:
            keep &= c["duration_s"] >= filters.duration_min
        if filters.duration_max is not None:
            keep &= c["duration_s"] <= filters.duration_max
        if filters.time_min is not None:
            keep &= c["end_s"] > filters.time_min
        if filters.time_max is not None:
            keep &= c["start_s"] <= filters.time_max
    return np.asarray(table.ids[keep], np.int64)


@dataclass
class Ranking:
    """The ``want`` best (score, id) per query, best first (id -1: nothing there), and whether each
    list holds every match it could (``min(want, matches)`` entries)."""

    scores: np.ndarray  # (Q, want) float32
    ids: np.ndarray  # (Q, want) int64
    complete: list[bool]
    matches: int | None = None  # rows the filter lets through (None: no filter)


def rank(index, queries: np.ndarray, want: int, allowed: np.ndarray | None = None, *,
         nprobe: int | None = None, ef_search: int | None = None) -> Ranking:
    """Nearest neighbours of ``queries`` among all rows, or among the ids in ``allowed`` (sorted).

    Rows of equal score come in id order, whatever order FAISS found them in, and a tie at the cut
    is resolved the same way: the search goes deeper until the tied group ends, so the ``want`` best
    are the same rows whether a page asks for ``want`` or for more (pages never overlap or skip)."""
    queries = np.asarray(queries, np.float32)
    available = int(index.ntotal) if allowed is None else len(allowed)
    first = _search(index, queries, want + 1, allowed, nprobe, ef_search)
    scores, ids = list(first.scores), list(first.ids)
    depth = want + 1
    tied = [q for q in range(len(queries)) if want and _tie_at(first.scores[q], first.ids[q], want)]
    while tied and depth < available:
        depth = min(2 * depth, available)
        deeper = _search(index, queries[tied], depth, allowed, nprobe, ef_search)
        for row, q in enumerate(tied):
            scores[q], ids[q] = deeper.scores[row], deeper.ids[row]
        tied = [q for row, q in enumerate(tied) if _tie_at(deeper.scores[row], deeper.ids[row], depth - 1,
                                                           scores[q][want - 1])]
    out_scores = np.empty((len(queries), want), np.float32)
    out_ids = np.empty((len(queries), want), np.int64)
    for q in range(len(queries)):
        order = np.lexsort((ids[q], -scores[q].astype(np.float64)))[:want]  # by score, then id
        out_scores[q], out_ids[q] = scores[q][order], ids[q][order]
    complete = [int((row >= 0).sum()) >= min(want, available) for row in out_ids]
    return Ranking(out_scores, out_ids, complete, first.matches)


def _tie_at(scores: np.ndarray, ids: np.ndarray, last: int, score: float | None = None) -> bool:
    """Whether entry ``last`` exists and scores exactly ``score`` (default: the entry before it's)."""
    return bool(ids[last] >= 0 and scores[last] == (scores[last - 1] if score is None else score))


def _search(index, queries: np.ndarray, want: int, allowed: np.ndarray | None, nprobe: int | None,
            ef_search: int | None) -> Ranking:
    """One FAISS search for the ``want`` best, in FAISS's own order (see :func:`rank`)."""
    if allowed is None:
        scores, ids = search_index(index, queries, want, nprobe=nprobe, ef_search=ef_search)
        return _padded(scores, ids, want, int(index.ntotal), None)
    if len(allowed) == 0 or len(queries) == 0:
        return _padded(np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64),
                       want, 0, 0)
    q = np.array(queries, np.float32, order="C")
    if index.metric_type == faiss.METRIC_INNER_PRODUCT:
        faiss.normalize_L2(q)
    k = int(min(want, len(allowed)))
    selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64))
    scores, ids = index.search(q, k, params=_params(index, selector, nprobe, ef_search, deep=False))
    if (ids < 0).any():
        deep = _params(index, selector, nprobe, ef_search, deep=True)
        if deep is not None:
            scores, ids = index.search(q, k, params=deep)
    if (ids < 0).any() and len(allowed) <= EXACT_FALLBACK_ROWS:
        scores, ids = _exact(index, q, allowed, k, scores, ids)
    return _padded(scores, ids, want, len(allowed), len(allowed))


def _padded(scores, ids, want: int, available: int, matches: int | None) -> Ranking:
    q = len(ids)
    out_scores = np.full((q, want), -np.inf, np.float32)
    out_ids = np.full((q, want), -1, np.int64)
    out_scores[:, : scores.shape[1]] = scores
    out_ids[:, : ids.shape[1]] = ids
    expected = min(want, available)
    return Ranking(out_scores, out_ids, [int((row >= 0).sum()) >= expected for row in out_ids], matches)


def _inner(index):
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


def _params(index, selector, nprobe: int | None, ef_search: int | None, deep: bool):
    """Search parameters with ``selector``; ``deep``: the exhaustive form (None when the first search
    was already exhaustive)."""
    inner = _inner(index)
    try:
        ivf = faiss.extract_index_ivf(inner)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        probes = ivf.nlist if deep else (nprobe or ivf.nprobe)
        return faiss.SearchParametersIVF(sel=selector, nprobe=int(probes))
    if isinstance(inner, faiss.IndexHNSW):
        ef = HNSW_DEEP_EF if deep else (ef_search or inner.hnsw.efSearch)
        return faiss.SearchParametersHNSW(sel=selector, efSearch=int(ef))
    return None if deep else faiss.SearchParameters(sel=selector)


def _exact(index, q: np.ndarray, allowed: np.ndarray, k: int, scores, ids):
    """Score the allowed vectors exactly (reconstructed from the index, inner-product indexes);
    unchanged when the index cannot reconstruct them."""
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return scores, ids
    try:
        vectors = index.reconstruct_batch(np.ascontiguousarray(allowed, np.int64))
    except RuntimeError:
        return scores, ids
    similarity = q @ vectors.T
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarity, top, 1).astype(np.float32), allowed[top]
