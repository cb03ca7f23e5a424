"""Reconstruct one scene with VGGT (a Ray Data stage run in an actor pool, one scene per call).

``SceneReconstructor`` builds the model once per actor (``create_vggt``: weights, merging) and
turns a loaded scene (``operators.scene_load``) into cameras and a filtered point cloud:

* views: a scene over ``max_views`` runs in several model calls. Policy ``chunks``: windows of
  ``chunk`` views in capture order overlapping by ``overlap`` views, chained into view 0's frame
  by robust Sim(3) fits over the shared views' points (``models.chunks``). Policy ``split``:
  chunks that all start with the scene's first view (the anchor). VGGT's world frame is its
  first input's camera and its scale
  is its own per call, so each later chunk is mapped onto the first by the similarity that makes
  its anchor coincide: rotation and translation from the anchor's two predicted poses, scale from
  the median ratio of the anchor's two depth maps (``chunk_alignment``);
* points: ``source="depth"`` unprojects the depth maps through the predicted cameras (what the
  VGGT authors recommend and their demo defaults to), ``"point_head"`` takes the point map head;
  pixels outside the image (padding) never become points; then a confidence filter (absolute
  ``conf_threshold`` and/or ``conf_percentile`` over the scene's pixels) and a seeded subsample to
  ``max_points``; colours are the model-input pixels the points came from;
* cameras: extrinsics world-to-camera (OpenCV), intrinsics converted from the model input to the
  original image's pixels (``original_intrinsics``); known intrinsics (``intrinsics``, one matrix
  or one per image path) replace the predicted ones, depth being unprojected through them;
* refinement (``refine["ba"]``): bundle adjustment of the cameras (``operators.scene_refine``),
  after which depth is unprojected through the refined cameras.

Failures of one scene (memory estimate over budget, CUDA out of memory, ...) become an error row
(stage ``reconstruct``); the actor carries on with the next scene.

Each row carries the scene's load costs through, and the model's own (``model_cpu_s``, ...) with
the actor's start-up stamps (``model_process_at``, ..., ``model_build_cpu_s``): ``operators.worker``.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import torch
from tomeray.models.chunks import align_chunks, overlapping_chunks
from tomeray.models.device import autocast, resolve_device, resolve_precision
from tomeray.models.errors import InputError, one_line
from tomeray.models.pose import Sim3
from tomeray.models.vggt import MergeConfig, VGGTModelConfig, create_vggt
from tomeray.models.vggt.geometry import (
    confidence_mask,
    pose_encoding_to_extri_intri,
    unproject_depth_map_to_point_map,
)
from tomeray.operators.scene_refine import refine_cameras
from tomeray.operators.worker import WorkerStart, cost_columns, measure, node_id

__all__ = [
    "SceneReconstructor",
    "chunk_alignment",
    "model_intrinsics",
    "original_intrinsics",
    "split_chunks",
]

log = logging.getLogger(__name__)

# The camera head's field of view passes a ReLU, so it can be 0 (an infinite focal length) or
# near 180 degrees for untrained or confused weights; clamped to this range (radians), counted in
# the scene's statistics, so cameras and exports stay finite.
FOV_RANGE = (1e-3, 3.0)


def split_chunks(n: int, max_views: int) -> list[np.ndarray]:
    """View indices of the model calls for ``n`` views: one call when they fit, else chunks of at
    most ``max_views`` views that all start with view 0 (the anchor)."""
    if max_views <= 0 or n <= max_views:
        return [np.arange(n)]
    if max_views < 2:
        raise InputError("views.policy=split needs views.max_views >= 2 (each chunk repeats the anchor view)")
    rest = np.arange(1, n)
    return [np.concatenate([[0], part]) for part in np.array_split(rest, -(-len(rest) // (max_views - 1)))]


def chunk_alignment(ref_extrinsic: np.ndarray, ref_depth: np.ndarray, extrinsic: np.ndarray,
                    depth: np.ndarray, valid: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) mapping a chunk's world into the reference chunk's, x -> s R x + t, from
    the anchor view's pose and depth in both: s = median(ref_depth / depth) over valid pixels, and
    the anchor camera coincides after the map."""
    ratio = ref_depth[valid] / depth[valid]
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    s = float(np.median(ratio)) if len(ratio) else 1.0
    Ra, ta = ref_extrinsic[:, :3], ref_extrinsic[:, 3]
    Rk, tk = extrinsic[:, :3], extrinsic[:, 3]
    # The anchor's camera coordinates agree: s (Rk x + tk) = Ra y + ta, so y = s Ra^T Rk x + Ra^T (s tk - ta).
    R = Ra.T @ Rk
    return s, R, Ra.T @ (s * tk - ta)


