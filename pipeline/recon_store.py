"""The on-disk layout of a reconstruction run, and reading it back.

```
<out>/
  manifest.json                     the last write of every run: model, weights, pinned settings, counts
  config.yaml                       the resolved configuration of the latest run
  cameras.parquet                   all finished scenes (consolidated from cameras/ at the end of a run)
  errors.parquet                    all current errors (consolidated from errors/)
  cameras/scene=<key>.parquet       one part per finished scene
  points/scene=<key>/part-0.parquet one part per finished scene (Hive partitioning on ``scene``)
  errors/scene=<key>.parquet        the errors of a scene's latest attempt (unreadable images, ...)
  errors/inputs.parquet             errors not tied to a scene (inputs that name nothing), latest run
  scenes/scene=<key>.json           a scene's completion record, written after all its files
  ply/<key>.ply                     optional export (binary little-endian PLY)
  colmap/<key>/{cameras,images,points3D}.txt   optional export (COLMAP text model)
```

``<key>`` is the scene name percent-encoded (``urllib.parse.quote(name, safe="")``), the encoding
pyarrow's Hive partitioning decodes, so ``scene`` reads back as the original name.

A scene is finished when its completion record exists: every other file of the scene is written
before it, each atomically, so a crash loses at most the scene in flight and a rerun redoes only
scenes without a record (overwriting whatever part files an interrupted attempt left).

Cameras: ``extrinsic`` is the 3x4 world-to-camera matrix [R | t] in OpenCV axes (x right, y down,
z forward), the world frame being the first reconstructed view's camera; ``intrinsic`` is the 3x3
pinhole matrix in the pixel coordinates of the ORIGINAL image as stored on disk after EXIF
orientation (``width`` x ``height``), with OpenCV's convention that pixel centres are at integer
coordinates. Points: x, y, z in the same world frame; r, g, b the colour of the pixel they came
from; ``confidence`` the model's; ``frame_idx`` the view they came from (see ``cameras``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tomeray.models.errors import InputError, TomerayError
from tomeray.pipeline.store import atomic_write_json, atomic_write_parquet

log = logging.getLogger(__name__)

__all__ = [
    "CAMERAS_SCHEMA",
    "ERRORS_SCHEMA",
    "POINTS_SCHEMA",
    "SCHEMA_VERSION",
    "ReconLayout",
    "SceneCameras",
    "ScenePoints",
    "cameras_table",
    "errors_table",
    "list_scenes",
    "matrices_from_column",
    "load_scene",
    "load_scene_cameras",
    "load_scene_points",
    "points_table",
    "scene_key",
    "to_open3d",
]

SCHEMA_VERSION = 1
_MAT34 = pa.list_(pa.list_(pa.float64(), 4), 3)
_MAT33 = pa.list_(pa.list_(pa.float64(), 3), 3)
CAMERAS_SCHEMA = pa.schema([
    ("scene", pa.string()), ("frame_idx", pa.int32()), ("image_path", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("extrinsic", _MAT34), ("intrinsic", _MAT33),
])
POINTS_SCHEMA = pa.schema([
    ("x", pa.float32()), ("y", pa.float32()), ("z", pa.float32()),
    ("r", pa.uint8()), ("g", pa.uint8()), ("b", pa.uint8()),
    ("confidence", pa.float32()), ("frame_idx", pa.int32()),
])
ERRORS_SCHEMA = pa.schema([
    ("scene", pa.string()), ("image_path", pa.string()), ("stage", pa.string()),
    ("error_type", pa.string()), ("message", pa.string()),
])


def scene_key(name: str) -> str:
    """The file-name form of a scene name (percent-encoding, as Hive partitioning decodes it)."""
    return quote(name, safe="")


def _matrices(values: np.ndarray, rows: int, cols: int) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float64).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, cols), rows)


def matrices_from_column(column: pa.ChunkedArray | pa.Array, rows: int, cols: int) -> np.ndarray:
    """A list<list<float>> matrix column -> (N, rows, cols) float64."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = arr.flatten().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(arr), rows, cols).astype(np.float64, copy=False)


def cameras_table(scene: str, frame_idx, image_path, width, height, extrinsic, intrinsic) -> pa.Table:
    n = len(frame_idx)
    return pa.Table.from_arrays([
        pa.array([scene] * n, pa.string()),
        pa.array(np.asarray(frame_idx, np.int32)),
        pa.array([str(p) for p in image_path], pa.string()),
        pa.array(np.asarray(width, np.int32)),
        pa.array(np.asarray(height, np.int32)),
        _matrices(np.asarray(extrinsic).reshape(n, 3, 4), 3, 4),
        _matrices(np.asarray(intrinsic).reshape(n, 3, 3), 3, 3),
    ], schema=CAMERAS_SCHEMA)


def points_table(xyz, rgb, confidence, frame_idx) -> pa.Table:
    xyz = np.asarray(xyz, np.float32).reshape(-1, 3)
    rgb = np.asarray(rgb, np.uint8).reshape(-1, 3)
    return pa.Table.from_arrays([
        pa.array(xyz[:, 0]), pa.array(xyz[:, 1]), pa.array(xyz[:, 2]),
        pa.array(rgb[:, 0]), pa.array(rgb[:, 1]), pa.array(rgb[:, 2]),
        pa.array(np.asarray(confidence, np.float32).reshape(-1)),
        pa.array(np.asarray(frame_idx, np.int32).reshape(-1)),
    ], schema=POINTS_SCHEMA)


def errors_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(
        [{k: str(r.get(k) or "") for k in ERRORS_SCHEMA.names} for r in rows], schema=ERRORS_SCHEMA)


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
        R, t = self.extrinsic[:, :, :3], self.extrinsic[:, :, 3]
        return -np.einsum("vji,vj->vi", R, t)


