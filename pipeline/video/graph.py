"""The indexing graph on Ray Data: input rows -> decode (tasks) -> embed (actor pool)."""

from __future__ import annotations

import dataclasses

from tomeray.pipeline.core.graph import ActorPlan, actor_stage, plan_actors, source_dataset, task_stage
from tomeray.pipeline.video.config import IndexConfig

__all__ = ["EMBED_CPU_SHARE", "build_dataset", "embedder_kwargs", "plan_embedding", "video_decoder"]

# On CPU-only clusters: about one embed actor per 4/3 CPUs, which leaves decoding its share.
EMBED_CPU_SHARE = 0.75
SHOT_TASK_MEMORY_MB = 1024  # at least this much per decode task when it also detects shots


def plan_embedding(cfg: IndexConfig, videos: int) -> tuple[ActorPlan, int]:
    """The embed actor pool on the connected cluster, and its batch size: 32 clips on GPU; 2 on CPU,
    where a clip's cost does not shrink in larger batches and the first embedding waits for a
    whole first batch to be decoded and embedded."""
    plan = plan_actors(cfg.ray.actors, videos, EMBED_CPU_SHARE)
    return plan, cfg.ray.actors.batch_size or (32 if plan.on_gpu else 2)


def video_decoder(cfg: IndexConfig, image_size: int):
    """The decode stage's callable for this job's settings."""
    from tomeray.operators.video_decode import VideoDecoder

    shots = cfg.sampling.shots
    segmenter = {"detector": shots.detector, "threshold": shots.threshold, "min_s": shots.min_s,
                 "max_s": shots.max_s, "batch_windows": shots.batch_windows, "window": shots.window,
                 "precision": shots.precision} \
        if cfg.sampling.segments == "shots" else None
    return VideoDecoder(image_size, cfg.model.num_frames, cfg.sampling.fps, cfg.sampling.window_s,
                        cfg.sampling.decode_threads, cfg.sampling.strict, cfg.output.thumbnails, segmenter)


def embedder_kwargs(cfg: IndexConfig) -> dict:
    """The embed actors' constructor arguments for this job's settings."""
    return {"model": dataclasses.asdict(cfg.model), **dataclasses.asdict(cfg.inference)}


def build_dataset(items: list[dict], cfg: IndexConfig, image_size: int):
    """``items``: ``{path, key}`` rows. Returns the dataset of embedded clip rows (see the operators)
    and the embed actors' plan it runs with."""
    from tomeray.operators.video_embed import VideoEmbedder

    ds = source_dataset(items, progress=cfg.ray.progress, max_blocks=cfg.ray.max_blocks)
    tasks = cfg.ray.tasks
    if cfg.sampling.segments == "shots" and cfg.sampling.shots.detector == "transnetv2":
        # the detector runs in the decode task: torch and TransNetV2 took ~660 MB per worker (measured)
        tasks = dataclasses.replace(tasks, memory_mb=max(tasks.memory_mb, SHOT_TASK_MEMORY_MB))
    ds = task_stage(ds, video_decoder(cfg, image_size), tasks)
    plan, batch_size = plan_embedding(cfg, len(items))
    return actor_stage(ds, VideoEmbedder, embedder_kwargs(cfg), plan, batch_size), plan
