"""The on-disk layout of a reconstruction run, and reading it back.

```
<out>/
  manifest.json                     the last write of every run: model, weights, pinned settings, counts
  config.yaml                       the resolved configuration of the latest run
  cameras.parquet                   all finished scenes (consolidated from cameras/ at the end of a run)
  errors.parquet                    all current errors (consolidated from errors/; columns of
                                    pipeline.core.errors_table, ``item`` being the scene)
  cameras/scene=<key>.parquet       one part per finished scene
  points/scene=<key>/part-0.parquet one part per finished scene (Hive partitioning on ``scene``)
  errors/scene=<key>.parquet        the errors of a scene's latest attempt (unreadable images, ...)
  errors/inputs.parquet             errors not tied to a scene (inputs that name nothing), latest run
  runs/<run_id>.json                what each run did
  scenes/scene=<key>.json           a scene's completion record, written after all its files
                                    (with the chunk fits, ``alignment``, and the bundle
                                    adjustment, ``refine``, when they ran)
  ply/<key>.ply                     optional export (binary little-endian PLY)
  colmap/<key>/{cameras,images,points3D}.txt   optional export (COLMAP text model)
  colmap/<key>/sparse/0/*.bin       optional export (COLMAP binary model; images/ beside it links
                                    the original images: pipeline.reconstruction.colmap_binary)
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
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tomeray.models.errors import InputError
from tomeray.pipeline.core.atomic import atomic_write_json, atomic_write_parquet
from tomeray.pipeline.core.errors_table import read_error_parts, write_error_part
from tomeray.pipeline.core.output import JobOutput

log = logging.getLogger(__name__)

__all__ = ["CAMERAS_SCHEMA", "POINTS_SCHEMA", "ReconLayout", "cameras_table", "matrices_from_column",
           "points_table", "scene_key"]

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


class ReconLayout(JobOutput):
    """Paths and reads/writes of one reconstruction output directory (see the module docstring)."""

    kind = "reconstruction output"
    command = "tomeray reconstruct"
    schema_version = 2  # 2: error parts in the shared error-table columns (1 is read as well)
    pinned = ("settings",)

    def __init__(self, root: str | Path):
        super().__init__(root)
        self.cameras_path = self.root / "cameras.parquet"
        self.errors_path = self.root / "errors.parquet"
        self.cameras_dir = self.root / "cameras"
        self.points_dir = self.root / "points"
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

    def has_results(self) -> bool:
        return bool(self.finished_scenes())

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
            write_error_part(self.errors_part(scene), errors)
        else:
            self.errors_part(scene).unlink(missing_ok=True)

    def write_input_errors(self, errors: list[dict]) -> None:
        if errors:
            write_error_part(self.input_errors_part, errors)
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
        return read_error_parts(sorted(self.errors_dir.glob("*.parquet")))

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

    def scenes_with_errors(self) -> set[str]:
        """Scenes whose latest attempt left error rows (failed, or finished with unusable images)."""
        return set(read_error_parts(sorted(self.errors_dir.glob("scene=*.parquet")))["item"].to_pylist())
