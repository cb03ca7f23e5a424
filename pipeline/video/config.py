"""Configuration of ``tomeray index`` and ``tomeray search`` (defaults: ``configs/index.yaml``,
``configs/search.yaml``; ``tomeray config index|search`` prints them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tomeray.models.device import InferenceConfig
from tomeray.models.tempme import VideoModelConfig
from tomeray.models.tempme.factory import absolute_path
from tomeray.operators.video_io import VIDEO_EXTENSIONS
from tomeray.pipeline.core.graph import ActorPoolConfig, RayJobConfig
from tomeray.pipeline.video.faiss_config import FaissConfig

__all__ = ["FaissConfig", "IndexConfig", "IndexOutputConfig", "InputConfig",
           "SamplingConfig", "SearchConfig", "SearchModelConfig"]


@dataclass
class SamplingConfig:
    fps: float | None = None  # None: model.num_frames spread over each clip (TempMe's rule); x: x frames/s
    segment_s: float = 0.0  # > 0: one row per window of this many seconds (hits carry a time range)
    strict: bool = True  # a video whose decoder reports damaged data is an error, not indexed
    decode_threads: int = 1  # decord threads per decode task


@dataclass
class InputConfig:
    extensions: list[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))
    list_column: str = "path"  # column of CSV/Parquet input lists
    id_root: str | None = None  # ids from paths relative to this root (same ids wherever it is mounted)


@dataclass
class IndexOutputConfig:
    shard_rows: int = 256  # rows per Parquet part (a crash loses at most the rows not yet written)
    flush_s: float = 30.0  # ... or what arrived in the last flush_s seconds
    build_faiss: bool = True
    thumbnails: bool = True  # a small JPEG per row (thumbnails/ parts); a rerun backfills missing ones


@dataclass
class IndexConfig:
    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # decode tasks of half a CPU; embed actors of half a CPU with one torch thread (on CPU-only
    # clusters max(1, round(0.75 * CPUs)) of them, so decoding keeps a share); batches: 8 / 32 on GPU
    ray: RayJobConfig = field(default_factory=lambda: RayJobConfig(actors=ActorPoolConfig(threads=1)))
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    input: InputConfig = field(default_factory=InputConfig)
    faiss: FaissConfig = field(default_factory=FaissConfig)
    output: IndexOutputConfig = field(default_factory=IndexOutputConfig)

    def sampling_header(self) -> dict:
        """The sampling settings an index pins (its rows depend on them)."""
        return {"fps": self.sampling.fps, "segment_s": float(self.sampling.segment_s or 0.0),
                "num_frames": self.model.num_frames}


@dataclass
class SearchModelConfig:
    """Model settings a search may give; the result must still be the index's own model (checked)."""

    pretrained: str | None = None  # None: the weights the index was built with (from its manifest)
    adapter: str | None = None  # None: the adapter the index was built with (its manifest says where)

    def __post_init__(self):
        self.adapter = absolute_path(self.adapter)


@dataclass
class SearchQueryConfig:
    text_precision: str = "fp32"  # text tower: fp32 | int8 (dynamic int8 linear layers, CPU)


@dataclass
class SearchConfig:
    """Configuration of ``tomeray search`` (defaults: ``configs/search.yaml``)."""

    model: SearchModelConfig = field(default_factory=SearchModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    search: SearchQueryConfig = field(default_factory=SearchQueryConfig)
