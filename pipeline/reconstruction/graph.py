"""The reconstruction graph on Ray Data: scene rows -> load (tasks) -> VGGT (actor pool), one scene
per block and per call, so a dying worker (out of memory on a huge scene) loses one scene."""

from __future__ import annotations

import dataclasses
import json

from tomeray.pipeline.core.graph import actor_stage, plan_actors, source_dataset, task_stage
from tomeray.pipeline.reconstruction.config import ReconConfig, chunk_overlap, chunk_size

__all__ = ["build_dataset", "reconstructor_kwargs", "scene_items", "scene_loader"]


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


def scene_items(specs: list[dict]) -> list[dict]:
    return [{"scene": s["scene"], "spec": json.dumps(s)} for s in specs]


def build_dataset(specs: list[dict], cfg: ReconConfig, intrinsics: dict | None = None):
    """``specs`` from ``discover_scenes``. Returns the dataset of reconstructed scene rows and the
    VGGT actors' plan it runs with."""
    from tomeray.operators.scene_reconstruct import SceneReconstructor

    items = scene_items(specs)
    ds = source_dataset(items, progress=cfg.ray.progress, max_blocks=cfg.ray.max_blocks)
    ds = task_stage(ds, scene_loader(cfg), cfg.ray.tasks)
    plan = plan_actors(cfg.ray.actors, len(items))
    return actor_stage(ds, SceneReconstructor, reconstructor_kwargs(cfg, intrinsics), plan,
                        batch_size=1), plan
