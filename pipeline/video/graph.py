"""The indexing graph on Ray Data: input rows -> decode (tasks) -> embed (actor pool)."""

from __future__ import annotations

import dataclasses

from tomeray.pipeline.core.graph import ActorPlan, actor_stage, plan_actors, source_dataset, task_stage
from tomeray.pipeline.video.config import IndexConfig

__all__ = ["EMBED_CPU_SHARE", "build_dataset", "plan_embedding"]

# On CPU-only clusters: about one embed actor per 4/3 CPUs, which leaves decoding its share.
EMBED_CPU_SHARE = 0.75


def plan_embedding(cfg: IndexConfig, videos: int) -> tuple[ActorPlan, int]:
    """The embed actor pool on the connected cluster, and its batch size (8 clips on CPU, 32 on GPU)."""
    plan = plan_actors(cfg.ray.actors, videos, EMBED_CPU_SHARE)
    return plan, cfg.ray.actors.batch_size or (32 if plan.on_gpu else 8)


def build_dataset(items: list[dict], cfg: IndexConfig, image_size: int):
    """``items``: ``{path, key}`` rows. Returns the dataset of embedded clip rows (see the operators)."""
    from tomeray.operators.video_decode import VideoDecoder
    from tomeray.operators.video_embed import VideoEmbedder

    ds = source_dataset(items, progress=cfg.ray.progress, max_blocks=cfg.ray.max_blocks)
    decoder = VideoDecoder(image_size, cfg.model.num_frames, cfg.sampling.fps, cfg.sampling.segment_s,
                           cfg.sampling.decode_threads, cfg.sampling.strict, cfg.output.thumbnails)
    ds = task_stage(ds, decoder, cfg.ray.tasks)
    plan, batch_size = plan_embedding(cfg, len(items))
    kwargs = {"model": dataclasses.asdict(cfg.model), **dataclasses.asdict(cfg.inference)}
    return actor_stage(ds, VideoEmbedder, kwargs, plan, batch_size)
