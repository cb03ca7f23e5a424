"""Bundle adjustment of a reconstruction's cameras with pycolmap: tracks (pixel observations of
the same 3D point in several views) are triangulated through the given cameras, then one global
bundle adjustment refines poses and points (intrinsics too, unless held fixed) under a robust loss.

Conventions are this project's: extrinsics world-to-camera [R | t] (V, 3, 4) in OpenCV axes,
intrinsics (V, 3, 3) and observations in OpenCV pixels (pixel centres at integers). COLMAP puts
pixel centres at +0.5; ``colmap_reconstruction`` shifts on the way in and ``cameras_from`` on the
way out. The gauge (7 degrees of freedom: frame and scale) is held by the first two cameras'
poses, so the result stays in the input's world frame and close to its scale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tomeray.models.errors import InputError

__all__ = ["BundleResult", "Tracks", "bundle_adjust", "colmap_reconstruction", "reprojection_errors",
           "triangulate"]

LOSSES = ("trivial", "huber", "soft_l1", "cauchy")


@dataclass
class Tracks:
    """Observations: observation i sees track ``track[i]`` in view ``view[i]`` at pixel ``xy[i]``."""

    view: np.ndarray  # (M,) int
    track: np.ndarray  # (M,) int, 0..T-1
    xy: np.ndarray  # (M, 2) float, OpenCV pixels of the original image

    def __post_init__(self):
        self.view = np.asarray(self.view, np.int64).reshape(-1)
        self.track = np.asarray(self.track, np.int64).reshape(-1)
        self.xy = np.asarray(self.xy, np.float64).reshape(-1, 2)
        if not len(self.view) == len(self.track) == len(self.xy):
            raise InputError("tracks: view, track and xy must have one entry per observation")

    @property
    def count(self) -> int:
        return int(self.track.max()) + 1 if len(self.track) else 0

    def subset(self, keep_tracks: np.ndarray) -> Tracks:
        """Only the tracks where ``keep_tracks`` (T,) is True, renumbered 0..T'-1."""
        new_id = np.cumsum(keep_tracks) - 1
        sel = keep_tracks[self.track]
        return Tracks(self.view[sel], new_id[self.track[sel]], self.xy[sel])


