"""Reconstruction metrics (NumPy): camera pose error and point cloud distance to a reference.

Alignment. A reconstruction lives in its own frame (the first camera) and scale, so it is first
brought into the reference frame by a similarity transform ``x -> s R x + t`` estimated with
Umeyama's closed form (least squares over the camera centres of the views both sides share,
matched by image name). ``align="sim3"`` (default) estimates s, R and t; ``"se3"`` fixes s = 1
(metric predictions); ``"none"`` uses the prediction as it is. With fewer than three shared views
(or collinear centres) the centres do not fix a rotation: the first shared view's pose is then
matched exactly and the scale comes from the centres' spread (1 with a single view). The same
transform maps the predicted points before point cloud metrics.

Pose metrics, after alignment:
- ``ate_*``: absolute trajectory error, distances between aligned and reference centres (RMSE,
  mean, median), in reference units;
- ``rot_*_deg``: angle between each aligned predicted camera orientation and the reference's;
- ``rpe_trans_*`` / ``rpe_rot_*_deg``: relative pose error between consecutive views (in the
  order of the reference): the translation of each predicted relative motion (scaled by s)
  against the reference's, and the angle between the relative rotations.

Point metrics (nearest neighbours, exact, via FAISS): ``accuracy`` = mean distance from each
predicted point to the reference cloud, ``completeness`` = mean distance from each reference
point to the prediction, ``chamfer`` = their average; medians too, and precision / recall /
F-score at ``tau`` when given. Clouds larger than ``max_points`` are subsampled (seeded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tomeray.models.errors import InputError
from tomeray.models.pose import Sim3, camera_centers, rotation_angle_deg, umeyama

__all__ = [
    "Cameras",
    "estimate_alignment",
    "evaluate",
    "load_cameras",
    "load_points",
    "match_names",
    "nearest_distances",
    "point_metrics",
    "pose_metrics",
]


def _spread(points: np.ndarray) -> float:
    return float(np.sqrt(((points - points.mean(0)) ** 2).sum(1).mean()))


def estimate_alignment(pred_extrinsic: np.ndarray, ref_extrinsic: np.ndarray, align: str = "sim3") -> Sim3:
    """The transform taking predicted world coordinates into the reference's (module docstring)."""
    if align not in ("sim3", "se3", "none"):
        raise InputError(f"align must be sim3, se3 or none; got {align!r}")
    if align == "none":
        return Sim3.identity()
    P, Q = camera_centers(pred_extrinsic), camera_centers(ref_extrinsic)
    with_scale = align == "sim3"
    if len(P) >= 3:
        sv = np.linalg.svd(P - P.mean(0), compute_uv=False)
        if sv[1] > 1e-9 * max(sv[0], 1e-300):  # not collinear: the centres fix the rotation
            return umeyama(P, Q, with_scale)
    s = _spread(Q) / _spread(P) if with_scale and len(P) > 1 and _spread(P) > 0 else 1.0
    # Match view 0 exactly: R_ref0 (R x + t/s ...) -> choose R = R_ref0^T R_pred0, then t from centres.
    R = ref_extrinsic[0, :, :3].T @ pred_extrinsic[0, :, :3]
    return Sim3(s, R, Q[0] - s * R @ P[0])


