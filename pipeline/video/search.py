"""Search a video index with a text query or a video: :class:`VideoSearcher` (``tomeray search``
is its command line, :mod:`tomeray.pipeline.video.search_cli`).

    from tomeray.pipeline.video import VideoSearcher
    s = VideoSearcher("out/demo-index")
    s.search("people walking", k=5)          # text -> videos
    s.search("/data/clip.mp4", k=5)          # video -> similar videos

The searcher reads the index's manifest, FAISS index and metadata, and builds the encoder the
manifest names: the same architecture, merge preset, frame count and weights (an open_clip tag, a
checkpoint file, or random weights re-created from their seed). An encoder whose identity differs
from the one that built the index is refused, since its embeddings would not be comparable. Random
weights are searched with the same random weights, and every output says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from functools import cached_property

import numpy as np
from tomeray.models.errors import ConfigError, InputError
from tomeray.operators.video_io import VIDEO_EXTENSIONS
from tomeray.pipeline.video.faiss_build import embedding_matrix, faiss_entry
from tomeray.pipeline.video.faiss_index import build_index, index_to_device, load_index, search_index
from tomeray.pipeline.video.faiss_runtime import available_memory
from tomeray.pipeline.video.layout import IndexLayout, check_same_embeddings

__all__ = ["SearchResult", "VideoSearcher", "check_k", "is_video_query", "model_config_from_manifest"]

log = logging.getLogger(__name__)

METADATA_COLUMNS = ["video_id", "path", "start_s", "end_s", "duration_s"]


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

    Derived from the manifest's model identity: architecture, preset and frame count, and the
    weights from ``weights_id`` (``open_clip:<arch>/<tag>``, ``file:<path>#sha256=...`` or
    ``random-init(seed=<n>)``). ``overrides`` replace fields (any change must still give the same
    identity, which the searcher checks)."""
    from tomeray.models.tempme import VideoModelConfig

    model = manifest.get("model")
    if not isinstance(model, dict) or "arch" not in model:
        raise InputError("the index manifest has no model identity ('model'); rebuild the index with "
                         "'tomeray index'")
    weights_id = str(model.get("weights_id") or manifest.get("weights_id") or "")
    fields = {"arch": model["arch"], "preset": model.get("preset", "tempme"),
              "num_frames": int(model.get("num_frames", 12))}
    if match := re.fullmatch(r"random-init\(seed=(-?\d+)\)", weights_id):
        fields.update(pretrained="none", seed=int(match.group(1)))
    elif match := (re.fullmatch(r"open_clip:[^/]+/(.+)", weights_id)
                   or re.fullmatch(r"file:(.+)#sha256=[0-9a-f]+", weights_id)):
        fields["pretrained"] = match.group(1)
    elif not (overrides or {}).get("pretrained"):
        raise InputError(f"cannot tell which weights built this index (weights_id {weights_id!r}); "
                         "pass them explicitly (model override pretrained=...)")
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
    HNSW indexes. ``mmap``: memory-map the FAISS index instead of reading it into memory (None:
    when it is larger than a quarter of the free memory; see ``faiss_index.load_index``). The
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
                mmap = path.exists() and path.stat().st_size > available_memory() // 4
            return load_index(path, mmap=bool(mmap), factory=str((entry or {}).get("factory") or ""),
                              ondisk=bool((entry or {}).get("ondisk")))
        log.warning("index %s has no FAISS file (built with output.build_faiss=false): searching its "
                    "embeddings exactly, in memory", self.layout.root)
        table = self.layout.read_embeddings(["video_id", "embedding"])
        vectors = embedding_matrix(table, int(self.manifest["dim"]))
        return build_index(vectors, table["video_id"].to_numpy(), "flat", use_gpu="never")

    def _load_metadata(self) -> None:
        table = self.layout.read_embeddings(METADATA_COLUMNS)
        ids = table["video_id"].to_numpy()
        order = np.argsort(ids, kind="stable")
        self._ids = ids[order]
        self._meta = {name: table[name].to_numpy(zero_copy_only=False)[order]
                      for name in METADATA_COLUMNS[1:]}
        if self.index.ntotal != len(self._ids):
            log.warning("FAISS index holds %d vectors but the metadata %d rows; results without "
                        "metadata are left out (rerun 'tomeray index' to rebuild the index)",
                        self.index.ntotal, len(self._ids))

    def __len__(self) -> int:
        return int(self.index.ntotal)

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

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(Q,) query strings -> (Q, D) float32 unit vectors."""
        texts = list(texts)
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"a text query must be a non-empty string, got {text!r}")
        return self.encoder.encode_text(texts).float().cpu().numpy()

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

    def search(self, query: str | os.PathLike, k: int = 10) -> list[SearchResult]:
        """Ranked results for a text query, or for a video when ``query`` is a video file."""
        if is_video_query(query):
            return self.search_video(query, k)
        return self.search_text(str(query), k)

    def search_text(self, text: str, k: int = 10) -> list[SearchResult]:
        return self.search_many([text], k)[0]

    def search_many(self, texts: Sequence[str], k: int = 10) -> list[list[SearchResult]]:
        """One ranked list per text query, encoded and searched as one batch."""
        check_k(k)
        return self.search_embeddings(self.encode_text(texts), k)

    def search_video(self, path: str | os.PathLike, k: int = 10) -> list[SearchResult]:
        check_k(k)
        return self.search_embeddings(self.encode_video(path), k)[0]

    def search_embeddings(self, queries: np.ndarray, k: int = 10) -> list[list[SearchResult]]:
        """Ranked results for query embeddings (Q, D) made by this index's encoder."""
        check_k(k)
        scores, ids = search_index(self.index, queries, k, nprobe=self.nprobe, ef_search=self.ef_search)
        return [self._results(s, i) for s, i in zip(scores, ids)]

    def _results(self, scores: np.ndarray, ids: np.ndarray) -> list[SearchResult]:
        results = []
        for score, video_id in zip(scores, ids):
            if video_id < 0:
                continue  # fewer neighbours found than asked for
            row = int(np.searchsorted(self._ids, video_id))
            if row >= len(self._ids) or self._ids[row] != video_id:
                continue  # in the FAISS index but not in the metadata (stale index)
            m = self._meta
            results.append(SearchResult(len(results) + 1, float(score), int(video_id), str(m["path"][row]),
                                        float(m["start_s"][row]), float(m["end_s"][row]),
                                        float(m["duration_s"][row])))
        return results


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
