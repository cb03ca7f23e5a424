"""The search service behind every route, independent of the web framework: the served indexes (loaded
once per process, swapped atomically when ``tomeray index`` updates one), one warm encoder shared by
them, and a micro-batcher that encodes and searches concurrent queries together.

A request takes the current tuple of indexes once and uses it to the end, so a swap never mixes two
versions in one answer and requests in flight finish on the version they started with.

Hits of several indexes are merged by score; hits of exactly equal score come in the order the
indexes were given, then by id (each index's own ranking already orders its ties by id and never cuts
a tie at random, :func:`~tomeray.pipeline.video.filters.rank`), so every page of a query is the
same slice of one fixed order, request after request.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tomeray.models.errors import ConfigError, InputError, one_line
from tomeray.pipeline.video.filters import SearchFilters, display_path
from tomeray.pipeline.video.layout import check_same_embeddings
from tomeray.pipeline.video.search import VideoSearcher
from tomeray.pipeline.video.serve.batcher import MicroBatcher
from tomeray.pipeline.video.serve.config import ServeConfig
from tomeray.pipeline.video.serve.metrics import ServiceMetrics
from tomeray.pipeline.video.shots import segment_kind, segmentation

__all__ = ["Answer", "NotFound", "Query", "SearchService", "ServedIndex"]

log = logging.getLogger(__name__)

# Indexes served together must give comparable scores.
COMPARABLE = ("model", "dim", "metric")


class NotFound(InputError):
    """An id, video or file the service does not have (HTTP 404)."""


@dataclass(eq=False)
class Query:
    text: str | None = None
    like: int | None = None  # video id: rows like this one (its stored embedding)
    vector: np.ndarray | None = None  # an embedding (an uploaded clip or image, encoded)
    k: int = 20
    offset: int = 0
    filters: SearchFilters = field(default_factory=SearchFilters)

    @property
    def want(self) -> int:  # one more than the page, to tell whether another page exists
        return self.offset + self.k + 1 + (self.like is not None)


@dataclass
class Answer:
    hits: list[tuple[float, int, int]]  # (score, video id, index number), best first, up to want
    complete: bool
    matches: int | None
    encode_s: float
    faiss_s: float
    batch: int
    indexes: tuple


@dataclass(frozen=True)
class ServedIndex:
    name: str
    searcher: VideoSearcher
    stamp: tuple  # the manifest file's identity when loaded
    loaded_at: float


def _finite(x: float | None) -> float | None:
    return x if x is not None and np.isfinite(x) else None


def _names(dirs: list[str]) -> list[str]:
    names: list[str] = []
    for d in dirs:
        base = Path(d).resolve().name or "index"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


class SearchService:
    """Loads ``index_dirs`` and answers queries (see the module docstring)."""

    def __init__(self, index_dirs: list[str], cfg: ServeConfig | None = None,
                 metrics: ServiceMetrics | None = None, server: str = "uvicorn", encoder=None,
                 searcher_class=VideoSearcher):
        if not index_dirs:
            raise InputError("no index given: pass one or more index directories made by 'tomeray index'")
        self.cfg = cfg or ServeConfig()
        self.server = server
        self.metrics = metrics or ServiceMetrics()
        self.dirs = [str(Path(d)) for d in index_dirs]
        self.names = _names(self.dirs)
        self.reload_errors: dict[str, str] = {}
        self.searcher_class = searcher_class  # (the sharded service's searchers rank on shard replicas)
        first = self._searcher(self.dirs[0])
        if encoder is not None:  # one already built for the indexes' model
            first.use_encoder(encoder)
        self.encoder = first.encoder  # loaded once, here, and shared by every index
        self.text_encoder = first.text_encoder  # (with its query cache)
        self._reference = first.manifest
        searchers = [first] + [self._searcher(d) for d in self.dirs[1:]]
        now = time.time()
        self._indexes = tuple(ServedIndex(n, s, s.layout.manifest_stamp(), now)
                              for n, s in zip(self.names, searchers))
        for index in self._indexes:
            self.metrics.index_rows(index.name, len(index.searcher.metadata))
        first.encode_text(["warm up"])  # the first request does not pay for lazy initialisation
        self.batcher = MicroBatcher(self._process, self.cfg.search.batch_size, "tomeray-search",
                                    on_batch=self.metrics.batch)
        self._stop = threading.Event()
        self._watcher = None
        if self.cfg.server.reload_s and self.cfg.server.reload_s > 0:
            self._watcher = threading.Thread(target=self._watch, name="tomeray-reload", daemon=True)
            self._watcher.start()

    # ------------------------------------------------------------------------------ indexes

    def _searcher(self, index_dir: str) -> VideoSearcher:
        model = {k: v for k, v in vars(self.cfg.model).items() if v is not None}
        searcher = self.searcher_class(index_dir, self.cfg.inference.device,
                                       precision=self.cfg.inference.precision,
                                       nprobe=self.cfg.search.nprobe, ef_search=self.cfg.search.ef_search,
                                       text_precision=self.cfg.search.text_precision,
                                       cache_size=self.cfg.search.cache_size, **model)
        if hasattr(self, "encoder"):  # every index but the first, and every reload
            check_same_embeddings(self._reference, searcher.manifest, f"index '{self.dirs[0]}'",
                                  f"index '{index_dir}'", "serve indexes built with the same model together "
                                  "(or run one server per model)", paths=COMPARABLE)
            searcher.use_encoder(self.encoder, self.text_encoder)
        return searcher

    @property
    def indexes(self) -> tuple[ServedIndex, ...]:
        """The current version of every index (take it once per request)."""
        return self._indexes

    @property
    def weights_id(self) -> str:
        return self._indexes[0].searcher.weights_id

    @property
    def random_weights(self) -> bool:
        return any(i.searcher.random_weights for i in self._indexes)

    def _watch(self) -> None:
        while not self._stop.wait(self.cfg.server.reload_s):
            for number, index in enumerate(self._indexes):
                stamp = index.searcher.layout.manifest_stamp()
                if stamp and stamp != index.stamp:
                    self.reload(number, stamp)

    def reload(self, number: int, stamp: tuple | None = None) -> bool:
        """Load the newest version of index ``number`` and swap it in; the old one stays in use by
        the requests that hold it. On failure the old one keeps serving and stats say why."""
        old = self._indexes[number]
        stamp = stamp or old.searcher.layout.manifest_stamp()
        try:
            searcher = self._searcher(self.dirs[number])
        except Exception as e:  # noqa: BLE001 - a half-written or broken index must not stop serving
            self.reload_errors[old.name] = one_line(e)
            log.warning("index %s changed but cannot be loaded (still serving the previous version): %s",
                        old.name, one_line(e))
            self.metrics.reload(old.name, "failed")
            # not retried until the manifest changes again
            self._replace(number, ServedIndex(old.name, old.searcher, stamp, old.loaded_at))
            return False
        fresh = searcher.layout.manifest_stamp() or stamp
        self._replace(number, ServedIndex(old.name, searcher, fresh, time.time()))
        self.reload_errors.pop(old.name, None)
        self.metrics.reload(old.name, "ok")
        self.metrics.index_rows(old.name, len(searcher.metadata))
        log.info("index %s reloaded: %d rows", old.name, len(searcher.metadata))
        return True

    def _replace(self, number: int, index: ServedIndex) -> None:
        indexes = list(self._indexes)
        indexes[number] = index
        self._indexes = tuple(indexes)  # one reference assignment: readers see the old or the new tuple

    def close(self) -> None:
        self._stop.set()
        self.batcher.close()

    # ------------------------------------------------------------------------------- search

    def submit(self, query: Query):
        """A Future of the query's :class:`Answer` (computed with other queries in a batch)."""
        return self.batcher.submit(query)

    def search(self, query: Query) -> dict:
        """Blocking form of ``respond(query, submit(query).result())``."""
        return self.respond(query, self.submit(query).result())

    def _process(self, queries: list[Query]) -> list:
        indexes = self._indexes
        started = time.perf_counter()
        vectors: list = [None] * len(queries)
        texts = [i for i, q in enumerate(queries) if q.text is not None]
        if texts:
            encoded = indexes[0].searcher.encode_text([queries[i].text for i in texts])
            for i, v in zip(texts, encoded):
                vectors[i] = v
        for i, q in enumerate(queries):
            if q.vector is not None:
                vectors[i] = np.asarray(q.vector, np.float32).reshape(-1)
            elif q.like is not None:
                try:
                    vectors[i] = self._stored_embedding(indexes, q.like)
                except InputError as e:
                    vectors[i] = e
        encoded_at = time.perf_counter()
        ready = [i for i, v in enumerate(vectors) if not isinstance(v, BaseException)]
        per_index = [self._rank(index.searcher, queries, vectors, ready) for index in indexes]
        done = time.perf_counter()
        self.metrics.stage("encode", encoded_at - started)
        self.metrics.stage("faiss", done - encoded_at)
        answers: list = []
        for i, q in enumerate(queries):
            if isinstance(vectors[i], BaseException):
                answers.append(vectors[i])
                continue
            hits, complete, matches = [], True, None
            for number, rankings in enumerate(per_index):
                scores, ids, ok, found = rankings[i]
                complete &= ok
                if found is not None:
                    matches = (matches or 0) + found
                hits.extend((float(s), int(v), number) for s, v in zip(scores, ids) if v >= 0 and v != q.like)
            hits.sort(key=lambda h: (-h[0], h[2], h[1]))  # score, index order, id
            unique, seen = [], set()
            for hit in hits:  # the same row in two indexes: its best copy
                if hit[1] not in seen:
                    seen.add(hit[1])
                    unique.append(hit)
            answers.append(Answer(unique[: q.want], complete, matches, encoded_at - started,
                                  done - encoded_at, len(queries), indexes))
        return answers

    @staticmethod
    def _rank(searcher: VideoSearcher, queries: list[Query], vectors: list, ready: list[int]) -> dict:
        """One index's rankings: unfiltered queries in one FAISS call, filtered ones each alone."""
        out = {}
        plain = [i for i in ready if not queries[i].filters]
        if plain:
            want = max(queries[i].want for i in plain)
            r = searcher.rank(np.stack([vectors[i] for i in plain]), want)
            for row, i in enumerate(plain):
                w = queries[i].want
                out[i] = (r.scores[row, :w], r.ids[row, :w], r.complete[row], None)
        for i in ready:
            if queries[i].filters:
                r = searcher.rank(vectors[i][None], queries[i].want, queries[i].filters)
                out[i] = (r.scores[0], r.ids[0], r.complete[0], r.matches)
        return out

    @staticmethod
    def _stored_embedding(indexes, video_id: int) -> np.ndarray:
        for index in indexes:
            if index.searcher.row(video_id) is not None:
                return index.searcher.embedding_of(video_id)
        raise NotFound(f"no indexed video has id {video_id}")

    def respond(self, query: Query, answer: Answer) -> dict:
        """The JSON answer: the page of hits joined to their metadata."""
        started = time.perf_counter()
        page = answer.hits[query.offset : query.offset + query.k]
        rows = {}
        for number in {hit[2] for hit in page}:  # one lookup per index for all its hits
            ids = [video_id for _, video_id, n in page if n == number]
            rows.update(((number, v), r) for v, r in zip(ids, answer.indexes[number].searcher.rows(ids)))
        results = []
        for rank, (score, video_id, number) in enumerate(page, start=query.offset + 1):
            row = rows[number, video_id]
            if row is not None:
                results.append(self.hit(answer.indexes[number], row, rank, score))
        metadata_s = time.perf_counter() - started
        self.metrics.stage("metadata", metadata_s)
        note = None
        if not answer.complete:
            note = ("the approximate index found fewer matching rows than asked for; "
                    "results may be missing some matches")
        return {
            "results": results, "k": query.k, "offset": query.offset,
            "has_more": len(answer.hits) > query.offset + query.k,
            "complete": answer.complete, "matches": answer.matches, "note": note,
            "weights_id": self.weights_id, "random_weights": self.random_weights,
            "timing_ms": {"encode": round(answer.encode_s * 1e3, 3), "faiss": round(answer.faiss_s * 1e3, 3),
                          "metadata": round(metadata_s * 1e3, 3), "batch": answer.batch},
        }

    @staticmethod
    def hit(index: ServedIndex, row, rank: int | None = None, score: float | None = None) -> dict:
        vid = str(row.video_id)  # a decimal string: 63-bit ids do not fit JavaScript numbers
        out = {"video_id": vid, "index": index.name,
               "path": display_path(row.path, index.searcher.id_root), "name": Path(row.path).name,
               "start_s": _finite(row.start_s), "end_s": _finite(row.end_s),
               "duration_s": _finite(row.duration_s),
               "segment": segment_kind(index.searcher.manifest),
               "thumbnail_url": f"/api/videos/{vid}/thumbnail", "media_url": f"/media/{vid}"}
        if rank is not None:
            out = {"rank": rank, "score": round(float(score), 6), **out}
        return out

    # ------------------------------------------------------------------------------- rows

    def find(self, video_id: int):
        """``(ServedIndex, SearchResult)`` of an indexed row; NotFound otherwise."""
        for index in self._indexes:
            row = index.searcher.row(video_id)
            if row is not None:
                return index, row
        raise NotFound(f"no indexed video has id {video_id}")

    def stats(self) -> dict:
        indexes = self._indexes
        items = []
        for index in indexes:
            s = index.searcher
            m = s.manifest
            items.append({
                "name": index.name, "rows": len(s.metadata), "videos": s.metadata.num_paths,
                "vectors": len(s), "faiss": m.get("faiss_factory") or "Flat (in memory)",
                "dim": m.get("dim"), "weights_id": s.weights_id, "random_weights": s.random_weights,
                "segment_s": (m.get("sampling") or {}).get("segment_s"), "updated": m.get("updated"),
                "segmentation": segmentation(m),
                "loaded_at": index.loaded_at, "reload_error": self.reload_errors.get(index.name),
                "search": s.search_settings(),
            })
        model = indexes[0].searcher.manifest.get("model") or {}
        limits = self.cfg.limits
        return {
            "server": self.server, "indexes": items,
            "rows": sum(i["rows"] for i in items), "videos": sum(i["videos"] for i in items),
            "model": {k: model.get(k) for k in ("arch", "preset", "num_frames", "embed_dim", "weights_id")},
            "weights_id": self.weights_id, "random_weights": self.random_weights,
            "faiss": sorted({i["faiss"] for i in items}), "text_queries": self.text_encoder.stats(),
            "default_k": self.cfg.search.default_k,
            "limits": {"max_query_chars": limits.max_query_chars, "max_k": limits.max_k,
                       "max_offset": limits.max_offset, "max_upload_mb": limits.max_upload_mb},
        }


def check_limits(cfg: ServeConfig) -> None:
    """Refuse limits that make no sense before anything loads."""
    lim = cfg.limits
    for name in ("max_query_chars", "max_k", "max_json_kb"):
        if getattr(lim, name) < 1:
            raise ConfigError(f"limits.{name} must be at least 1, got {getattr(lim, name)}")
    if lim.max_offset < 0 or lim.max_upload_mb <= 0:
        raise ConfigError("limits.max_offset must be >= 0 and limits.max_upload_mb > 0")
    if not 1 <= cfg.search.default_k <= lim.max_k:
        raise ConfigError(f"search.default_k must be between 1 and limits.max_k ({lim.max_k})")