def original_intrinsics(K: np.ndarray, scale_xy: np.ndarray, offset_xy: np.ndarray) -> np.ndarray:
    """Intrinsics (V, 3, 3) of the model input -> of the original images. The preprocessing maps an
    original pixel centre x to (x + 0.5) * scale - 0.5 + offset in the model input (resampling
    keeps pixel areas aligned), which the inverse below undoes exactly for f and c."""
    K = np.asarray(K, np.float64).copy()
    sx, sy = scale_xy[:, 0], scale_xy[:, 1]
    ox, oy = offset_xy[:, 0], offset_xy[:, 1]
    out = np.zeros_like(K)
    out[:, 0, 0] = K[:, 0, 0] / sx
    out[:, 1, 1] = K[:, 1, 1] / sy
    out[:, 0, 1] = K[:, 0, 1] / sx
    out[:, 0, 2] = (K[:, 0, 2] - ox + 0.5) / sx - 0.5
    out[:, 1, 2] = (K[:, 1, 2] - oy + 0.5) / sy - 0.5
    out[:, 2, 2] = 1.0
    return out


def model_intrinsics(K: np.ndarray, scale_xy: np.ndarray, offset_xy: np.ndarray) -> np.ndarray:
    """Intrinsics (V, 3, 3) of the original images -> of the model input (``original_intrinsics``
    inverted)."""
    K = np.asarray(K, np.float64)
    sx, sy = scale_xy[:, 0], scale_xy[:, 1]
    out = np.zeros_like(K)
    out[:, 0, 0] = K[:, 0, 0] * sx
    out[:, 1, 1] = K[:, 1, 1] * sy
    out[:, 0, 1] = K[:, 0, 1] * sx
    out[:, 0, 2] = (K[:, 0, 2] + 0.5) * sx - 0.5 + offset_xy[:, 0]
    out[:, 1, 2] = (K[:, 1, 2] + 0.5) * sy - 0.5 + offset_xy[:, 1]
    out[:, 2, 2] = 1.0
    return out


def content_mask(shape_hw: tuple[int, int], offset_xy: np.ndarray, content_hw: np.ndarray) -> np.ndarray:
    """(V, H, W) True where the model input shows the image (not padding)."""
    H, W = shape_hw
    rows, cols = np.arange(H), np.arange(W)
    masks = []
    for (ox, oy), (ch, cw) in zip(np.asarray(offset_xy, np.int64), np.asarray(content_hw, np.int64)):
        r = (rows >= oy) & (rows < oy + ch)
        c = (cols >= ox) & (cols < ox + cw)
        masks.append(r[:, None] & c[None, :])
    return np.stack(masks) if masks else np.zeros((0, H, W), bool)


def _numpy(t: torch.Tensor, dtype=np.float32) -> np.ndarray:
    return t.float().cpu().numpy().astype(dtype, copy=False)