@dataclass
class ScenePoints:
    """The point cloud of one scene as NumPy arrays."""

    xyz: np.ndarray  # (N, 3) float32
    rgb: np.ndarray  # (N, 3) uint8
    confidence: np.ndarray  # (N,) float32
    frame_idx: np.ndarray  # (N,) int32


class ReconLayout:
    """Paths and reads/writes of one reconstruction output directory (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.config_path = self.root / "config.yaml"
        self.cameras_path = self.root / "cameras.parquet"
        self.errors_path = self.root / "errors.parquet"
        self.cameras_dir = self.root / "cameras"
        self.points_dir = self.root / "points"
        self.errors_dir = self.root / "errors"
        self.scenes_dir = self.root / "scenes"
        self.ply_dir = self.root / "ply"
        self.colmap_dir = self.root / "colmap"

    # ---------------------------------------------------------------- per-scene paths
    def cameras_part(self, scene: str) -> Path:
        return self.cameras_dir / f"scene={scene_key(scene)}.parquet"

    def points_part(self, scene: str) -> Path:
        return self.points_dir / f"scene={scene_key(scene)}" / "part-0.parquet"

    def errors_part(self, scene: str) -> Path:
        return self.errors_dir / f"scene={scene_key(scene)}.parquet"

    @property
    def input_errors_part(self) -> Path:
        return self.errors_dir / "inputs.parquet"

    def record_path(self, scene: str) -> Path:
        return self.scenes_dir / f"scene={scene_key(scene)}.json"

    def ply_path(self, scene: str) -> Path:
        return self.ply_dir / f"{scene_key(scene)}.ply"

    def colmap_path(self, scene: str) -> Path:
        return self.colmap_dir / scene_key(scene)

    # ---------------------------------------------------------------- manifest
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict:
        if not self.manifest_path.is_file():
            raise TomerayError(f"'{self.root}' is not a reconstruction output (no manifest.json)")
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TomerayError(f"cannot read {self.manifest_path}: {e}") from None

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest)

    # ---------------------------------------------------------------- scenes
    def finished_scenes(self) -> dict[str, dict]:
        """Completion records of the finished scenes, by scene name."""
        records = {}
        for path in sorted(self.scenes_dir.glob("scene=*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # unreadable record: the scene is redone
                log.warning("ignoring unreadable completion record %s", path)
                continue
            records[record["scene"]] = record
        return records

    def write_scene_parts(self, scene: str, cameras: pa.Table, points: pa.Table, errors: list[dict]) -> None:
        """Write a scene's points, cameras and errors (each atomically). The scene counts as finished
        only once ``write_record`` follows."""
        atomic_write_parquet(self.points_part(scene), points)
        atomic_write_parquet(self.cameras_part(scene), cameras)
        self.write_scene_errors(scene, errors)

    def write_record(self, scene: str, record: dict) -> None:
        """The completion record: the last write of a finished scene."""
        atomic_write_json(self.record_path(scene), {**record, "scene": scene})

    def write_scene_errors(self, scene: str, errors: list[dict]) -> None:
        """Replace the scene's error part with ``errors`` (removed when there are none)."""
        if errors:
            atomic_write_parquet(self.errors_part(scene), errors_table(errors))
        else:
            self.errors_part(scene).unlink(missing_ok=True)

    def write_input_errors(self, errors: list[dict]) -> None:
        if errors:
            atomic_write_parquet(self.input_errors_part, errors_table(errors))
        else:
            self.input_errors_part.unlink(missing_ok=True)

    # ---------------------------------------------------------------- consolidation
    def consolidate(self) -> tuple[int, int]:
        """Write ``cameras.parquet`` (finished scenes, in name order) and ``errors.parquet`` from
        the parts; returns their row counts."""
        finished = self.finished_scenes()
        parts = [pq.read_table(self.cameras_part(s)) for s in sorted(finished)
                 if self.cameras_part(s).is_file()]
        cameras = pa.concat_tables(parts) if parts else CAMERAS_SCHEMA.empty_table()
        atomic_write_parquet(self.cameras_path, cameras)
        errors = self._read_error_parts()
        atomic_write_parquet(self.errors_path, errors)
        return cameras.num_rows, errors.num_rows

    def _read_error_parts(self) -> pa.Table:
        parts = [pq.read_table(p, schema=ERRORS_SCHEMA) for p in sorted(self.errors_dir.glob("*.parquet"))]
        return pa.concat_tables(parts) if parts else ERRORS_SCHEMA.empty_table()

    # ---------------------------------------------------------------- reading back
    def read_cameras(self, scene: str | None = None) -> pa.Table:
        """Cameras of all finished scenes (or one), from the per-scene parts (always current)."""
        names = [scene] if scene is not None else sorted(self.finished_scenes())
        parts = []
        for name in names:
            path = self.cameras_part(name)
            if not path.is_file():
                raise InputError(f"scene '{name}' has no cameras in '{self.root}' "
                                 f"(finished scenes: {', '.join(sorted(self.finished_scenes())) or 'none'})")
            parts.append(pq.read_table(path, schema=CAMERAS_SCHEMA))
        return pa.concat_tables(parts) if parts else CAMERAS_SCHEMA.empty_table()

    def read_points(self, scene: str, columns: list[str] | None = None) -> pa.Table:
        path = self.points_part(scene)
        if not path.is_file():
            raise InputError(f"scene '{scene}' has no points in '{self.root}'")
        return pq.read_table(path, columns=columns, schema=POINTS_SCHEMA)

    def read_errors(self) -> pa.Table:
        """Current errors (from the parts, so also right while a run is in progress)."""
        return self._read_error_parts()


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
