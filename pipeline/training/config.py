"""Configuration of ``tomeray train`` and ``tomeray eval-retrieval`` (defaults: ``configs/train.yaml``,
``configs/eval_retrieval.yaml``; ``tomeray config train|eval-retrieval`` prints them).

The ``model``, ``inference``, ``ray`` and ``sampling`` sections are those of ``tomeray index``, so the
merge schedule, frame count and frame sampling an adapter is trained with are the ones an index uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tomeray.models.device import InferenceConfig
from tomeray.models.tempme import VideoModelConfig
from tomeray.operators.clip_decode import AugmentConfig
from tomeray.pipeline.core.graph import ActorPoolConfig, RayJobConfig
from tomeray.pipeline.video.config import IndexConfig, SamplingConfig

__all__ = ["AugmentConfig", "DataConfig", "EvalConfig", "EvalSettings", "TrainConfig", "TrainSettings"]


@dataclass
class DataConfig:
    """Where the video-caption pairs come from (``pipeline.training.data``)."""

    format: str = "auto"  # auto | table (CSV / TSV / JSONL / Parquet) | msrvtt
    video_root: str | None = None  # relative video paths resolve here (None: the table's folder)
    path_column: str = "path"
    caption_column: str = "caption"
    split_column: str = "split"  # optional column: train | val | test
    val_fraction: float = 0.05  # without a split column: this fraction of the clips is held out (by seed)
    seed: int = 0  # the train / val split
    msrvtt_train_list: str = "MSRVTT_train.9k.csv"  # next to MSRVTT_data.json
    msrvtt_test_list: str = "MSRVTT_JSFUSION_test.csv"  # the 1k-A test split


@dataclass
class TrainSettings:
    """The recipe (TempMe's defaults) and the workers that run it."""

    epochs: int = 5
    batch_size: int = 128  # global batch (all workers together); the contrastive loss sees all of it
    lr: float = 6e-4
    weight_decay: float = 0.2
    warmup: float = 0.1  # fraction of all steps with a linear warm-up, then a cosine decay to 0
    grad_clip: float = 1.0  # max gradient norm (0: no clipping)
    context_length: int = 32  # text tokens
    seed: int = 0  # data order and augmentation draws
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # RandAugment on training clips
    workers: int = 2  # data-parallel Ray Train workers
    cpus_per_worker: float = 0.5  # CPUs each worker reserves (fractional: decode tasks keep a share)
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else CPU workers
    threads: int = 0  # torch threads of a CPU worker (0: its reserved CPUs, at least 1)
    checkpoint_steps: int = 0  # also checkpoint every N steps (0: at the end of every epoch only)
    keep_checkpoints: int = 2  # checkpoints kept in <out>/checkpoints
    max_failures: int = 2  # worker-group restarts (from the last checkpoint) before the run fails
    val_batch_size: int = 64  # clips per worker per embedding call in validation


@dataclass
class TrainConfig:
    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    ray: RayJobConfig = field(default_factory=RayJobConfig)  # tasks: the decode stage; actors: unused
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSettings = field(default_factory=TrainSettings)

    def recipe(self) -> dict:
        """The settings a training output pins (a resumed run must use the same)."""
        import dataclasses

        t = dataclasses.asdict(self.train)
        for key in ("workers", "cpus_per_worker", "gpus_per_worker", "threads", "keep_checkpoints",
                    "max_failures", "val_batch_size"):
            t.pop(key)
        return {"train": t, "sampling": {"fps": self.sampling.fps, "strict": self.sampling.strict}}


@dataclass
class EvalSettings:
    # auto (MSR-VTT: 1k-A test; a table: its 'test' rows, else all rows) | all | train | val | test
    split: str = "auto"
    text_batch_size: int = 256  # captions per text-tower call
    context_length: int = 32  # text tokens, as in training


@dataclass
class EvalConfig:
    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    ray: RayJobConfig = field(default_factory=lambda: RayJobConfig(actors=ActorPoolConfig(threads=1)))
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def index_config(self) -> IndexConfig:
        """The indexing settings whose decode + embed graph embeds the clips."""
        return IndexConfig(model=self.model, inference=self.inference, ray=self.ray, sampling=self.sampling)
