"""Long scenes as independent model calls, so that an actor pool runs the chunks of one scene on
several actors (and nodes) at once: the calls only meet again for their alignment.

* ``ChunkSplitter`` (a task stage after loading): a scene that needs more than one model call
  (``model_calls``: ``views.policy=chunks`` or ``split`` over the budget) becomes one row per call,
  each with the scene's columns but only the call's views' images, plus ``chunk`` (its index),
  ``chunks`` (their count) and ``chunk_views``. The scene's load costs are shared out over its
  rows and its load errors ride on the first. A scene that fits one call passes unchanged.
* ``run_call`` (what ``SceneReconstructor`` does with such a row): the call's outputs in its own
  frame, how many views had their field of view clamped, its seconds and which actor ran it; a
  failure becomes the row's error (the scene fails with it). VGGT tracks for bundle adjustment
  are taken in the same place, since they need the model.
* ``SceneCalls`` (wherever the rows arrive, the job's driver): keeps a scene's call rows until all
  of them are in, then rebuilds the scene and hands it to ``SceneReconstructor.reconstruct`` with
  the calls (a reconstructor built without its model), which aligns them exactly as the
  sequential path does and then filters, refines and reports. The result is an ordinary scene row.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
from tomeray.models.errors import InputError, one_line
from tomeray.operators.scene_reconstruct import SceneReconstructor, model_calls, model_intrinsics
from tomeray.operators.scene_refine import vggt_call_tracks

__all__ = ["ChunkSplitter", "SceneCalls", "assemble_scene", "run_call"]

OUTPUTS = ("extrinsic", "intrinsic", "depth", "points", "conf")


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


class ChunkSplitter:
    """Ray Data stage: loaded scene rows -> one row per model call of the scenes that need several
    (see the module docstring); the arguments are ``SceneReconstructor``'s views settings."""

    def __init__(self, policy: str = "subsample", max_views: int = 0, chunk: int = 0, overlap: int = 0):
        self.views = dict(policy=policy, max_views=max_views, chunk=chunk, overlap=overlap)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(batch["scene"]) != 1:
            raise ValueError("ChunkSplitter takes one scene per batch (map_batches(batch_size=1))")
        images = np.asarray(batch["images"][0])
        calls = model_calls(len(images), **self.views)
        if len(calls) < 2:
            return batch
        n = len(calls)
        rows = {k: np.repeat(np.asarray(v), n, axis=0) for k, v in batch.items() if k != "images"}
        rows["images"] = _objects([images[c] for c in calls])
        rows["chunk_views"] = _objects(calls)
        rows["chunk"] = np.arange(n, dtype=np.int64)
        rows["chunks"] = np.full(n, n, np.int64)
        rows["errors"] = np.asarray([str(batch["errors"][0])] + ["[]"] * (n - 1), dtype=object)
        for key in ("load_cpu_s", "load_wall_s"):  # the scene's load, shared out: totals stay true
            if key in batch:
                rows[key] = np.full(n, float(batch[key][0]) / n)
        return rows


def actor_name() -> str:
    """The Ray actor running this process (its pid outside an actor): which actor ran a call."""
    try:
        import ray

        actor = ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - diagnostics only
        actor = None
    return f"{actor or 'process'}:{os.getpid()}"


