"""Bundle adjustment of a reconstructed scene's cameras, run by the reconstruction actor right after
the model (it has the views and, for VGGT tracks, the model).

Tracks come from OpenCV SIFT features (``models.tracks``) or from VGGT's track head (query points
on the first view of every model call, kept where the head calls them visible and confident);
either way in the model-input pixels, mapped to the original images' pixels, where the cameras'
intrinsics live. ``models.bundle_adjustment`` triangulates and adjusts. The refinement is kept only
when the solver calls its solution usable, the median reprojection error went down and most tracks
fit; otherwise the scene keeps its unrefined cameras and the record says why.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from tomeray.models.bundle_adjustment import Tracks, bundle_adjust
from tomeray.models.device import autocast
from tomeray.models.errors import InputError, one_line
from tomeray.models.tracks import feature_tracks

__all__ = ["refine_cameras", "to_original_pixels", "vggt_tracks"]

log = logging.getLogger(__name__)


def to_original_pixels(xy: np.ndarray, view: np.ndarray, scale_xy: np.ndarray,
                       offset_xy: np.ndarray) -> np.ndarray:
    """Model-input pixels of views ``view`` -> original-image pixels (the inverse of the
    preprocessing's x -> (x + 0.5) * scale - 0.5 + offset)."""
    return (xy - offset_xy[view] + 0.5) / scale_xy[view] - 0.5


@torch.inference_mode()
def vggt_tracks(model, images: np.ndarray, chunks: list[np.ndarray], device, precision: str,
                max_points: int = 512, min_score: float = 0.25) -> tuple[Tracks, dict]:
    """Tracks from the model's track head: corners (Shi-Tomasi) of each call's first view as
    queries, followed through the call's views; observations kept where visibility x confidence
    >= ``min_score``."""
    import cv2

    views, ids, xys = [], [], []
    next_id = 0
    for chunk in chunks:
        gray = cv2.cvtColor(np.ascontiguousarray(images[chunk[0]]), cv2.COLOR_RGB2GRAY)
        corners = cv2.goodFeaturesToTrack(gray, max_points, 0.01, 8)
        if corners is None:
            continue
        query = torch.from_numpy(corners.reshape(-1, 2).astype(np.float32))
        batch = torch.from_numpy(np.array(images[chunk], copy=True)).permute(0, 3, 1, 2)
        batch = batch.to(device).float().div_(255)
        with autocast(device, precision):
            out = model(batch, query_points=query.to(device))
        track = out["track"][0].float().cpu().numpy()  # (S, N, 2)
        score = (out["vis"][0] * out["conf"][0]).float().cpu().numpy()  # (S, N)
        s, n = np.nonzero(score >= min_score)
        views.append(chunk[s])
        ids.append(next_id + n)
        xys.append(track[s, n])
        next_id += len(query)
    if not views:
        return Tracks(np.zeros(0), np.zeros(0), np.zeros((0, 2))), {"tracks": 0}
    view, track_id, xy = np.concatenate(views), np.concatenate(ids), np.concatenate(xys)
    _, track_id = np.unique(track_id, return_inverse=True)
    tracks = Tracks(view, track_id, xy)
    return tracks, {"tracks": tracks.count, "observations": len(view)}


def refine_cameras(images: np.ndarray, content: np.ndarray, extrinsic: np.ndarray, intrinsic: np.ndarray,
                   scale_xy: np.ndarray, offset_xy: np.ndarray, orig_hw: np.ndarray, options: dict,
                   fixed_intrinsics: bool, model=None, chunks=None, device=None, precision: str = "fp32"
                   ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Bundle-adjusted (extrinsic, original-pixel intrinsic) of a scene and the ``refine`` record;
    the inputs unchanged (record ``applied: false`` with a ``reason``) when refinement fails or
    does not improve the reprojection error."""
    record: dict = {"tracks_from": options.get("tracks", "features"), "applied": False}
    started = time.perf_counter()
    try:
        if record["tracks_from"] == "vggt":
            tracks, counts = vggt_tracks(model, images, chunks, device, precision,
                                         int(options.get("max_query_points", 512)))
        else:
            tracks, counts = feature_tracks(images, content,
                                            max_features=int(options.get("max_features", 2048)),
                                            window=int(options.get("match_window", 0)))
        record["matching"] = counts
        record["tracks_seconds"] = round(time.perf_counter() - started, 3)
        xy = to_original_pixels(tracks.xy, tracks.view, scale_xy, offset_xy)
        tracks = Tracks(tracks.view, tracks.track, xy)
        free_intrinsics = bool(options.get("refine_intrinsics")) and not fixed_intrinsics
        result = bundle_adjust(extrinsic, intrinsic, orig_hw[:, 1], orig_hw[:, 0], tracks,
                               refine_intrinsics=free_intrinsics,
                               loss=options.get("loss", "huber"),
                               loss_scale_px=float(options.get("loss_scale_px", 4.0)),
                               max_iterations=int(options.get("max_iterations", 100)))
    except (InputError, RuntimeError, ValueError, np.linalg.LinAlgError) as e:
        log.warning("bundle adjustment failed, the scene keeps its unrefined cameras: %s", e)
        return extrinsic, intrinsic, {**record, "reason": f"{type(e).__name__}: {one_line(e)}"}
    record.update(result.record)
    if not result.record["usable"]:
        record["reason"] = f"the solver's solution is not usable ({result.record['termination']})"
    elif not np.isfinite(result.extrinsic).all() or not np.isfinite(result.intrinsic).all():
        record["reason"] = "the solution holds non-finite values"
    elif not result.record["median_px_after"] < result.record["median_px_before"]:
        record["reason"] = "the median reprojection error did not go down"
    elif result.record["outlier_tracks"] > result.record["tracks"] // 2:
        record["reason"] = f"most tracks stay over {result.record['outlier_px']} px after the adjustment"
    else:
        record["applied"] = True
        return result.extrinsic, result.intrinsic, record
    log.warning("bundle adjustment not applied: %s", record["reason"])
    return extrinsic, intrinsic, record
