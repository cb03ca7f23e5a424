"""Configuration of ``tomeray serve`` (defaults: ``configs/serve.yaml``; ``tomeray config serve``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tomeray.models.device import InferenceConfig
from tomeray.pipeline.video.config import SearchModelConfig

__all__ = ["ServeConfig", "ServeLimits", "ServeRayConfig", "ServeSearchConfig", "ServerConfig"]


@dataclass
class ServeSearchConfig:
    default_k: int = 20  # hits per page when a request does not say
    nprobe: int | None = None  # IVF lists to probe (None: the index's own setting)
    ef_search: int | None = None  # HNSW search depth (None: the index's own setting)
    batch_size: int = 32  # concurrent text queries encoded (and searched) together at most
    text_precision: str = "fp32"  # text tower: fp32 | int8 (int8 MLPs, CPU) | int8-all (every projection)
    cache_size: int = 1024  # text query embeddings kept (LRU; 0: none)


@dataclass
class ServeLimits:
    max_query_chars: int = 500
    max_k: int = 1000
    max_offset: int = 10_000
    max_upload_mb: float = 32.0  # an uploaded query clip or image
    max_json_kb: int = 64  # a JSON request body


@dataclass
class ServeRayConfig:
    address: str | None = None  # cluster to join (--address); None: RAY_ADDRESS, else a local cluster
    replicas: int = 2  # each holds its own encoder and indexes
    num_cpus: float = 1.0  # CPUs reserved per replica
    threads: int = 0  # torch threads per replica (0: its reserved CPUs, at least 1)
    shards: int = 0  # > 0: the index's rows split over this many shard replicas (by video_id % shards)
    shard_cpus: float = 0.5  # CPUs reserved per shard replica


@dataclass
class ServerConfig:
    reload_s: float = 2.0  # how often to look for a newer index (0: never)
    torch_threads: int = 0  # of the uvicorn server process (0: torch's default)
    cors_origins: list[str] = field(default_factory=list)  # empty: no cross-origin access


@dataclass
class ServeConfig:
    model: SearchModelConfig = field(default_factory=SearchModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    search: ServeSearchConfig = field(default_factory=ServeSearchConfig)
    limits: ServeLimits = field(default_factory=ServeLimits)
    server: ServerConfig = field(default_factory=ServerConfig)
    ray: ServeRayConfig = field(default_factory=ServeRayConfig)
