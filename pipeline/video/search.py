"""Search a video index with a text query or a video: :class:`VideoSearcher` (``tomeray search``
is its command line, :mod:`tomeray.pipeline.video.search_cli`).

    from tomeray.pipeline.video import VideoSearcher
    s = VideoSearcher("out/demo-index")
    s.search("people walking", k=5)          # text -> videos
    s.search("/data/clip.mp4", k=5)          # video -> similar videos
    s.search("people", k=5, offset=5, filters=SearchFilters(path_glob="*.mp4"))   # page 2, filtered
    s.search_like(video_id, k=5)             # rows like an indexed one (its stored embedding)

The searcher reads the index's manifest, FAISS index and metadata, and builds the encoder the
manifest names: the same architecture, merge preset, frame count and weights (an open_clip tag, a
checkpoint file, or random weights re-created from their seed). An encoder whose identity differs
from the one that built the index is refused, since its embeddings would not be comparable. Random
weights are searched with the same random weights, and every output says so.

Hits are joined to their metadata through the index's lookup table (``pipeline.video.metadata``:
sorted, memory-mapped, one binary search per hit); filters select rows before the FAISS search
(``pipeline.video.filters``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import cached_property

import numpy as np
from tomeray.models.errors import ConfigError, InputError
from tomeray.models.host import host_available_memory
from tomeray.operators.video_io import VIDEO_EXTENSIONS
from tomeray.pipeline.video.faiss_build import faiss_entry
from tomeray.pipeline.video.faiss_index import build_index, index_to_device, load_index, search_defaults
from tomeray.pipeline.video.faiss_rows import embedding_matrix
from tomeray.pipeline.video.filters import Ranking, SearchFilters, matching_ids, rank
from tomeray.pipeline.video.layout import IndexLayout, check_same_embeddings
from tomeray.pipeline.video.metadata import MetadataTable, ParquetCells

__all__ = ["SearchFilters", "SearchResult", "VideoSearcher", "check_k", "check_offset", "is_video_query",
           "model_config_from_manifest"]

log = logging.getLogger(__name__)

FILTER_CACHE = 32  # filters whose matching ids are kept (pages of one filtered query reuse them)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    rank: int  # 1-based
    score: float  # cosine similarity
    video_id: int
    path: str
    start_s: float  # the matching clip: the whole video, or one window in segment mode
    end_s: float
    duration_s: float  # of the whole video

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in dataclasses.asdict(self).items()}


def model_config_from_manifest(manifest: dict, overrides: dict | None = None):
    """The ``VideoModelConfig`` that re-creates the encoder an index was built with.

    Derived from the manifest's model identity: architecture, preset and frame count, the weights
    from ``weights_id`` (``open_clip:<arch>/<tag>``, ``file:<path>#sha256=...`` or
    ``random-init(seed=<n>)``), and for an index built with an adapter the adapter file recorded in
    the manifest (``adapter.path``). ``overrides`` replace fields, e.g. ``adapter`` for an adapter
    file that moved (any change must still give the same identity, which the searcher checks)."""
    from tomeray.models.tempme import VideoModelConfig

    model = manifest.get("model")
    if not isinstance(model, dict) or "arch" not in model:
        raise InputError("the index manifest has no model identity ('model'); rebuild the index with "
                         "'tomeray index'")
    weights_id = str(model.get("weights_id") or manifest.get("weights_id") or "")
    fields = {"arch": model["arch"], "preset": model.get("preset", "tempme"),
              "num_frames": int(model.get("num_frames", 12))}
    if fields["preset"] == "custom":  # a schedule given in the config: the identity holds it
        fields["schedule"] = model.get("schedule")
    if match := re.fullmatch(r"random-init\(seed=(-?\d+)\)", weights_id):
        fields.update(pretrained="none", seed=int(match.group(1)))
    elif match := (re.fullmatch(r"open_clip:[^/]+/(.+)", weights_id)
                   or re.fullmatch(r"file:(.+)#sha256=[0-9a-f]+", weights_id)):
        fields["pretrained"] = match.group(1)
    elif not (overrides or {}).get("pretrained"):
        raise InputError(f"cannot tell which weights built this index (weights_id {weights_id!r}); "
                         "pass them explicitly (model override pretrained=...)")
    if model.get("adapter"):
        recorded = (manifest.get("adapter") or {}).get("path")
        if not recorded and not (overrides or {}).get("adapter"):
            raise InputError(f"the index was built with adapter {model['adapter'].get('id')} but its "
                             "manifest does not say where the file is; pass it (model override adapter=PATH)")
        fields["adapter"] = recorded
    valid = {f.name for f in dataclasses.fields(VideoModelConfig)}
    for key, value in (overrides or {}).items():
        if key not in valid:
            raise ConfigError(f"unknown model setting '{key}'; valid: {', '.join(sorted(valid))}")
        fields[key] = value
    return VideoModelConfig(**fields)


def _is_random(weights_id: str) -> bool:
    return weights_id.startswith("random-init")


def _json_form(obj):
    """What a value looks like after a round trip through the manifest's JSON."""
    return json.loads(json.dumps(obj, default=str))


