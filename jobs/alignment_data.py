"""Synthetic ground truth for chunk alignment and bundle adjustment (NumPy, seeded; used by
``jobs/bench_alignment.py`` and the tests).

Corridor: cameras move along x (0.1 units a view, with a small wobble in height, depth and yaw)
looking at a wall (z = 2) above a floor (y = 1, OpenCV's y points down); depth and point maps are
ray-cast exactly. A long corridor's late views see nothing of view 0.

Model calls are imitated: a chunk's outputs are the true ones in a frame of its own (a random
similarity: its own rotation, translation and scale, as every VGGT call has), plus noise on poses
and points, a share of outlier points, and a random confidence. A view that shares no content with
any other view of its call cannot be placed by the model: it gets a gross pose error (what happens
to ``split``'s anchor view in chunks far from it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tomeray.models.pose import Sim3, camera_centers

__all__ = ["BundleScene", "Corridor", "bundle_scene", "chunk_outputs", "corridor", "random_rotation"]

WALL_Z, FLOOR_Y = 2.0, 1.0


def random_rotation(rng: np.random.Generator, degrees: float) -> np.ndarray:
    """A rotation of ``degrees`` about a random axis (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _yaw(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


@dataclass
class Corridor:
    extrinsic: np.ndarray  # (V, 3, 4) world -> camera
    intrinsic: np.ndarray  # (3, 3)
    depth: np.ndarray  # (V, H, W)
    points: np.ndarray  # (V, H, W, 3) world

    @property
    def length(self) -> float:
        """Length of the camera path."""
        return float(np.linalg.norm(np.diff(camera_centers(self.extrinsic), axis=0), axis=1).sum())


def corridor(n: int, height: int = 12, width: int = 16, step: float = 0.1, seed: int = 0) -> Corridor:
    rng = np.random.default_rng(seed)
    f = 0.6 * width
    K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
    x = np.arange(n) * step
    phase = rng.uniform(0, 2 * np.pi, 3)
    centers = np.stack([x, 0.05 * np.sin(0.7 * x + phase[0]), 0.1 * np.sin(0.5 * x + phase[1])], 1)
    yaws = 8.0 * np.sin(0.4 * x + phase[2])
    R = np.stack([_yaw(a).T for a in yaws])  # world -> camera
    E = np.concatenate([R, -np.einsum("nij,nj->ni", R, centers)[..., None]], 2)
    v, u = np.mgrid[0:height, 0:width]
    rays_cam = np.stack([(u - K[0, 2]) / f, (v - K[1, 2]) / f, np.ones_like(u, float)], -1)  # z = 1
    rays = np.einsum("nji,hwj->nhwi", R, rays_cam)  # world directions, one unit of camera depth
    c = centers[:, None, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_wall = (WALL_Z - c[..., 2]) / rays[..., 2]
        t_floor = (FLOOR_Y - c[..., 1]) / rays[..., 1]
    t_wall = np.where(t_wall > 0, t_wall, np.inf)
    t_floor = np.where(t_floor > 0, t_floor, np.inf)
    depth = np.minimum(t_wall, t_floor)  # rays have camera z = 1, so the ray parameter is the depth
    return Corridor(E, K, depth, c + depth[..., None] * rays)


def _covisible(scene: Corridor, chunk: np.ndarray, min_share: float) -> np.ndarray:
    """(len(chunk),) whether each view shares >= ``min_share`` of its pixels with another view of
    the chunk (its points project inside that view's image)."""
    H, W = scene.depth.shape[1:]
    out = np.zeros(len(chunk), bool)
    for a, i in enumerate(chunk):
        pts = scene.points[i].reshape(-1, 3)
        for j in chunk:
            if j == i:
                continue
            cam = pts @ scene.extrinsic[j, :, :3].T + scene.extrinsic[j, :, 3]
            uv = cam @ scene.intrinsic.T
            uv = uv[:, :2] / uv[:, 2:]
            inside = (cam[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
            if inside.mean() >= min_share:
                out[a] = True
                break
    return out


def chunk_outputs(scene: Corridor, chunks: list[np.ndarray], seed: int = 0, outliers: float = 0.05,
                  point_noise: float = 0.005, pose_noise_deg: float = 0.1, lost_pose_deg: float = 20.0,
                  min_share: float = 0.1) -> list[dict]:
    """Imitated model outputs of every chunk (see the module docstring)."""
    rng = np.random.default_rng(seed)
    outputs = []
    for chunk in chunks:
        frame = Sim3(float(np.exp(rng.uniform(-1, 1))), random_rotation(rng, rng.uniform(0, 180)),
                     rng.normal(size=3) * 3)
        E = scene.extrinsic[chunk].copy()
        pts = scene.points[chunk].copy()
        placed = _covisible(scene, chunk, min_share) if len(chunk) > 1 else np.ones(1, bool)
        for a in range(len(chunk)):
            degrees = pose_noise_deg if placed[a] else lost_pose_deg
            dR = random_rotation(rng, degrees)
            C = camera_centers(E[a])
            C = C + rng.normal(size=3) * (0.001 if placed[a] else 0.3)
            R = dR @ E[a, :, :3]
            E[a] = np.concatenate([R, (-R @ C)[:, None]], 1)
            # the view's points follow its (possibly wrong) pose: camera coordinates stay right
            true = scene.extrinsic[chunk[a]]
            cam = np.einsum("ij,hwj->hwi", true[:, :3], pts[a]) + true[:, 3]
            pts[a] = np.einsum("ji,hwj->hwi", R, cam - E[a, :, 3])
        depth = scene.depth[chunk] * (1 + point_noise * rng.normal(size=scene.depth[chunk].shape))
        pts = pts + point_noise * scene.depth[chunk][..., None] * rng.normal(size=pts.shape)
        bad = rng.random(pts.shape[:3]) < outliers
        pts[bad] += rng.normal(size=(int(bad.sum()), 3)) * 2.0
        outputs.append({"extrinsic": frame.apply_to_extrinsics(E),
                        "intrinsic": np.repeat(scene.intrinsic[None], len(chunk), 0),
                        "depth": (frame.s * depth).astype(np.float32),
                        "points": frame.apply(pts.reshape(-1, 3)).reshape(pts.shape).astype(np.float32),
                        "conf": rng.uniform(1, 3, size=depth.shape).astype(np.float32)})
    return outputs


@dataclass
class BundleScene:
    extrinsic: np.ndarray  # (V, 3, 4) true poses
    intrinsic: np.ndarray  # (V, 3, 3)
    points: np.ndarray  # (T, 3) true points
    view: np.ndarray  # (M,) observation view
    track: np.ndarray  # (M,) observation track
    xy: np.ndarray  # (M, 2) noisy observations
    noise_rms_px: float  # RMS of the noise actually added
    width: int
    height: int


def bundle_scene(views: int = 12, points: int = 400, noise_px: float = 1.0, seed: int = 0,
                 width: int = 640, height: int = 480) -> BundleScene:
    """Cameras on an arc around a box of points, every point observed where it projects inside an
    image, with Gaussian pixel noise."""
    rng = np.random.default_rng(seed)
    K = np.array([[500.0, 0, (width - 1) / 2], [0, 500.0, (height - 1) / 2], [0, 0, 1]])
    X = rng.uniform(-1, 1, size=(points, 3))
    E = []
    for a in np.linspace(-40, 40, views):
        R = _yaw(a).T @ random_rotation(rng, 2.0)
        C = np.array([0, 0, -5.0]) @ _yaw(a).T
        E.append(np.concatenate([R, (-R @ C)[:, None]], 1))
    E = np.array(E)
    cam = np.einsum("vij,tj->vti", E[:, :, :3], X) + E[:, None, :, 3]
    uv = cam @ K.T
    uv = uv[..., :2] / uv[..., 2:]
    inside = (cam[..., 2] > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < width)
    inside &= (uv[..., 1] >= 0) & (uv[..., 1] < height)
    view, track = np.nonzero(inside)
    noise = rng.normal(size=(len(view), 2)) * noise_px
    return BundleScene(E, np.repeat(K[None], views, 0), X, view, track, uv[view, track] + noise,
                       float(np.sqrt((noise ** 2).sum(1).mean())), width, height)
