"""Configuration of ``tomeray index`` and ``tomeray search`` (defaults: ``configs/index.yaml``,
``configs/search.yaml``; ``tomeray config index|search`` prints them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tomeray.models.device import InferenceConfig
from tomeray.models.errors import ConfigError
from tomeray.models.tempme import VideoModelConfig
from tomeray.models.tempme.factory import absolute_path
from tomeray.operators.video_io import VIDEO_EXTENSIONS
from tomeray.pipeline.core.graph import ActorPoolConfig, RayJobConfig
from tomeray.pipeline.video.faiss_config import FaissConfig

__all__ = ["FaissConfig", "IndexConfig", "IndexOutputConfig", "InputConfig",
           "SamplingConfig", "SearchConfig", "SearchModelConfig", "ShotsConfig"]


@dataclass
class ShotsConfig:
    """Shot segmentation (``sampling.segments=shots``): :mod:`tomeray.operators.shot_decode`."""

    detector: str = "transnetv2"  # transnetv2 (trained weights inside its wheel) | histogram (no weights)
    threshold: float = 0.5  # a cut score above this ends a shot (TransNetV2's own threshold)
    min_s: float = 1.0  # shots shorter than this merge into a neighbour (0: never)
    max_s: float = 30.0  # shots longer than this split into equal parts (0: never)
    batch_windows: int = 1  # TransNetV2 windows per forward pass
    window: int = 100  # TransNetV2 frames per window (100: the package's; longer: fewer frames scored twice)
    precision: str = "fp32"  # TransNetV2 convolutions: fp32 (the package's probabilities) | bf16 (faster)
    reuse: str | None = None  # an index whose shots/ (same detector, weights, threshold) replaces detection

    def __post_init__(self):
        from tomeray.models.shots import DETECTORS

        if self.detector not in DETECTORS:
            raise ConfigError(f"sampling.shots.detector={self.detector!r}: use one of {', '.join(DETECTORS)}")
        if self.precision not in ("fp32", "bf16") or self.window <= 50:
            raise ConfigError(f"sampling.shots: precision must be fp32 or bf16 (got {self.precision!r}) and "
                              f"window more than 50 frames (got {self.window})")
        self.reuse = absolute_path(self.reuse)

    def header(self) -> dict:
        """What an index pins about its shots (rows depend on all of it)."""
        from tomeray.models.shots import detector_weights_id

        header = {"detector": self.detector, "weights_id": detector_weights_id(self.detector),
                  "threshold": float(self.threshold), "min_s": float(self.min_s), "max_s": float(self.max_s)}
        if self.detector == "transnetv2":
            header.update(window=int(self.window), precision=self.precision)
        return header


SEGMENTS = ("none", "fixed", "shots")


@dataclass
class SamplingConfig:
    fps: float | None = None  # None: model.num_frames spread over each clip (TempMe's rule); x: x frames/s
    segment_s: float = 0.0  # > 0: one row per window of this many seconds (hits carry a time range)
    segments: str | None = None  # none (whole videos) | fixed (segment_s windows) | shots; null: by segment_s
    shots: ShotsConfig = field(default_factory=ShotsConfig)
    strict: bool = True  # a video whose decoder reports damaged data is an error, not indexed
    decode_threads: int = 1  # decord threads per decode task

    def __post_init__(self):
        if self.segments is None:
            self.segments = "fixed" if self.segment_s and self.segment_s > 0 else "none"
        if self.segments not in SEGMENTS:
            raise ConfigError(f"sampling.segments={self.segments!r}: use one of {', '.join(SEGMENTS)}")
        if self.segments == "fixed" and not (self.segment_s and self.segment_s > 0):
            raise ConfigError("sampling.segments=fixed needs sampling.segment_s > 0 (the window length)")
        if self.segments != "fixed" and self.segment_s and self.segment_s > 0:
            raise ConfigError(f"sampling.segment_s is the window length of segments=fixed, not of "
                              f"segments={self.segments}: leave it at 0")

    @property
    def window_s(self) -> float:
        """The fixed windows' length, 0 when the rows are not fixed windows."""
        return float(self.segment_s) if self.segments == "fixed" else 0.0


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
        header = {"fps": self.sampling.fps, "segment_s": float(self.sampling.segment_s or 0.0),
                  "num_frames": self.model.num_frames}
        if self.sampling.segments == "shots":  # indexes of other modes keep the header they always had
            header.update(segments="shots", shots=self.sampling.shots.header())
        return header


@dataclass
class SearchModelConfig:
    """Model settings a search may give; the result must still be the index's own model (checked)."""

    pretrained: str | None = None  # None: the weights the index was built with (from its manifest)
    adapter: str | None = None  # None: the adapter the index was built with (its manifest says where)

    def __post_init__(self):
        self.adapter = absolute_path(self.adapter)


@dataclass
class SearchQueryConfig:
    text_precision: str = "fp32"  # text tower: fp32 | int8 (int8 MLPs, CPU) | int8-all (every projection)


@dataclass
class SearchConfig:
    """Configuration of ``tomeray search`` (defaults: ``configs/search.yaml``)."""

    model: SearchModelConfig = field(default_factory=SearchModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    search: SearchQueryConfig = field(default_factory=SearchQueryConfig)
