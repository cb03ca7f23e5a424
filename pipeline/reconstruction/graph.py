"""The reconstruction graph on Ray Data: scene rows -> load (tasks) -> VGGT (actor pool), one scene
per block and per call, so a dying worker (out of memory on a huge scene) loses one scene."""

from __future__ import annotations

import dataclasses
import json

from tomeray.pipeline.core.graph import actor_stage, plan_actors, source_dataset, task_stage
from tomeray.pipeline.reconstruction.config import ReconConfig

__all__ = ["build_dataset"]


def build_dataset(specs: list[dict], cfg: ReconConfig):
    """``specs`` from ``discover_scenes``. Returns the dataset of reconstructed scene rows."""
    from tomeray.operators.scene_load import SceneLoader
    from tomeray.operators.scene_reconstruct import SceneReconstructor

    items = [{"scene": s["scene"], "spec": json.dumps(s)} for s in specs]
    ds = source_dataset(items, progress=cfg.ray.progress, max_blocks=cfg.ray.max_blocks)
    loader = SceneLoader(mode=cfg.load.mode, size=cfg.load.size, max_views=cfg.views.max_views,
                         policy=cfg.views.policy, max_pixels=cfg.load.max_pixels,
                         video_frames=cfg.video.num_frames, video_fps=cfg.video.fps)
    ds = task_stage(ds, loader, cfg.ray.tasks)
    kwargs = {"model": dataclasses.asdict(cfg.model), "points": dataclasses.asdict(cfg.points),
              "max_views": cfg.views.max_views, "policy": cfg.views.policy,
              **dataclasses.asdict(cfg.inference)}
    return actor_stage(ds, SceneReconstructor, kwargs, plan_actors(cfg.ray.actors, len(items)), batch_size=1)