class VideoSearcher:
    """Text-to-video and video-to-video search over one index directory.

    ``device`` / ``precision``: where and how the encoder runs (``models.device``'s rule); FAISS follows
    it onto the GPU when faiss-gpu is installed. ``model_overrides``: fields of ``VideoModelConfig``
    (they must still give the index's model). ``nprobe`` / ``ef_search``: recall/speed knobs of IVF /
    HNSW indexes. ``text_precision`` (``fp32`` | ``int8`` | ``int8-all``) / ``cache_size``: how text
    queries are encoded (:mod:`.query_text`). ``mmap``: memory-map the FAISS index instead of reading it into
    memory (None: when it is larger than a quarter of the free memory; see ``faiss_index.load_index``). The
    encoder is loaded on the first text or video query."""

    def __init__(
        self,
        index_dir: str | os.PathLike,
        device: str = "auto",
        *,
        precision: str = "auto",
        nprobe: int | None = None,
        ef_search: int | None = None,
        mmap: bool | None = None,
        text_precision: str = "fp32",
        cache_size: int = 0,
        **model_overrides,
    ):
        self.layout = IndexLayout(index_dir)
        if not self.layout.root.is_dir():
            raise InputError(f"index directory '{self.layout.root}' does not exist; build one with "
                             "'tomeray index' (or 'tomeray demo')")
        self.manifest = self.layout.read_manifest()
        self.model_config = model_config_from_manifest(self.manifest, model_overrides)
        self.device, self.precision = device, precision
        self.weights_id = str(self.manifest.get("weights_id") or self.manifest["model"].get("weights_id", ""))
        self.random_weights = _is_random(self.weights_id)
        self.nprobe, self.ef_search, self.mmap = nprobe, ef_search, mmap
        self.text_precision, self.cache_size = text_precision, cache_size
        index = self._load_index()
        dim = int(self.manifest.get("dim", index.d))
        if index.d != dim:
            raise InputError(f"FAISS index {self.layout.faiss_path} has dimension {index.d} but the manifest "
                             f"says {dim}: the index is inconsistent; rebuild it with 'tomeray index'")
        # FAISS follows the encoder onto the GPU when faiss-gpu can; without it, it searches on the CPU.
        self.index = index_to_device(index, "never" if str(device).startswith("cpu") else "auto")
        self._load_metadata()
        if self.random_weights:
            log.warning("index %s was built with random weights (%s): rankings are not meaningful",
                        self.layout.root, self.weights_id)

    def _load_index(self):
        """The saved FAISS index, read or memory-mapped (``mmap``); for an index built without one
        (``output.build_faiss=false``), an exact index over the stored embeddings, built in memory."""
        entry = faiss_entry(self.manifest)
        path = self.layout.faiss_path
        if path.exists() or entry:
            mmap = self.mmap
            if mmap is None:
                mmap = path.exists() and path.stat().st_size > host_available_memory() // 4
            return load_index(path, mmap=bool(mmap), factory=str((entry or {}).get("factory") or ""),
                              ondisk=bool((entry or {}).get("ondisk")))
        log.warning("index %s has no FAISS file (built with output.build_faiss=false): searching its "
                    "embeddings exactly, in memory", self.layout.root)
        table = self.layout.read_embeddings(["video_id", "embedding"])
        vectors = embedding_matrix(table, int(self.manifest["dim"]))
        return build_index(vectors, table["video_id"].to_numpy(), "flat", use_gpu="never")

    def _load_metadata(self) -> None:
        self.metadata = MetadataTable.open(self.layout)
        self.id_root = (self.manifest.get("ids") or {}).get("root")
        self._cells = ParquetCells()
        self._matches: OrderedDict[SearchFilters, np.ndarray] = OrderedDict()
        self._matches_lock = threading.Lock()
        if self.index.ntotal != len(self.metadata):
            log.warning("FAISS index holds %d vectors but the metadata %d rows; results without "
                        "metadata are left out (rerun 'tomeray index' to rebuild the index)",
                        self.index.ntotal, len(self.metadata))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search_settings(self) -> dict:
        """The FAISS settings searches use (the tuned ones saved with the index unless overridden)
        and what the tuning measured (``faiss.tuning`` of the manifest; None for older indexes)."""
        params = {k: v for k, v in self._saved_search_params().items() if v is not None}
        overrides = {"nprobe": self.nprobe, "ef_search": self.ef_search}
        params.update({k: v for k, v in overrides.items() if v is not None and k in params})
        entry = faiss_entry(self.manifest) or {}
        return {"factory": entry.get("factory") or "Flat", "params": params, "tuning": entry.get("tuning")}

    def _saved_search_params(self) -> dict:
        return search_defaults(self.index)

    def __repr__(self) -> str:
        return f"VideoSearcher('{self.layout.root}', {len(self)} vectors, weights {self.weights_id})"

    # ------------------------------------------------------------------------------ encoder

    @cached_property
    def encoder(self):
        """The index's encoder, loaded once; refused if its identity differs from the manifest's."""
        from tomeray.models.tempme import create_video_encoder

        encoder = create_video_encoder(self.model_config, device=self.device, precision=self.precision)
        check_same_embeddings(self.manifest, {"model": _json_form(encoder.identity())},
                              f"index '{self.layout.root}'", "the requested model", paths=("model",),
                              hint="search with the index's own model (drop the model overrides)")
        log.info("query encoder: %s on %s (%s)", encoder.arch, encoder.device, encoder.weights_id)
        return encoder

    @cached_property
    def text_encoder(self):
        """Text queries -> vectors: the encoder's text tower in ``text_precision``, cached."""
        from tomeray.pipeline.video.query_text import QueryTextEncoder

        return QueryTextEncoder(self.encoder, self.text_precision, self.cache_size)

    def use_encoder(self, encoder, text_encoder=None) -> None:
        """Search with an encoder already built (e.g. shared by the indexes of a server), and its
        query text encoder (with its cache); refused if its identity differs from this index's model."""
        check_same_embeddings(self.manifest, {"model": _json_form(encoder.identity())},
                              f"index '{self.layout.root}'", "the shared encoder", paths=("model",),
                              hint="serve indexes built with the same model together")
        self.__dict__["encoder"] = encoder  # the cached_property's slot
        if text_encoder is not None:
            self.__dict__["text_encoder"] = text_encoder

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(Q,) query strings -> (Q, D) float32 unit vectors."""
        texts = list(texts)
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"a text query must be a non-empty string, got {text!r}")
        return self.text_encoder.encode(texts)

    def encode_video(self, path: str | os.PathLike) -> np.ndarray:
        """A video file -> (1, D) float32 unit vector, decoded and sampled as the indexer does."""
        import torch
        from tomeray.models.frames import normalize_frames
        from tomeray.operators.video_decode import decode_clips

        encoder = self.encoder
        # The frame rate the index was sampled at; the query is always one whole-video clip.
        sample_fps = (self.manifest.get("sampling") or {}).get("fps")
        try:
            # Consumed to the end: the decoder's damage checks run when the video is done.
            clips = list(decode_clips(path, encoder.image_size, encoder.num_frames, sample_fps))
        except InputError as e:
            raise InputError(f"cannot use video '{path}' as a query: {e}") from None
        if not clips:
            raise InputError(f"cannot use video '{path}' as a query: it has no frames")
        clip = clips[0]
        frames = normalize_frames(torch.from_numpy(clip.frames), encoder.mean, encoder.std)[None]
        mask = torch.from_numpy(clip.mask)[None]
        return encoder.encode_video(frames.to(encoder.device), mask.to(encoder.device)).float().cpu().numpy()

    # ------------------------------------------------------------------------------- search

    def search(self, query: str | os.PathLike, k: int = 10, *, offset: int = 0,
               filters: SearchFilters | None = None) -> list[SearchResult]:
        """Ranked results for a text query, or for a video when ``query`` is a video file; ``offset``
        skips the best ones (pages), ``filters`` keeps rows whose metadata match."""
        if is_video_query(query):
            return self.search_video(query, k, offset=offset, filters=filters)
        return self.search_text(str(query), k, offset=offset, filters=filters)

    def search_text(self, text: str, k: int = 10, **options) -> list[SearchResult]:
        return self.search_many([text], k, **options)[0]

    def search_many(self, texts: Sequence[str], k: int = 10, **options) -> list[list[SearchResult]]:
        """One ranked list per text query, encoded and searched as one batch."""
        check_k(k)
        return self.search_embeddings(self.encode_text(texts), k, **options)

    def search_video(self, path: str | os.PathLike, k: int = 10, **options) -> list[SearchResult]:
        check_k(k)
        return self.search_embeddings(self.encode_video(path), k, **options)[0]

    def search_like(self, video_id: int, k: int = 10, **options) -> list[SearchResult]:
        """Rows like an indexed row, by its stored embedding (no decoding); the row itself is left out."""
        check_k(k)
        return self.search_embeddings(self.embedding_of(video_id)[None], k, exclude=int(video_id),
                                      **options)[0]

    def search_embeddings(self, queries: np.ndarray, k: int = 10, *, offset: int = 0,
                          filters: SearchFilters | None = None,
                          exclude: int | None = None) -> list[list[SearchResult]]:
        """Ranked results for query embeddings (Q, D) made by this index's encoder: ranks
        ``offset + 1 .. offset + k`` among the rows ``filters`` lets through, ``exclude`` left out."""
        check_k(k)
        check_offset(offset)
        ranking = self.rank(queries, offset + k + (exclude is not None), filters)
        return [self.join(s, i, offset, k, exclude) for s, i in zip(ranking.scores, ranking.ids)]

    def rank(self, queries: np.ndarray, want: int, filters: SearchFilters | None = None) -> Ranking:
        """The FAISS step of a search: the ``want`` best (score, id) per query."""
        allowed = self.matching_ids(filters) if filters else None
        return rank(self.index, queries, want, allowed, nprobe=self.nprobe, ef_search=self.ef_search)

    def matching_ids(self, filters: SearchFilters) -> np.ndarray:
        """The sorted ids of the rows ``filters`` lets through (kept for the last few filters)."""
        with self._matches_lock:
            if filters in self._matches:
                self._matches.move_to_end(filters)
                return self._matches[filters]
        ids = matching_ids(self.metadata, filters, self.id_root)
        with self._matches_lock:
            self._matches[filters] = ids
            while len(self._matches) > FILTER_CACHE:
                self._matches.popitem(last=False)
        return ids

    def join(self, scores: np.ndarray, ids: np.ndarray, offset: int = 0, k: int | None = None,
             exclude: int | None = None) -> list[SearchResult]:
        """The metadata step: ranked (score, id) -> results ``offset + 1 ..`` (k of them at most)."""
        keep = (ids >= 0) & (ids != (-1 if exclude is None else exclude))
        scores, ids = scores[keep], ids[keep]
        positions = self.metadata.positions(ids)
        found = positions >= 0  # ids in FAISS but not in the metadata (a stale index) are left out
        scores, positions = scores[found], positions[found]
        end = len(positions) if k is None else offset + k
        rows = self.metadata.rows(positions[offset:end])
        return [SearchResult(rank_, float(score), r["video_id"], r["path"], r["start_s"], r["end_s"],
                             r["duration_s"])
                for rank_, (score, r) in enumerate(zip(scores[offset:end].tolist(), rows),
                                                   start=offset + 1)]

    # ------------------------------------------------------------------------------ rows

    def row(self, video_id: int) -> SearchResult | None:
        """An indexed row's metadata (rank 0, score NaN), or None for an unknown id."""
        return self.rows([video_id])[0]

    def rows(self, video_ids) -> list[SearchResult | None]:
        """:meth:`row` for many ids at once (one lookup per column)."""
        positions = self.metadata.positions(video_ids)
        found = iter(self.metadata.rows(positions[positions >= 0]))
        out: list[SearchResult | None] = []
        for position in positions.tolist():
            if position < 0:
                out.append(None)
                continue
            r = next(found)
            out.append(SearchResult(0, float("nan"), r["video_id"], r["path"], r["start_s"], r["end_s"],
                                    r["duration_s"]))
        return out

    def _position(self, video_id: int) -> int:
        position = int(self.metadata.positions([video_id])[0])
        if position < 0:
            raise InputError(f"video id {video_id} is not in index '{self.layout.root}'")
        return position

    def embedding_of(self, video_id: int) -> np.ndarray:
        """The stored (D,) float32 embedding of a row."""
        shard, row = self.metadata.shard_row(self._position(video_id))
        return np.asarray(self._cells.value(shard, row, "embedding").values.to_numpy(), np.float32)

    def thumbnail_frame(self, video_id: int) -> int:
        """The frame number a row's thumbnail shows (for rows indexed without one)."""
        from tomeray.operators.thumbnail import middle_frame

        shard, row = self.metadata.shard_row(self._position(video_id))
        return middle_frame(self._cells.value(shard, row, "frame_indices").as_py() or [])

    def has_thumbnail(self, video_id: int) -> bool:
        return self.metadata.thumbnail_row(self._position(video_id)) is not None

    def thumbnail_of(self, video_id: int) -> bytes | None:
        """A row's stored JPEG thumbnail, or None when the index has none for it."""
        where = self.metadata.thumbnail_row(self._position(video_id))
        return None if where is None else self._cells.value(where[0], where[1], "thumbnail").as_py()


def check_offset(offset) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int | np.integer) or offset < 0:
        raise InputError(f"offset must be a non-negative integer, got {offset!r}")


def check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")


def is_video_query(query: str | os.PathLike) -> bool:
    """A query names a video when it is an existing file or ends in a video extension (a missing
    video then fails clearly instead of being searched for as text)."""
    text = os.fspath(query)
    if "\n" in text or len(text) > 4096:
        return False
    return os.path.isfile(text) or text.lower().endswith(VIDEO_EXTENSIONS)