def _project(xyz: np.ndarray, E: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = np.einsum("nij,nj->ni", E[:, :, :3], xyz) + E[:, :, 3]
    pix = np.einsum("nij,nj->ni", K, cam)
    with np.errstate(divide="ignore", invalid="ignore"):
        return pix[:, :2] / pix[:, 2:], cam[:, 2]


def reprojection_errors(tracks: Tracks, xyz: np.ndarray, extrinsics: np.ndarray,
                        intrinsics: np.ndarray) -> np.ndarray:
    """Pixel distance of every observation to its point's projection (inf behind the camera)."""
    uv, z = _project(xyz[tracks.track], extrinsics[tracks.view], intrinsics[tracks.view])
    err = np.linalg.norm(uv - tracks.xy, axis=1)
    return np.where((z > 0) & np.isfinite(err), err, np.inf)


def triangulate(tracks: Tracks, extrinsics: np.ndarray, intrinsics: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Linear (DLT) triangulation of every track through the cameras: points (T, 3) and a mask of
    the tracks seen in >= 2 views whose point lies in front of every camera that sees it."""
    E, K = np.asarray(extrinsics, np.float64), np.asarray(intrinsics, np.float64)
    P = K @ E  # (V, 3, 4)
    T = tracks.count
    Pv = P[tracks.view]
    rows = np.concatenate([tracks.xy[:, :1] * Pv[:, 2] - Pv[:, 0], tracks.xy[:, 1:] * Pv[:, 2] - Pv[:, 1]])
    # normalise each row so that every observation weighs the same in the SVD
    rows /= np.linalg.norm(rows, axis=1, keepdims=True) + 1e-300
    owner = np.concatenate([tracks.track, tracks.track])
    order = np.argsort(owner, kind="stable")
    starts = np.searchsorted(owner[order], np.arange(T + 1))
    xyz = np.full((T, 3), np.nan)
    for t in range(T):
        A = rows[order[starts[t]:starts[t + 1]]]
        if len(A) < 4:
            continue
        X = np.linalg.svd(A)[2][-1]
        if abs(X[3]) > 1e-12:
            xyz[t] = X[:3] / X[3]
    views_per_track = np.bincount(tracks.track, minlength=T)
    _, z = _project(np.nan_to_num(xyz)[tracks.track], E[tracks.view], K[tracks.view])
    behind = np.bincount(tracks.track, weights=(z <= 0).astype(float), minlength=T) > 0
    return xyz, (views_per_track >= 2) & np.isfinite(xyz).all(1) & ~behind


def colmap_reconstruction(extrinsics, intrinsics, widths, heights, names: list[str], xyz=None, tracks=None,
                          rgb=None, camera_model: str = "PINHOLE", shared_camera: bool = False):
    """A ``pycolmap.Reconstruction`` of the cameras (one per view, or one shared), their images and,
    when given, points with their tracks' observations."""
    import pycolmap

    E = np.asarray(extrinsics, np.float64)
    K = np.asarray(intrinsics, np.float64)
    V = len(E)
    widths, heights = np.asarray(widths).reshape(V), np.asarray(heights).reshape(V)
    if camera_model not in ("PINHOLE", "SIMPLE_PINHOLE"):
        raise InputError(f"camera model must be PINHOLE or SIMPLE_PINHOLE; got {camera_model!r}")
    if shared_camera and (len(set(widths.tolist())) > 1 or len(set(heights.tolist())) > 1):
        raise InputError("one shared camera needs images of one size; these differ "
                         "(export.shared_camera=false)")
    rec = pycolmap.Reconstruction()
    cams = [K.mean(0)] if shared_camera else list(K)
    for c, k in enumerate(cams):
        fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5
        params = [fx, fy, cx, cy] if camera_model == "PINHOLE" else [(fx + fy) / 2, cx, cy]
        camera = pycolmap.Camera(model=camera_model, width=int(widths[c]), height=int(heights[c]),
                                 params=params, camera_id=c + 1)
        rec.add_camera_with_trivial_rig(camera)
    keypoints: list[list] = [[] for _ in range(V)]
    point2d_of = None
    if tracks is not None:
        point2d_of = np.zeros(len(tracks.view), np.int64)
        for i, (v, xy) in enumerate(zip(tracks.view, tracks.xy)):
            point2d_of[i] = len(keypoints[v])
            keypoints[v].append(xy + 0.5)
    for v in range(V):
        pts = np.asarray(keypoints[v], np.float64).reshape(-1, 2)
        image = pycolmap.Image(name=str(names[v]), keypoints=pts, camera_id=1 if shared_camera else v + 1,
                               image_id=v + 1)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(E[v, :, :3]), E[v, :, 3])
        rec.add_image_with_trivial_frame(image, pose)
    point_ids = np.zeros(0, np.int64)
    if xyz is not None and tracks is not None:
        colours = np.zeros((len(xyz), 3), np.uint8) if rgb is None else np.asarray(rgb, np.uint8)
        order = np.argsort(tracks.track, kind="stable")
        starts = np.searchsorted(tracks.track[order], np.arange(len(xyz) + 1))
        point_ids = np.zeros(len(xyz), np.int64)
        for t in range(len(xyz)):
            track = pycolmap.Track()
            for i in order[starts[t]:starts[t + 1]]:
                track.add_element(int(tracks.view[i]) + 1, int(point2d_of[i]))
            point_ids[t] = rec.add_point3D(np.asarray(xyz[t], np.float64), track, colours[t])
    return rec, point_ids


def cameras_from(rec, V: int) -> tuple[np.ndarray, np.ndarray]:
    """Extrinsics (V, 3, 4) and OpenCV intrinsics (V, 3, 3) of images 1..V of a reconstruction."""
    E, K = np.zeros((V, 3, 4)), np.zeros((V, 3, 3))
    for v in range(V):
        image = rec.image(v + 1)
        E[v] = image.cam_from_world().matrix()
        k = image.camera.calibration_matrix()
        K[v] = k - np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])
    return E, K


@dataclass
class BundleResult:
    extrinsic: np.ndarray  # (V, 3, 4)
    intrinsic: np.ndarray  # (V, 3, 3)
    xyz: np.ndarray  # (T', 3) the adjusted points of the kept tracks
    tracks: Tracks  # the kept tracks (renumbered)
    record: dict = field(default_factory=dict)