class SceneReconstructor:
    """Ray Data stage: loaded scene rows -> reconstructed scene rows. Pass the class to
    ``map_batches(..., batch_size=1, compute=ActorPoolStrategy(...))``."""

    def __init__(self, model: dict, points: dict | None = None, max_views: int = 0, policy: str = "subsample",
                 device: str = "auto", precision: str = "auto", num_threads: int = 0, chunk: int = 0,
                 overlap: int = 0, refine: dict | None = None, intrinsics: dict | None = None):
        init_at, init_cpu_s = time.time(), time.process_time()
        if num_threads > 0:
            torch.set_num_threads(int(num_threads))
        merge = MergeConfig(**model.get("merge", {}))
        cfg = VGGTModelConfig(**{**model, "merge": merge})
        self.device = resolve_device(device)
        self.model = create_vggt(cfg).to(self.device)
        self.weights_id = self.model.weights_id
        self.patch = self.model.arch.patch_size
        self.precision = resolve_precision(precision, self.device)
        p = points or {}
        self.source = p.get("source", "depth")
        if self.source not in ("depth", "point_head"):
            raise InputError(f"points.source must be depth or point_head; got {self.source!r}")
        self.conf_threshold = p.get("conf_threshold")
        self.conf_percentile = p.get("conf_percentile")
        self.max_points = int(p.get("max_points") or 0)
        self.seed = int(p.get("seed", 0))
        self.max_views = max_views if policy in ("split", "chunks") else 0
        self.policy = policy
        self.chunk, self.overlap = chunk or max_views, overlap or max(1, (chunk or max_views) // 2)
        self.refine = refine if refine and refine.get("ba") else None
        self.intrinsics = intrinsics  # pipeline.reconstruction.intrinsics.KnownIntrinsics as a dict
        self.node_id = node_id()
        self.start = WorkerStart.since(init_at, init_cpu_s)
        log.info("scene reconstructor ready: %s on %s (%s, %s)", cfg.arch, self.device, self.weights_id,
                 self.precision)

    # ------------------------------------------------------------------ model calls
    def chunks(self, n: int) -> list[np.ndarray]:
        """View indices of the model calls for ``n`` views."""
        if self.policy == "chunks":
            return overlapping_chunks(n, self.chunk, self.overlap)
        return split_chunks(n, self.max_views)

    @torch.inference_mode()
    def predict(self, images: np.ndarray, anchor_valid: np.ndarray | None = None,
                known_K: np.ndarray | None = None, valid: np.ndarray | None = None
                ) -> tuple[dict[str, np.ndarray], int]:
        """uint8 (S, H, W, 3) -> extrinsic (S, 3, 4), intrinsic (S, 3, 3) of the model input, depth
        (S, H, W), points (S, H, W, 3) of ``source`` and their confidence (S, H, W), in the frame of
        view 0 (scenes over the split budget run in anchored chunks, aligned on the ``anchor_valid``
        pixels of view 0; policy ``chunks``: chained by fits on the ``valid`` (S, H, W) pixels, the
        fits' records under ``"alignment"``); and the number of views whose field of view was
        clamped to ``FOV_RANGE``. ``known_K`` (S, 3, 3): model-input intrinsics to use instead of
        the predicted ones."""
        x = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2)  # Ray's arrays are read-only
        H, W = x.shape[-2:]
        outputs, clamped = [], 0
        chunks = self.chunks(len(x))
        for chunk in chunks:
            batch = x[torch.from_numpy(chunk)].to(self.device).float().div_(255)
            with autocast(self.device, self.precision):
                out = self.model(batch)
            pose = out["pose_enc"][0].float()
            fov = pose[:, 7:9]
            clamped += int(((fov < FOV_RANGE[0]) | (fov > FOV_RANGE[1])).any(-1).sum())
            pose = torch.cat([pose[:, :7], fov.clamp(*FOV_RANGE)], dim=-1)
            extrinsic, intrinsic = pose_encoding_to_extri_intri(pose, (H, W))
            if known_K is not None:
                intrinsic = torch.from_numpy(known_K[chunk]).to(extrinsic)
            depth = out["depth"][0, ..., 0].float()
            if self.source == "depth":
                points = unproject_depth_map_to_point_map(depth, extrinsic, intrinsic)
                conf = out["depth_conf"][0]
            else:
                points, conf = out["world_points"][0], out["world_points_conf"][0]
            outputs.append({"extrinsic": _numpy(extrinsic, np.float64),
                            "intrinsic": _numpy(intrinsic, np.float64),
                            "depth": _numpy(depth), "points": _numpy(points), "conf": _numpy(conf)})
            del out, batch
        if self.policy == "chunks" and len(chunks) > 1:
            merged, records = align_chunks(outputs, chunks, valid)
            return {**merged, "alignment": records}, clamped
        return self._assemble(outputs, chunks, anchor_valid), clamped

    @staticmethod
    def _assemble(outputs: list[dict], chunks: list[np.ndarray], anchor_valid: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
        if len(outputs) == 1:
            return outputs[0]
        first = outputs[0]
        merged = {k: [v] for k, v in first.items()}
        for out in outputs[1:]:
            valid = np.isfinite(first["depth"][0]) & np.isfinite(out["depth"][0]) & (out["depth"][0] > 0)
            if anchor_valid is not None:
                valid &= anchor_valid
            sim = Sim3(*chunk_alignment(first["extrinsic"][0], first["depth"][0], out["extrinsic"][0],
                                        out["depth"][0], valid))
            merged["extrinsic"].append(sim.apply_to_extrinsics(out["extrinsic"][1:]))
            merged["intrinsic"].append(out["intrinsic"][1:])
            merged["depth"].append(sim.s * out["depth"][1:])
            merged["points"].append(sim.apply(out["points"][1:]).astype(np.float32))
            merged["conf"].append(out["conf"][1:])
        order = np.argsort(np.concatenate(chunks[:1] + [c[1:] for c in chunks[1:]]))
        return {k: np.concatenate(v)[order] for k, v in merged.items()}

    # ------------------------------------------------------------------ one scene
    def reconstruct(self, images: np.ndarray, scale_xy: np.ndarray, offset_xy: np.ndarray,
                    content_hw: np.ndarray, orig_hw: np.ndarray | None = None,
                    image_path: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """Cameras (original-image intrinsics) and filtered points of one scene, plus statistics."""
        started = time.perf_counter()
        content = content_mask(images.shape[1:3], offset_xy, content_hw)
        known = self._known_intrinsics(image_path, orig_hw)
        known_in = None if known is None else model_intrinsics(known, scale_xy, offset_xy)
        pred, clamped = self.predict(images, content[0], known_in, content)
        alignment = pred.pop("alignment", None)
        seconds = time.perf_counter() - started
        intrinsic = original_intrinsics(pred["intrinsic"], scale_xy, offset_xy) if known is None else known
        refine = None
        if self.refine is not None and orig_hw is not None:
            extrinsic, intrinsic, refine = refine_cameras(
                images, content, pred["extrinsic"], intrinsic, scale_xy, offset_xy, orig_hw, self.refine,
                fixed_intrinsics=known is not None, model=self.model, chunks=self.chunks(len(images)),
                device=self.device, precision=self.precision)
            if refine["applied"]:
                pred["extrinsic"] = extrinsic
                if self.source == "depth":  # the points follow the refined cameras
                    pred["points"] = unproject_depth_map_to_point_map(
                        pred["depth"], extrinsic, model_intrinsics(intrinsic, scale_xy, offset_xy))
        if clamped:
            log.warning("%d view(s) had a degenerate field of view, clamped to %s rad (untrained weights?)",
                        clamped, FOV_RANGE)
        S, H, W = pred["depth"].shape
        valid = content & np.isfinite(pred["points"]).all(-1)
        conf = np.where(valid, pred["conf"], np.nan).astype(np.float32)
        keep = confidence_mask(torch.from_numpy(conf), self.conf_threshold, self.conf_percentile).numpy()
        idx = np.flatnonzero(keep.reshape(-1))
        candidates = len(idx)
        if self.max_points and len(idx) > self.max_points:
            idx = np.sort(np.random.default_rng(self.seed).choice(idx, self.max_points, replace=False))
        result = {
            "extrinsic": pred["extrinsic"],
            "intrinsic": intrinsic,
            "xyz": pred["points"].reshape(-1, 3)[idx],
            "rgb": images.reshape(-1, 3)[idx],
            "confidence": pred["conf"].reshape(-1)[idx],
            "point_frame": (idx // (H * W)).astype(np.int32),  # view position; mapped to frame_idx below
        }
        stats = {"views": S, "points_valid": int(valid.sum()), "points_confident": candidates,
                 "points": len(idx), "model_seconds": round(seconds, 3), "model_hw": [H, W],
                 "chunks": len(self.chunks(S)), "clamped_fov_views": clamped,
                 "device": str(self.device),
                 "precision": self.precision, "weights_id": self.weights_id,
                 "intrinsics": "given" if known is not None else "predicted"}
        if alignment is not None:
            stats["alignment"] = alignment
        if refine is not None:
            stats["refine"] = refine
        return result, stats

    def _known_intrinsics(self, image_path: list[str] | None, orig_hw: np.ndarray | None
                          ) -> np.ndarray | None:
        """The given intrinsics of the scene's views (None when none were given): ``intrinsics`` is
        ``{"path", "default": 3x3 | None, "size": [w, h] | None, "by_path": {real path: 3x3}}``."""
        known = self.intrinsics
        if not known or image_path is None:
            return None
        out = []
        for i, path in enumerate(image_path):
            K = known.get("default") or known.get("by_path", {}).get(os.path.realpath(path))
            if K is None:
                raise InputError(f"{known['path']}: image_path {path} is not listed")
            size = known.get("size")
            if size and orig_hw is not None and [int(orig_hw[i][1]), int(orig_hw[i][0])] != list(size):
                raise InputError(f"{known['path']} is for {size[0]}x{size[1]} images; {path} is "
                                 f"{orig_hw[i][1]}x{orig_hw[i][0]}")
            out.append(K)
        return np.asarray(out, np.float64)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(batch["scene"]) != 1:
            raise ValueError("SceneReconstructor takes one scene per batch (map_batches(batch_size=1))")
        with measure() as cost:
            row = self._reconstruct_row(batch)
        costs = {k: np.asarray(batch[k]) for k in ("load_cpu_s", "load_wall_s", "load_done_at") if k in batch}
        return {**row, **costs, **cost_columns("model", 1, cost), **self.start.columns("model", 1)}

    def _reconstruct_row(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scene = str(batch["scene"][0])
        errors = json.loads(str(batch["errors"][0]))
        images = np.asarray(batch["images"][0])
        frame_idx = np.asarray(batch["frame_idx"][0], np.int64)
        image_path = json.loads(str(batch["image_path"][0]))
        orig_hw = np.asarray(batch["orig_hw"][0], np.int64).reshape(-1, 2)
        status = "ok"
        result = {"extrinsic": np.zeros((0, 3, 4)), "intrinsic": np.zeros((0, 3, 3)),
                  "xyz": np.zeros((0, 3), np.float32), "rgb": np.zeros((0, 3), np.uint8),
                  "confidence": np.zeros(0, np.float32), "point_frame": np.zeros(0, np.int32)}
        stats: dict = {"views": 0, "points": 0, "weights_id": self.weights_id}
        if len(images) == 0:
            status = "failed"
            if not any(e.get("path") == "" for e in errors):  # no scene-level reason given yet
                message = ("no image of the scene could be used (see its other errors)" if errors
                           else "the scene has no images")
                errors.append({"path": "", "stage": "load",
                               "error_type": "NoUsableImages", "message": message})
        else:
            try:
                result, stats = self.reconstruct(
                    images, np.asarray(batch["scale_xy"][0], np.float64).reshape(-1, 2),
                    np.asarray(batch["offset_xy"][0], np.float64).reshape(-1, 2),
                    np.asarray(batch["content_hw"][0], np.int64).reshape(-1, 2), orig_hw, image_path)
            except (InputError, torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as e:
                if isinstance(e, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                log.warning("scene %s failed: %s", scene, e)
                status = "failed"
                errors.append({"path": "", "stage": "reconstruct",
                               "error_type": type(e).__name__, "message": one_line(e)})
        views = len(result["extrinsic"])
        stats["skipped_views"] = int(batch["skipped"][0]) if "skipped" in batch else 0
        return {
            "scene": np.asarray([scene], dtype=object),
            "status": np.asarray([status], dtype=object),
            "frame_idx": frame_idx[None, :views],
            "image_path": np.asarray([json.dumps(image_path[:views])], dtype=object),
            "width": orig_hw[None, :views, 1],
            "height": orig_hw[None, :views, 0],
            "extrinsic": result["extrinsic"][None],
            "intrinsic": result["intrinsic"][None],
            "xyz": result["xyz"][None],
            "rgb": result["rgb"][None],
            "confidence": result["confidence"][None],
            "point_frame": frame_idx[result["point_frame"]].astype(np.int32)[None] if views
            else np.zeros((1, 0), np.int32),
            "errors": np.asarray([json.dumps(errors)], dtype=object),
            "stats": np.asarray([json.dumps(stats)], dtype=object),
            "load_node": np.asarray(batch.get("load_node", [""]), dtype=object),
            "model_node": np.asarray([self.node_id], dtype=object),
        }

