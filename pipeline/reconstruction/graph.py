"""The reconstruction graph on Ray Data: scene rows -> load (tasks) -> VGGT (actor pool), one scene
per block and per call, so a dying worker (out of memory on a huge scene) loses one scene. A scene
that needs several model calls (long scenes, ``views.policy=chunks`` or ``split``) is split after
loading into one row per call, so the actor pool runs them in parallel; the writer puts the scene
back together when all its calls are in (``operators.scene_chunks``)."""

from __future__ import annotations

import dataclasses
import json

from tomeray.pipeline.core.graph import actor_stage, plan_actors, source_dataset, task_stage
from tomeray.pipeline.reconstruction.config import ReconConfig, chunk_overlap, chunk_size

__all__ = ["build_dataset", "chunk_splitter", "planned_calls", "reconstructor_kwargs", "scene_items",
           "scene_loader"]


def scene_loader(cfg: ReconConfig):
    """The load stage's callable for this job's settings."""
    from tomeray.operators.scene_load import SceneLoader

    return SceneLoader(mode=cfg.load.mode, size=cfg.load.size, max_views=cfg.views.max_views,
                       policy=cfg.views.policy, max_pixels=cfg.load.max_pixels,
                       video_frames=cfg.video.num_frames, video_fps=cfg.video.fps)


def reconstructor_kwargs(cfg: ReconConfig, intrinsics: dict | None = None) -> dict:
    """The VGGT actors' constructor arguments for this job's settings (``intrinsics``: the known
    intrinsics' ``KnownIntrinsics.actor_spec()``)."""
    return {"model": dataclasses.asdict(cfg.model), "points": dataclasses.asdict(cfg.points),
            "max_views": cfg.views.max_views, "policy": cfg.views.policy, **dataclasses.asdict(cfg.inference),
            "chunk": chunk_size(cfg.views), "overlap": chunk_overlap(cfg.views),
            "refine": dataclasses.asdict(cfg.refine), "intrinsics": intrinsics}


def chunk_splitter(cfg: ReconConfig):
    """The stage after loading that splits long scenes into one row per model call."""
    from tomeray.operators.scene_chunks import ChunkSplitter

    return ChunkSplitter(policy=cfg.views.policy, max_views=cfg.views.max_views, chunk=chunk_size(cfg.views),
                         overlap=chunk_overlap(cfg.views))


def planned_calls(specs: list[dict], cfg: ReconConfig) -> int:
    """How many model calls the scenes will take (a video's frames counted as ``video.num_frames``)."""
    from tomeray.operators.scene_reconstruct import model_calls

    return sum(len(model_calls(len(s["images"]) if "images" in s else cfg.video.num_frames,
                               cfg.views.policy, cfg.views.max_views, chunk_size(cfg.views),
                               chunk_overlap(cfg.views))) for s in specs)


def scene_items(specs: list[dict]) -> list[dict]:
    return [{"scene": s["scene"], "spec": json.dumps(s)} for s in specs]


def build_dataset(specs: list[dict], cfg: ReconConfig, intrinsics: dict | None = None):
    """``specs`` from ``discover_scenes``. Returns the dataset of reconstructed scene rows and the
    VGGT actors' plan it runs with."""
    from tomeray.operators.scene_reconstruct import SceneReconstructor

    items = scene_items(specs)
    ds = source_dataset(items, progress=cfg.ray.progress, max_blocks=cfg.ray.max_blocks)
    ds = task_stage(ds, scene_loader(cfg), cfg.ray.tasks)
    calls = planned_calls(specs, cfg)
    if calls > len(items):  # some scene needs several model calls: one row (and block) per call
        ds = task_stage(ds, chunk_splitter(cfg), cfg.ray.tasks)
        # an actor takes a block as a whole, so a scene's calls must not share one
        ds = ds.repartition(target_num_rows_per_block=1)
        import ray

        ray.data.DataContext.get_current().max_errored_blocks = calls  # a dying actor loses one call
    plan = plan_actors(cfg.ray.actors, calls)
    return actor_stage(ds, SceneReconstructor, reconstructor_kwargs(cfg, intrinsics), plan,
                        batch_size=1), plan