def bundle_adjust(extrinsics: np.ndarray, intrinsics: np.ndarray, widths, heights, tracks: Tracks,
                  refine_intrinsics: bool = False, loss: str = "huber", loss_scale_px: float = 4.0,
                  max_iterations: int = 100, threads: int = 1, outlier_px: float = 16.0) -> BundleResult:
    """Triangulate ``tracks`` through the cameras and refine them in one global bundle adjustment.
    The record holds tracks, observations, mean reprojection error (px) before and after,
    iterations, seconds and the solver's verdict; tracks with an observation over ``outlier_px``
    after the adjustment are counted as outliers. Raises ``InputError`` when too little is left
    to adjust (fewer than 2 views or 3 tracks triangulated)."""
    started = time.perf_counter()
    if loss not in LOSSES:
        raise InputError(f"refine.loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    E, K = np.asarray(extrinsics, np.float64), np.asarray(intrinsics, np.float64)
    V = len(E)
    xyz, ok = triangulate(tracks, E, K)
    kept = tracks.subset(ok)
    xyz = xyz[ok]
    if len(xyz) < 3 or len(np.unique(kept.view)) < 2:
        raise InputError(f"too few tracks to adjust: {len(xyz)} triangulated in "
                         f"{len(np.unique(kept.view))} view(s)")
    before = reprojection_errors(kept, xyz, E, K)
    rec, _ = colmap_reconstruction(E, K, widths, heights, [f"{v}" for v in range(V)], xyz, kept)
    # A robust loss with a pixel-sized scale stalls when the start is tens of pixels off (every
    # residual looks like an outlier): a first pass scales the loss to the start's median error,
    # a second one uses ``loss_scale_px``.
    iterations, summary = 0, None
    for scale in dict.fromkeys([max(loss_scale_px, 3.0 * float(np.median(before))), loss_scale_px]):
        summary = _solve(rec, V, refine_intrinsics, loss, scale, max_iterations, threads)
        iterations += _iterations(summary)
    E2, K2 = cameras_from(rec, V)
    xyz2 = np.array([rec.point3D(int(i)).xyz for i in sorted(rec.point3D_ids())]).reshape(-1, 3)
    after = reprojection_errors(kept, xyz2, E2, K2)
    # Points the adjustment could not fit (often near a camera's plane, with huge errors) are
    # counted apart so that the mean over the others stays meaningful.
    worst = np.zeros(len(xyz2))
    np.maximum.at(worst, kept.track, np.nan_to_num(after, posinf=1e12))
    inlier_obs = worst[kept.track] <= outlier_px
    record = {"tracks": len(xyz), "observations": len(kept.view), "views": int(len(np.unique(kept.view))),
              "reproj_px_before": round(float(np.mean(np.minimum(before, 1e9))), 4),
              "reproj_px_after": round(float(np.mean(np.minimum(after, 1e9))), 4),
              "median_px_before": round(float(np.median(before)), 4),
              "median_px_after": round(float(np.median(after)), 4),
              "reproj_px_after_inliers": (round(float(np.mean(after[inlier_obs])), 4) if inlier_obs.any()
                                          else None),
              "outlier_tracks": int((worst > outlier_px).sum()), "outlier_px": outlier_px,
              "iterations": iterations, "usable": bool(summary.is_solution_usable()),
              "termination": str(summary.termination_type).split(".")[-1], "loss": loss,
              "intrinsics": "refined" if refine_intrinsics else "fixed",
              "seconds": round(time.perf_counter() - started, 3)}
    return BundleResult(E2, K2, xyz2, kept, record)


def _solve(rec, V: int, refine_intrinsics: bool, loss: str, scale: float, max_iterations: int, threads: int):
    import pycolmap

    options = pycolmap.BundleAdjustmentOptions()
    options.refine_focal_length = refine_intrinsics
    options.refine_principal_point = False
    options.refine_extra_params = False
    options.print_summary = False
    options.ceres.loss_function_type = getattr(pycolmap.LossFunctionType, loss.upper())
    options.ceres.loss_function_scale = float(scale)
    options.ceres.solver_options.max_num_iterations = int(max_iterations)
    options.ceres.solver_options.num_threads = int(threads)
    config = pycolmap.BundleAdjustmentConfig()
    for v in range(V):
        config.add_image(v + 1)
    if not refine_intrinsics:
        for camera_id in rec.cameras:
            config.set_constant_cam_intrinsics(camera_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    return pycolmap.create_default_bundle_adjuster(options, config, rec).solve()


def _iterations(summary) -> int:
    as_dict = summary.todict() if hasattr(summary, "todict") else {}
    for key in ("num_iterations", "iterations"):
        if key in as_dict:
            value = as_dict[key]
            return int(len(value) if isinstance(value, list) else value)
    report = summary.brief_report() if hasattr(summary, "brief_report") else ""
    words = str(report).replace(",", " ").split()
    for i, w in enumerate(words):
        if w.lower().startswith("iterations") and i + 1 < len(words) and words[i + 1].lstrip(":").isdigit():
            return int(words[i + 1].lstrip(":"))
    return -1