def run_call(rec: SceneReconstructor, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One model call of a long scene (a ``ChunkSplitter`` row) -> its outputs' row."""
    k, n = int(batch["chunk"][0]), int(batch["chunks"][0])
    views = np.asarray(batch["chunk_views"][0], np.int64)
    images = np.asarray(batch["images"][0])
    errors = json.loads(str(batch["errors"][0]))
    call = {"chunk": k, "first_view": int(views[0]), "last_view": int(views[-1]), "actor": actor_name(),
            "node": rec.node_id, "device": str(rec.device), "precision": rec.precision,
            "weights_id": rec.weights_id, "status": "ok", "clamped": 0, "seconds": 0.0, "tracks": None}
    H, W = images.shape[1:3]
    output = {"extrinsic": np.zeros((0, 3, 4)), "intrinsic": np.zeros((0, 3, 3)),
              "depth": np.zeros((0, H, W), np.float32), "points": np.zeros((0, H, W, 3), np.float32),
              "conf": np.zeros((0, H, W), np.float32)}
    started = time.perf_counter()
    try:
        orig_hw = np.asarray(batch["orig_hw"][0], np.int64).reshape(-1, 2)
        known = rec._known_intrinsics(json.loads(str(batch["image_path"][0])), orig_hw)
        known_in = None if known is None else model_intrinsics(
            known, np.asarray(batch["scale_xy"][0], np.float64).reshape(-1, 2),
            np.asarray(batch["offset_xy"][0], np.float64).reshape(-1, 2))[views]
        x = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2)  # Ray's arrays are read-only
        output, call["clamped"] = rec.predict_call(x, known_in)
        call["seconds"] = time.perf_counter() - started
        if rec.refine is not None and rec.refine.get("tracks") == "vggt":
            part = vggt_call_tracks(rec.model, images, rec.device, rec.precision,
                                    int(rec.refine.get("max_query_points", 512)))
            call["tracks"] = part and {key: np.asarray(v).tolist() for key, v in part.items()}
    except (InputError, torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if isinstance(e, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        call["status"] = "failed"
        where = f"model call {k + 1} of {n} (views {views[0]}..{views[-1]})"
        errors.append({"path": "", "stage": "reconstruct", "error_type": type(e).__name__,
                       "message": f"{where}: {one_line(e)}"})
    passed = ("frame_idx", "orig_hw", "scale_xy", "offset_xy", "content_hw", "image_path", "skipped",
              "chunk", "chunks", "chunk_views", "load_node")
    return {**{key: batch[key] for key in passed if key in batch},
            "scene": np.asarray([str(batch["scene"][0])], dtype=object),
            "images": images[None], **{key: v[None] for key, v in output.items()},
            "call": np.asarray([json.dumps(call)], dtype=object),
            "errors": np.asarray([json.dumps(errors)], dtype=object),
            "model_node": np.asarray([rec.node_id], dtype=object)}


def assemble_scene(rec: SceneReconstructor, rows: list[dict]) -> dict:
    """The scene row (as ``SceneReconstructor`` makes it) from all of a scene's call rows (single
    rows, not batches, in chunk order), by ``rec``: a reconstructor built with ``load_model=False``
    does, since the model's work is done."""
    first = rows[0]
    frame_idx = np.asarray(first["frame_idx"], np.int64)
    shape = np.asarray(first["images"]).shape[1:]
    images = np.zeros((len(frame_idx), *shape), np.uint8)
    calls, errors = [], []
    for row in rows:
        call = {**json.loads(str(row["call"])), "output": {k: np.asarray(row[k]) for k in OUTPUTS}}
        if call["status"] == "ok":  # a failed call fails the scene: its views are not needed
            images[np.asarray(row["chunk_views"], np.int64)] = np.asarray(row["images"])
        calls.append(call)
        errors += json.loads(str(row["errors"]))
    scene_keys = ("scene", "frame_idx", "orig_hw", "scale_xy", "offset_xy", "content_hw", "image_path",
                  "skipped", "load_node")
    batch = {key: [first[key]] for key in scene_keys if key in first}
    batch.update(images=[images], errors=[json.dumps(errors)])
    out = rec._reconstruct_row(batch, calls)
    return {**{key: v[0] for key, v in out.items()}, "model_node": str(first["model_node"])}


class SceneCalls:
    """Keeps the call rows of long scenes (single rows) until each scene is complete. ``add``
    returns the scene's row once its last call is in, else None. ``reconstructor_kwargs``: the
    model actors' settings (``pipeline.reconstruction.graph.reconstructor_kwargs``)."""

    def __init__(self, reconstructor_kwargs: dict):
        self.kwargs = reconstructor_kwargs
        self.pending: dict[str, dict[int, dict]] = {}
        self._rec: SceneReconstructor | None = None

    def add(self, row: dict) -> dict | None:
        scene = str(row["scene"])
        calls = self.pending.setdefault(scene, {})
        calls[int(row["chunk"])] = row
        if len(calls) < int(row["chunks"]):
            return None
        del self.pending[scene]
        if self._rec is None:
            self._rec = SceneReconstructor(**self.kwargs, load_model=False)
        return assemble_scene(self._rec, [calls[k] for k in sorted(calls)])