def match_names(pred_names: list[str], ref_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices (pred_idx, ref_idx) of the views both sides share, in reference order: matched by the
    full name, else by file name (basename) when those are unique on both sides."""
    pred_full = {str(n): i for i, n in enumerate(pred_names)}
    pairs = [(pred_full[str(n)], j) for j, n in enumerate(ref_names) if str(n) in pred_full]
    if not pairs:
        pb = [Path(str(n)).name for n in pred_names]
        rb = [Path(str(n)).name for n in ref_names]
        if len(set(pb)) == len(pb) and len(set(rb)) == len(rb):
            index = {n: i for i, n in enumerate(pb)}
            pairs = [(index[n], j) for j, n in enumerate(rb) if n in index]
    if not pairs:
        raise InputError("no views in common between prediction and reference (matched by image name); "
                         f"prediction has e.g. {list(pred_names)[:3]}, reference {list(ref_names)[:3]}")
    p, r = zip(*pairs)
    return np.asarray(p), np.asarray(r)


def _stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    if not len(values):
        return {f"{prefix}_{k}": float("nan") for k in ("rmse", "mean", "median")}
    return {f"{prefix}_rmse": float(np.sqrt((values ** 2).mean())), f"{prefix}_mean": float(values.mean()),
            f"{prefix}_median": float(np.median(values))}


def pose_metrics(pred_extrinsic: np.ndarray, ref_extrinsic: np.ndarray, align: str = "sim3"
                 ) -> tuple[dict[str, float], Sim3]:
    """Pose errors of matched views (same order on both sides); returns (metrics, alignment)."""
    P = np.asarray(pred_extrinsic, np.float64).reshape(-1, 3, 4)
    Q = np.asarray(ref_extrinsic, np.float64).reshape(-1, 3, 4)
    if len(P) != len(Q) or not len(P):
        raise InputError(f"pose_metrics needs matched views; got {len(P)} and {len(Q)}")
    sim = estimate_alignment(P, Q, align)
    A = sim.apply_to_extrinsics(P)
    ate = np.linalg.norm(camera_centers(A) - camera_centers(Q), axis=1)
    rot = rotation_angle_deg(A[:, :, :3] @ np.swapaxes(Q[:, :, :3], 1, 2))
    # Relative motions between consecutive views: T_{i+1} T_i^{-1}.
    def relative(E):
        R, t = E[:, :, :3], E[:, :, 3]
        Rr = R[1:] @ np.swapaxes(R[:-1], 1, 2)
        return Rr, t[1:] - np.einsum("nij,nj->ni", Rr, t[:-1])

    Ra, ta = relative(A)
    Rq, tq = relative(Q)
    rpe_t = np.linalg.norm(ta - tq, axis=1)
    rpe_r = rotation_angle_deg(Ra @ np.swapaxes(Rq, 1, 2))
    metrics = {"views": len(P), **_stats("ate", ate),
               "rot_mean_deg": float(rot.mean()), "rot_median_deg": float(np.median(rot)),
               "rot_max_deg": float(rot.max()), **_stats("rpe_trans", rpe_t),
               "rpe_rot_mean_deg": float(rpe_r.mean()) if len(rpe_r) else float("nan"),
               "scale": sim.s}
    return metrics, sim


def _subsample(points: np.ndarray, max_points: int | None, seed: int) -> np.ndarray:
    if max_points and len(points) > max_points:
        idx = np.random.default_rng(seed).choice(len(points), max_points, replace=False)
        return points[np.sort(idx)]
    return points


def nearest_distances(queries: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from each query to its nearest point (exact; FAISS flat L2 in float32 around the
    queries' centroid, so large coordinates do not cost precision)."""
    import faiss

    if not len(points):
        return np.full(len(queries), np.inf)
    centre = points.mean(0)
    index = faiss.IndexFlatL2(3)
    index.add(np.ascontiguousarray(points - centre, dtype=np.float32))
    d2, _ = index.search(np.ascontiguousarray(queries - centre, dtype=np.float32), 1)
    return np.sqrt(np.maximum(d2[:, 0], 0.0)).astype(np.float64)


def point_metrics(pred: np.ndarray, ref: np.ndarray, tau: float | None = None,
                  max_points: int | None = 200_000, seed: int = 0) -> dict[str, float]:
    """Accuracy, completeness and Chamfer distance between two (N, 3) clouds (same frame)."""
    pred = _subsample(np.asarray(pred, np.float64).reshape(-1, 3), max_points, seed)
    ref = _subsample(np.asarray(ref, np.float64).reshape(-1, 3), max_points, seed)
    pred, ref = pred[np.isfinite(pred).all(1)], ref[np.isfinite(ref).all(1)]
    if not len(pred) or not len(ref):
        raise InputError(f"point metrics need points on both sides; got {len(pred)} and {len(ref)}")
    acc, comp = nearest_distances(pred, ref), nearest_distances(ref, pred)
    out = {"pred_points": len(pred), "ref_points": len(ref),
           "accuracy": float(acc.mean()), "completeness": float(comp.mean()),
           "chamfer": float((acc.mean() + comp.mean()) / 2),
           "accuracy_median": float(np.median(acc)), "completeness_median": float(np.median(comp))}
    if tau is not None:
        precision, recall = float((acc < tau).mean()), float((comp < tau).mean())
        f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        out.update({"tau": float(tau), "precision": precision, "recall": recall, "fscore": f})
    return out


# --------------------------------------------------------------------------------------- file inputs


@dataclass
class Cameras:
    """Named world-to-camera poses from any supported source."""

    names: list[str]
    extrinsic: np.ndarray  # (V, 3, 4)


def _recon_scene(root: Path, scene: str | None) -> str:
    from tomeray.pipeline.reconstruction.results import list_scenes

    scenes = list_scenes(root)
    if scene is None:
        if len(scenes) != 1:
            raise InputError(f"'{root}' holds {len(scenes)} scenes ({', '.join(scenes[:10])}); "
                             "choose one with --scene")
        return scenes[0]
    if scene not in scenes:
        raise InputError(f"scene '{scene}' is not finished in '{root}'; "
                         f"finished: {', '.join(scenes[:10]) or 'none'}")
    return scene


def load_cameras(path: str | Path, scene: str | None = None) -> Cameras:
    """Cameras from a reconstruction output directory, a COLMAP text model folder, or a cameras
    Parquet file (this project's schema; ``scene`` filters its rows)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from tomeray.pipeline.reconstruction.exports import read_colmap_text
    from tomeray.pipeline.reconstruction.results import load_scene_cameras

    path = Path(path)
    if (path / "manifest.json").is_file():
        cams = load_scene_cameras(path, _recon_scene(path, scene))
        return Cameras(cams.image_path, cams.extrinsic)
    if (path / "images.txt").is_file():
        model = read_colmap_text(path)
        return Cameras(model["names"], model["extrinsics"])
    if path.is_file() and path.suffix.lower() == ".parquet":
        from tomeray.pipeline.reconstruction.layout import matrices_from_column

        table = pq.read_table(path)
        if "extrinsic" not in table.column_names:
            raise InputError(f"{path} has no 'extrinsic' column: not a cameras table")
        if scene is not None and "scene" in table.column_names:
            table = table.filter(pc.equal(table["scene"], scene))
        elif "scene" in table.column_names and len(set(table["scene"].to_pylist())) > 1:
            raise InputError(f"{path} holds several scenes; choose one with --scene")
        if not table.num_rows:
            raise InputError(f"{path}: no cameras" + (f" for scene '{scene}'" if scene else ""))
        names = [str(n) for n in table["image_path"].to_pylist()] if "image_path" in table.column_names \
            else [str(i) for i in table["frame_idx"].to_pylist()]
        return Cameras(names, matrices_from_column(table["extrinsic"], 3, 4))
    raise InputError(f"'{path}' is not a reconstruction output, a COLMAP text model or a cameras .parquet")


def load_points(path: str | Path, scene: str | None = None) -> np.ndarray:
    """(N, 3) points from a PLY file, a points Parquet file or folder, a COLMAP text model folder
    (its points3D.txt) or a reconstruction output directory."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    from tomeray.pipeline.reconstruction.exports import read_colmap_text, read_ply

    path = Path(path)
    if (path / "manifest.json").is_file():
        from tomeray.pipeline.reconstruction.results import load_scene_points

        return load_scene_points(path, _recon_scene(path, scene)).xyz.astype(np.float64)
    if (path / "images.txt").is_file():
        return read_colmap_text(path)["xyz"]
    if path.is_file() and path.suffix.lower() == ".ply":
        v = read_ply(path)
        return np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    if path.suffix.lower() == ".parquet" or path.is_dir():
        table = ds.dataset(path, format="parquet", partitioning="hive").to_table()
        if scene is not None and "scene" in table.column_names:
            table = table.filter(pc.equal(table["scene"], scene))
        if not all(c in table.column_names for c in "xyz"):
            raise InputError(f"{path} has no x, y, z columns: not a points table")
        return np.stack([table[c].to_numpy() for c in "xyz"], axis=1).astype(np.float64)
    raise InputError(f"'{path}' is not a PLY, a points Parquet, a COLMAP model or a reconstruction output")


def evaluate(pred: str | Path, ref_cameras: str | Path | None = None, ref_points: str | Path | None = None,
             *, scene: str | None = None, ref_scene: str | None = None, pred_points: str | Path | None = None,
             align: str = "sim3", tau: float | None = None, max_points: int | None = 200_000) -> dict:
    """Pose metrics against ``ref_cameras`` and point metrics against ``ref_points`` (either may be
    omitted, not both). The alignment estimated from the cameras also maps the predicted points;
    without reference cameras the points are compared as they are."""
    if ref_cameras is None and ref_points is None:
        raise InputError("give reference cameras, a reference point cloud, or both")
    result: dict = {"align": align if ref_cameras is not None else "none"}
    sim = Sim3.identity()
    if ref_cameras is not None:
        p, r = load_cameras(pred, scene), load_cameras(ref_cameras, ref_scene)
        pi, ri = match_names(p.names, r.names)
        metrics, sim = pose_metrics(p.extrinsic[pi], r.extrinsic[ri], align)
        result["pose"] = {**metrics, "pred_views": len(p.names), "ref_views": len(r.names)}
    if ref_points is not None:
        points = load_points(pred_points or pred, scene)
        result["points"] = point_metrics(sim.apply(points), load_points(ref_points, ref_scene), tau=tau,
                                         max_points=max_points)
    result["alignment"] = {"scale": sim.s, "rotation": sim.R.tolist(), "translation": sim.t.tolist()}
    return result
