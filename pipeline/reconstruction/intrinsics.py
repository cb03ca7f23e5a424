"""Known intrinsics (``cameras.intrinsics=FILE``): read once on the driver, checked against the
scenes before any work, then used by the actors in place of the predicted intrinsics.

Formats, by content:

* OpenCV YAML / XML (``cv2.FileStorage``): the matrix under ``camera_matrix`` (OpenCV's calibration
  sample) or ``M1`` (its stereo sample); ``image_width`` / ``image_height`` when present say the
  image size it belongs to. One matrix for every image.
* COLMAP ``cameras.txt``: one camera, for every image (several cameras cannot be told apart
  without images.txt: use a CSV).
* CSV with a header ``image_path,fx,fy,cx,cy``: one row per image (paths absolute or relative to
  the CSV's folder); every image reconstructed must be listed.

Intrinsics are in OpenCV pixels of the original image (pixel centres at integers); distortion
coefficients in the file are not used (undistort the images first for strongly distorted lenses).
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tomeray.models.errors import ConfigError, InputError

__all__ = ["KnownIntrinsics", "load_intrinsics"]


@dataclass
class KnownIntrinsics:
    path: str
    format: str  # opencv | colmap | csv
    sha256: str
    default: list | None = None  # one 3x3 matrix for every image
    size: list | None = None  # (width, height) the default matrix belongs to, when the file says
    by_path: dict[str, list] = field(default_factory=dict)  # real path -> 3x3

    def actor_spec(self) -> dict:
        """What the reconstruction actors look the matrices up in (``operators.scene_reconstruct``)."""
        return {"path": self.path, "default": self.default, "size": self.size, "by_path": self.by_path}

    def check_scenes(self, specs: list[dict]) -> None:
        """Every image of ``specs`` must have intrinsics (CSV files list images one by one)."""
        if self.default is not None:
            return
        for spec in specs:
            for path in [spec["video"]] if "video" in spec else spec.get("images", []):
                if os.path.realpath(path) not in self.by_path:
                    raise ConfigError(f"cameras.intrinsics {self.path}: key image_path has no row for {path} "
                                      f"(scene {spec['scene']})")

    def manifest(self) -> dict:
        return {"file": self.path, "format": self.format, "sha256": self.sha256,
                "images": len(self.by_path) if self.default is None else "all"}


def _checked(matrix, path: Path, key: str) -> list:
    try:
        K = np.asarray(matrix, np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"cameras.intrinsics {path}: key {key} is not numeric") from None
    if K.shape != (3, 3):
        raise ConfigError(f"cameras.intrinsics {path}: key {key} must be a 3x3 matrix; got shape {K.shape}")
    if not np.isfinite(K).all():
        raise ConfigError(f"cameras.intrinsics {path}: key {key} holds a non-finite value")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ConfigError(f"cameras.intrinsics {path}: key {key} has a non-positive focal length "
                          f"(fx={K[0, 0]:g}, fy={K[1, 1]:g})")
    if not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
        raise ConfigError(f"cameras.intrinsics {path}: key {key} is not an upper-triangular camera matrix "
                          "with last row 0 0 1")
    return K.tolist()


def _opencv(path: Path) -> tuple[list, list | None]:
    import cv2

    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except cv2.error as e:
        raise ConfigError(f"cameras.intrinsics {path}: not a readable OpenCV file "
                          f"({str(e).strip()[:120]})") from None
    try:
        for key in ("camera_matrix", "M1"):
            node = fs.getNode(key)
            if not node.empty():
                K = _checked(node.mat(), path, key)
                w, h = fs.getNode("image_width"), fs.getNode("image_height")
                size = [int(w.real()), int(h.real())] if not (w.empty() or h.empty()) else None
                return K, size
        raise ConfigError(f"cameras.intrinsics {path}: key camera_matrix (or M1) is missing")
    finally:
        fs.release()


def _colmap(path: Path) -> tuple[list, list]:
    from tomeray.pipeline.reconstruction.exports import read_colmap_cameras

    try:
        cams = read_colmap_cameras(path)
    except InputError as e:
        raise ConfigError(f"cameras.intrinsics {e}") from None
    if len(cams) != 1:
        raise ConfigError(f"cameras.intrinsics {path}: key CAMERA_ID: {len(cams)} cameras; give exactly one "
                          "(or a CSV with image_path,fx,fy,cx,cy per image)")
    (w, h, K), = cams.values()
    return _checked(K, path, "PARAMS"), [w, h]


def _csv(path: Path) -> dict[str, list]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns = ("image_path", "fx", "fy", "cx", "cy")
    header = set(rows[0]) if rows else set()
    for key in columns:
        if key not in header:
            raise ConfigError(f"cameras.intrinsics {path}: key {key} is missing "
                              f"(columns: {', '.join(columns)})")
    out = {}
    for n, row in enumerate(rows, start=2):
        try:
            fx, fy, cx, cy = (float(row[k]) for k in columns[1:])
        except (TypeError, ValueError):
            raise ConfigError(f"cameras.intrinsics {path}: line {n}: key fx/fy/cx/cy is not a number"
                              ) from None
        image = Path(row["image_path"])
        image = image if image.is_absolute() else path.parent / image
        out[os.path.realpath(image)] = _checked([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], path, f"line {n}")
    return out


def load_intrinsics(file: str | os.PathLike) -> KnownIntrinsics:
    """Read and check a known-intrinsics file (``ConfigError`` naming the file and the key)."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise ConfigError(f"cameras.intrinsics {path}: no such file")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    head = data[:2048].decode("utf-8", "replace")
    opencv = head.lstrip().startswith(("%YAML", "<?xml", "<opencv_storage"))
    if opencv or path.suffix.lower() in (".yml", ".yaml", ".xml"):
        K, size = _opencv(path)
        return KnownIntrinsics(str(path), "opencv", digest, default=K, size=size)
    if path.suffix.lower() == ".csv" or head.split("\n", 1)[0].strip().startswith("image_path"):
        return KnownIntrinsics(str(path), "csv", digest, by_path=_csv(path))
    K, size = _colmap(path)
    return KnownIntrinsics(str(path), "colmap", digest, default=K, size=size)
