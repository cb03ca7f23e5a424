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
from pathlib import Path

import numpy as np
from tomeray.models.pose import Sim3, camera_centers, rotation_angle_deg
from tomeray.pipeline.reconstruction.evaluation import pose_metrics

__all__ = ["CHESS_VIEWS", "BundleScene", "Corridor", "bundle_scene", "chessboard_reference", "chunk_outputs",
           "corridor", "perturb", "pose_errors", "random_rotation"]

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


def perturb(E: np.ndarray, degrees: float, shift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = E.copy()
    for v in range(len(E)):
        direction = rng.normal(size=3)
        out[v, :, :3] = random_rotation(rng, degrees) @ E[v, :, :3]
        out[v, :, 3] = E[v, :, 3] + shift * direction / np.linalg.norm(direction)
    return out


def pose_errors(E: np.ndarray, ref: np.ndarray, sim: Sim3 | None = None) -> tuple[float, float]:
    """Largest camera-centre distance and rotation angle after the gauge similarity."""
    sim = sim or pose_metrics(E, ref)[1]
    aligned = sim.apply_to_extrinsics(E)
    dist = np.linalg.norm(camera_centers(aligned) - camera_centers(ref), axis=1)
    rot = rotation_angle_deg(aligned[:, :, :3] @ np.swapaxes(ref[:, :, :3], 1, 2))
    return float(dist.max()), float(rot.max())


CHESS_VIEWS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)  # opencv-doc left01..14.jpg (no 10)


def chessboard_reference(data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The opencv-doc chessboard views as a real reference: the calibrated matrix K of
    ``left_intrinsics.yml``, each view's pose (V, 3, 4) in mm from PnP on the known board (9x6
    corners, 25 mm squares) and the sub-pixel corners (V, 54, 2), undistorted with the file's
    coefficients so that the pinhole K alone describes them."""
    import cv2

    fs = cv2.FileStorage(str(Path(data) / "left_intrinsics.yml"), cv2.FILE_STORAGE_READ)
    K, dist = fs.getNode("camera_matrix").mat(), fs.getNode("distortion_coefficients").mat()
    board = np.zeros((54, 3))
    board[:, :2] = np.mgrid[0:9, 0:6].T.reshape(-1, 2) * 25.0
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-3)
    poses, corners = [], []
    for i in CHESS_VIEWS:
        gray = cv2.imread(str(Path(data) / f"left{i:02d}.jpg"), cv2.IMREAD_GRAYSCALE)
        found, c = cv2.findChessboardCorners(gray, (9, 6))
        if not found:
            raise RuntimeError(f"no chessboard found in left{i:02d}.jpg")
        c = cv2.undistortPoints(cv2.cornerSubPix(gray, c, (11, 11), (-1, -1), criteria), K, dist, P=K)
        _, rvec, tvec = cv2.solvePnP(board, c.reshape(-1, 2), K, None)
        poses.append(np.hstack([cv2.Rodrigues(rvec)[0], tvec]))
        corners.append(c.reshape(-1, 2))
    return K, np.array(poses), np.array(corners)


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
