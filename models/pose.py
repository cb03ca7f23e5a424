"""Camera-pose geometry in NumPy (float64): similarity transforms, camera centres, rotation angles,
quaternions. Conventions: extrinsics are world-to-camera [R | t] (..., 3, 4) in OpenCV axes;
quaternions are qw, qx, qy, qz (COLMAP's order). The PyTorch geometry of VGGT's outputs is in
``models.vggt.geometry``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tomeray.models.errors import InputError

__all__ = ["RobustFit", "Sim3", "camera_centers", "quaternion_to_rotation", "robust_sim3",
           "rotation_angle_deg", "rotation_to_quaternion", "umeyama"]


@dataclass(frozen=True)
class Sim3:
    """x -> s R x + t."""

    s: float
    R: np.ndarray
    t: np.ndarray

    @staticmethod
    def identity() -> Sim3:
        return Sim3(1.0, np.eye(3), np.zeros(3))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self.s * np.asarray(x, np.float64) @ self.R.T + self.t

    def apply_to_extrinsics(self, extrinsic: np.ndarray) -> np.ndarray:
        """World-to-camera [R_c | t_c] of the old frame -> the same cameras in the new frame
        (in the new scale): R_c' = R_c R^T, t_c' = s t_c - R_c R^T t."""
        E = np.asarray(extrinsic, np.float64)
        Rc, tc = E[..., :3], E[..., 3]
        Rn = Rc @ self.R.T
        tn = self.s * tc - np.einsum("...ij,j->...i", Rn, self.t)
        return np.concatenate([Rn, tn[..., None]], axis=-1)

    def compose(self, other: Sim3) -> Sim3:
        """self after other: x -> self(other(x))."""
        return Sim3(self.s * other.s, self.R @ other.R, self.s * self.R @ other.t + self.t)


def camera_centers(extrinsic: np.ndarray) -> np.ndarray:
    """World-to-camera (..., 3, 4) -> camera centres (..., 3): C = -R^T t."""
    E = np.asarray(extrinsic, np.float64)
    return -np.einsum("...ji,...j->...i", E[..., :3], E[..., 3])


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Angle of rotation matrices (..., 3, 3) in degrees (numerically safe near 0 and 180)."""
    R = np.asarray(R, np.float64)
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1) / 2
    skew = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                     R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = np.linalg.norm(skew, axis=-1) / 2
    return np.degrees(np.arctan2(sin, cos))


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True,
            weights: np.ndarray | None = None) -> Sim3:
    """Least-squares similarity with dst ~ s R src + t (Umeyama 1991), optionally weighted per point.
    Needs >= 3 non-collinear points (of positive weight) for a unique rotation."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) == 0:
        raise InputError(f"umeyama needs two (N, 3) arrays of equal shape; got {src.shape}, {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if len(w) != len(src) or not np.all(w >= 0) or w.sum() <= 0:
        raise InputError("umeyama weights must be one non-negative value per point, not all zero")
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    R = U @ S @ Vt
    var_s = w @ (xs ** 2).sum(1)
    s = float(np.trace(np.diag(D) @ S) / var_s) if with_scale and var_s > 0 else 1.0
    return Sim3(s, R, mu_d - s * R @ mu_s)


@dataclass(frozen=True)
class RobustFit:
    sim: Sim3
    inlier_ratio: float  # share of the points whose residual is under the Cauchy scale at the end
    median_residual: float  # in dst units
    iterations: int


def robust_sim3(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, iterations: int = 20,
                scale_floor: float = 1e-9) -> RobustFit:
    """Similarity dst ~ s R src + t robust to outliers: weighted Umeyama inside iteratively reweighted
    least squares with Cauchy weights 1 / (1 + (r / c)^2), c = 2.5 x the median residual's robust
    spread (MAD-based, so a minority of outliers does not inflate it). ``weights`` (confidence)
    multiply the robust ones."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    prior = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    w = prior.copy()
    sim, c, r = Sim3.identity(), 0.0, np.zeros(len(src))
    done = 0
    for done in range(1, iterations + 1):
        new = umeyama(src, dst, weights=w)
        r = np.linalg.norm(new.apply(src) - dst, axis=1)
        c = max(2.5 * 1.4826 * float(np.median(r)), scale_floor)
        w = prior / (1.0 + (r / c) ** 2)
        converged = (done > 1 and abs(new.s - sim.s) < 1e-9 * max(new.s, 1)
                     and np.allclose(new.t, sim.t, atol=1e-9 * c))
        sim = new
        if converged:
            break
    return RobustFit(sim, float(np.mean(r < c)), float(np.median(r)), done)


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) as qw, qx, qy, qz with qw >= 0
    (the best conditioned of the four classic formulas, so 180 degree turns are exact)."""
    R = np.asarray(R, np.float64)
    m = R.reshape(-1, 3, 3)
    q = np.empty((len(m), 4))
    for i, r in enumerate(m):
        tr = np.trace(r)
        cands = np.array([1 + tr, 1 + 2 * r[0, 0] - tr, 1 + 2 * r[1, 1] - tr, 1 + 2 * r[2, 2] - tr])
        k = int(np.argmax(cands))
        s = 2.0 * np.sqrt(max(cands[k], 1e-300))
        if k == 0:
            v = [s / 4, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
        elif k == 1:
            v = [(r[2, 1] - r[1, 2]) / s, s / 4, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
        elif k == 2:
            v = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, s / 4, (r[1, 2] + r[2, 1]) / s]
        else:
            v = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, s / 4]
        v = np.asarray(v) / np.linalg.norm(v)
        q[i] = -v if v[0] < 0 else v
    return q.reshape(*R.shape[:-2], 4)


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) as qw, qx, qy, qz (normalised here) -> rotation matrices (..., 3, 3)."""
    q = np.asarray(q, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1).reshape(*q.shape[:-1], 3, 3)
