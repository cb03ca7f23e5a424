"""Reading a reconstruction back: a finished scene's cameras and points as NumPy arrays.

    from tomeray.pipeline.reconstruction import load_scene, list_scenes, to_open3d
    cams, pts = load_scene("out/recon", "kitchen")
    cams.extrinsic  # (V, 3, 4) world->camera     pts.xyz  # (N, 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tomeray.models.pose import camera_centers
from tomeray.pipeline.reconstruction.layout import ReconLayout, matrices_from_column

__all__ = ["SceneCameras", "ScenePoints", "list_scenes", "load_scene", "load_scene_cameras",
           "load_scene_points", "to_open3d"]


@dataclass
class SceneCameras:
    """The cameras of one scene as NumPy arrays (one entry per reconstructed view)."""

    scene: str
    frame_idx: np.ndarray  # (V,) int32
    image_path: list[str]
    width: np.ndarray  # (V,) int32, of the original image
    height: np.ndarray  # (V,) int32
    extrinsic: np.ndarray  # (V, 3, 4) float64, world -> camera, OpenCV axes
    intrinsic: np.ndarray  # (V, 3, 3) float64, original image pixels

    @property
    def centers(self) -> np.ndarray:
        """Camera centres in world coordinates, (V, 3): C = -R^T t."""
        return camera_centers(self.extrinsic)


@dataclass
class ScenePoints:
    """The point cloud of one scene as NumPy arrays."""

    xyz: np.ndarray  # (N, 3) float32
    rgb: np.ndarray  # (N, 3) uint8
    confidence: np.ndarray  # (N,) float32
    frame_idx: np.ndarray  # (N,) int32


def list_scenes(root: str | Path) -> list[str]:
    """Names of the finished scenes of an output directory."""
    return sorted(ReconLayout(root).finished_scenes())


def _scene_cameras(scene: str, table: pa.Table) -> SceneCameras:
    return SceneCameras(
        scene=scene,
        frame_idx=table["frame_idx"].to_numpy().astype(np.int32),
        image_path=[str(p) for p in table["image_path"].to_pylist()],
        width=table["width"].to_numpy().astype(np.int32),
        height=table["height"].to_numpy().astype(np.int32),
        extrinsic=matrices_from_column(table["extrinsic"], 3, 4),
        intrinsic=matrices_from_column(table["intrinsic"], 3, 3),
    )


def load_scene_cameras(root: str | Path, scene: str) -> SceneCameras:
    return _scene_cameras(scene, ReconLayout(root).read_cameras(scene))


def load_scene_points(root: str | Path, scene: str) -> ScenePoints:
    t = ReconLayout(root).read_points(scene)
    xyz = np.stack([t[c].to_numpy() for c in ("x", "y", "z")], axis=1).astype(np.float32)
    rgb = np.stack([t[c].to_numpy() for c in ("r", "g", "b")], axis=1).astype(np.uint8)
    return ScenePoints(xyz, rgb, t["confidence"].to_numpy().astype(np.float32),
                       t["frame_idx"].to_numpy().astype(np.int32))


def load_scene(root: str | Path, scene: str) -> tuple[SceneCameras, ScenePoints]:
    """A finished scene's cameras and points as NumPy arrays::

        cams, pts = load_scene("out/recon", "kitchen")
        cams.extrinsic  # (V, 3, 4) world->camera     pts.xyz  # (N, 3)
    """
    return load_scene_cameras(root, scene), load_scene_points(root, scene)


def to_open3d(points: ScenePoints):
    """An ``open3d.geometry.PointCloud`` of the points (colours in [0, 1]); needs Open3D installed."""
    try:
        import open3d as o3d
    except ImportError:
        raise ImportError("Open3D is not installed: pip install open3d (or use the NumPy arrays)") from None
    cloud = o3d.geometry.PointCloud()
    cloud.points = o3d.utility.Vector3dVector(points.xyz.astype(np.float64))
    cloud.colors = o3d.utility.Vector3dVector(points.rgb.astype(np.float64) / 255.0)
    return cloud
