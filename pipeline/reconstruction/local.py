"""Reconstructing scenes in the calling process, with the job's own stages called directly (the
scene loader, the VGGT + FastVGGT reconstructor, the writer and layout) instead of on Ray Data: for
a service that reconstructs one scene at a time on request and keeps its model warm between them.
The output is the same as ``tomeray reconstruct`` writes, and a rerun skips finished scenes."""

from __future__ import annotations

import numpy as np
from tomeray.models.errors import InputError
from tomeray.pipeline.reconstruction.config import ReconConfig, resolve_weights_id, validate
from tomeray.pipeline.reconstruction.graph import reconstructor_kwargs, scene_items, scene_loader
from tomeray.pipeline.reconstruction.job import finish_reconstruction, output_header
from tomeray.pipeline.reconstruction.layout import ReconLayout
from tomeray.pipeline.reconstruction.writer import SceneWriter

__all__ = ["LocalReconstructor"]


class LocalReconstructor:
    """Reconstructs scene specs (see ``discover_scenes``) into one output directory, in this process.
    The model loads on the first scene and stays loaded. Not thread-safe: call from one worker."""

    def __init__(self, out: str, cfg: ReconConfig):
        validate(cfg)
        self.cfg, self.layout = cfg, ReconLayout(out)
        self.weights_id = resolve_weights_id(cfg.model)  # fails early on missing weights
        if cfg.cameras.intrinsics:
            raise InputError("known intrinsics (cameras.intrinsics) are for 'tomeray reconstruct'")
        self.manifest = self.layout.open(output_header(cfg, self.weights_id))
        self.loader = scene_loader(cfg)
        self._model = None

    def reconstruct(self, spec: dict) -> dict:
        """Reconstruct one scene (unless finished already); returns its completion record. Raises
        ``RuntimeError`` with the scene's errors when it fails."""
        finished = self.layout.finished_scenes()
        if spec["scene"] in finished:
            return finished[spec["scene"]]
        if self._model is None:
            from tomeray.operators.scene_reconstruct import SceneReconstructor

            self._model = SceneReconstructor(**reconstructor_kwargs(self.cfg))
        (item,) = scene_items([spec])
        loaded = self.loader({k: np.asarray([v], dtype=object) for k, v in item.items()})
        writer = SceneWriter(self.layout, self.cfg, {spec["scene"]: spec})
        writer.add(self._model(loaded))
        self.manifest = finish_reconstruction(self.layout, self.manifest, self.cfg)
        if spec["scene"] not in writer.records:
            reasons = "; ".join(e["message"] for e in writer.errors[-3:]) or "unknown reason"
            raise RuntimeError(f"the reconstruction of {spec['scene']} failed: {reasons}")
        return writer.records[spec["scene"]]
