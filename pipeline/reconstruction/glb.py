"""GLB export (``export.glb=true`` -> ``glb/<scene>.glb``): the scene as one binary glTF file, the
format VGGT's demo shares and any 3D viewer opens. Written with trimesh.

The file holds the points as a point primitive with vertex colours (node ``points``) and one line
frustum per view (nodes ``camera_<frame_idx>``: apex at the camera centre, the image corners at a
depth of ``FRUSTUM_SCALE`` times the scene's extent). Vertices stay in the reconstruction's world
frame (OpenCV axes, as in ``cameras.parquet``); every node carries the OpenCV -> glTF axis flip
(y and z negated), so viewers show the scene upright and the vertices read back unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tomeray.pipeline.core.atomic import atomic_write_with
from tomeray.pipeline.reconstruction.layout import ReconLayout, scene_key
from tomeray.pipeline.reconstruction.results import SceneCameras, ScenePoints

__all__ = ["OPENCV_TO_GLTF", "frustum_segments", "glb_path", "write_glb"]

FRUSTUM_SCALE = 0.05
OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0, 1.0])


def glb_path(layout: ReconLayout, scene: str) -> Path:
    return layout.root / "glb" / f"{scene_key(scene)}.glb"


def frustum_segments(extrinsic: np.ndarray, intrinsic: np.ndarray, width: int, height: int,
                     depth: float) -> np.ndarray:
    """(8, 2, 3) line segments of one camera's frustum in world coordinates: apex to each image
    corner, and the image rectangle, at ``depth`` along the optical axis."""
    R, t = extrinsic[:, :3], extrinsic[:, 3]
    pixels = np.array([[0, 0, 1], [width, 0, 1], [width, height, 1], [0, height, 1]], np.float64)
    corners_cam = (np.linalg.inv(intrinsic) @ pixels.T).T * depth
    corners = (corners_cam - t) @ R  # X_world = R^T (X_cam - t)
    apex = -R.T @ t
    edges = [(apex, c) for c in corners] + [(corners[i], corners[(i + 1) % 4]) for i in range(4)]
    return np.asarray(edges, np.float64)


def _extent(xyz: np.ndarray, centers: np.ndarray) -> float:
    both = np.concatenate([xyz.reshape(-1, 3), centers.reshape(-1, 3)])
    if not len(both):
        return 1.0
    lo, hi = np.percentile(both, 2, axis=0), np.percentile(both, 98, axis=0)
    return float(np.linalg.norm(hi - lo)) or 1.0


def write_glb(path: str | os.PathLike, cams: SceneCameras, pts: ScenePoints) -> Path:
    """Write the scene's GLB (atomically)."""
    import trimesh
    from trimesh.path.entities import Line

    world = trimesh.Scene()
    colours = np.column_stack([pts.rgb, np.full(len(pts.rgb), 255, np.uint8)])
    world.add_geometry(trimesh.PointCloud(pts.xyz.astype(np.float64), colors=colours), node_name="points",
                       geom_name="points", transform=OPENCV_TO_GLTF)
    depth = FRUSTUM_SCALE * _extent(pts.xyz, cams.centers)
    for f, E, K, w, h in zip(cams.frame_idx, cams.extrinsic, cams.intrinsic, cams.width, cams.height):
        segments = frustum_segments(E, K, int(w), int(h), depth).reshape(-1, 3)
        lines = trimesh.path.Path3D(entities=[Line([i, i + 1]) for i in range(0, len(segments), 2)],
                                    vertices=segments, process=False)
        world.add_geometry(lines, node_name=f"camera_{int(f)}", geom_name=f"camera_{int(f)}",
                           transform=OPENCV_TO_GLTF)
    data = world.export(file_type="glb")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write_with(path, write)
