"""Point cloud and camera exports: binary PLY and the COLMAP text model, plus their readers.

PLY (``write_ply`` / ``read_ply``): binary little-endian, one ``vertex`` element with ``x y z``
float, ``red green blue`` uchar and optionally ``confidence`` float. The reader also takes ASCII
and big-endian files with any scalar vertex properties (reference clouds from other tools).

``write_exports`` writes a scene's requested exports (``export.ply`` / ``export.colmap`` /
``export.glb``, the last in ``pipeline.reconstruction.glb``).

COLMAP text model (``write_colmap_text`` / ``read_colmap_text``): ``cameras.txt`` (one PINHOLE
camera per image), ``images.txt`` (world-to-camera pose as quaternion qw qx qy qz and translation,
and the 2D observations) and ``points3D.txt`` (with tracks). Every point is observed in the view
it came from, at its projection through that view's camera, so tracks and observations are
consistent by construction; points behind the camera or projecting outside the image are left
out. COLMAP puts the centre of the top-left pixel at (0.5, 0.5) where OpenCV puts it at (0, 0):
principal points and observations are shifted by +0.5 on write and -0.5 on read, so the
intrinsics in and out of this module are always in OpenCV's convention.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from tomeray.models.errors import InputError
from tomeray.models.pose import quaternion_to_rotation, rotation_to_quaternion
from tomeray.pipeline.core.atomic import atomic_write_text, atomic_write_with
from tomeray.pipeline.reconstruction.config import ExportConfig
from tomeray.pipeline.reconstruction.glb import glb_path, write_glb
from tomeray.pipeline.reconstruction.layout import ReconLayout
from tomeray.pipeline.reconstruction.results import SceneCameras, ScenePoints, load_scene

__all__ = [
    "colmap_binary_path",
    "read_colmap_cameras",
    "read_colmap_text",
    "read_ply",
    "source_observations",
    "write_colmap_text",
    "write_exports",
    "write_ply",
]

# ------------------------------------------------------------------------------------------- PLY

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def write_ply(path: str | os.PathLike, xyz: np.ndarray, rgb: np.ndarray,
              confidence: np.ndarray | None = None) -> Path:
    """Write a binary little-endian PLY (atomically)."""
    xyz = np.asarray(xyz, np.float32).reshape(-1, 3)
    rgb = np.asarray(rgb, np.uint8).reshape(-1, 3)
    if len(rgb) != len(xyz) or (confidence is not None and len(confidence) != len(xyz)):
        raise InputError(f"PLY columns differ in length: xyz {len(xyz)}, rgb {len(rgb)}")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if confidence is not None:
        fields.append(("confidence", "<f4"))
    vertices = np.empty(len(xyz), dtype=fields)
    vertices["x"], vertices["y"], vertices["z"] = xyz.T
    vertices["red"], vertices["green"], vertices["blue"] = rgb.T
    if confidence is not None:
        vertices["confidence"] = np.asarray(confidence, np.float32).reshape(-1)
    props = "".join(f"property {'float' if t == '<f4' else 'uchar'} {name}\n" for name, t in fields)
    header = (f"ply\nformat binary_little_endian 1.0\ncomment written by tomeray\n"
              f"element vertex {len(xyz)}\n{props}end_header\n").encode("ascii")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(vertices.tobytes())

    return atomic_write_with(path, write)


def read_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The vertex properties of a PLY file, by name (``x``, ``y``, ``z``, ``red``, ...).

    Elements before ``vertex`` must have scalar properties only (list properties, e.g. faces,
    may follow the vertices)."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise InputError(f"{path}: not a PLY file (no 'ply' magic line)")
        fmt, elements, current = None, [], None
        while True:
            line = f.readline()
            if not line:
                raise InputError(f"{path}: PLY header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                current = {"name": words[1], "count": int(words[2]), "props": [], "lists": False}
                elements.append(current)
            elif words[0] == "property" and current is not None:
                if words[1] == "list":
                    current["lists"] = True
                elif words[1] in _PLY_TYPES:
                    current["props"].append((words[2], _PLY_TYPES[words[1]]))
                else:
                    raise InputError(f"{path}: unknown PLY property type {words[1]!r}")
        if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
            raise InputError(f"{path}: unsupported PLY format {fmt!r}")
        order = "<" if fmt == "binary_little_endian" else ">"
        for element in elements:
            if element["lists"]:
                raise InputError(f"{path}: PLY element {element['name']!r} has list properties before or "
                                 "in the vertices; only scalar vertex properties are supported")
            props = element["props"]
            if fmt == "ascii":
                rows = [tuple(f.readline().split()) for _ in range(element["count"])]
                data = np.array(rows, dtype=[(n, t) for n, t in props])
            else:
                dtype = np.dtype([(n, order + t) for n, t in props])
                raw = f.read(dtype.itemsize * element["count"])
                if len(raw) < dtype.itemsize * element["count"]:
                    raise InputError(f"{path}: truncated PLY ({element['name']} data is short)")
                data = np.frombuffer(raw, dtype=dtype)
            if element["name"] == "vertex":
                return {n: data[n].astype(np.dtype(t)) for n, t in props}
    raise InputError(f"{path}: PLY file has no vertex element")


# ---------------------------------------------------------------------------------------- COLMAP


def _project(xyz: np.ndarray, extrinsic: np.ndarray, intrinsic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) world points -> (N, 2) OpenCV pixel coordinates and (N,) depth in that camera."""
    cam = xyz @ extrinsic[:, :3].T + extrinsic[:, 3]
    pix = cam @ intrinsic.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return pix[:, :2] / pix[:, 2:], cam[:, 2]


def source_observations(xyz: np.ndarray, views: np.ndarray, E: np.ndarray, K: np.ndarray, widths,
                        heights) -> tuple[np.ndarray, np.ndarray]:
    """Each point's projection (N, 2) into the view it came from, and whether it lands in front of
    that camera and inside its image (N,): the one observation the COLMAP exports give a point."""
    keep = np.zeros(len(xyz), bool)
    uv_all = np.zeros((len(xyz), 2))
    for v in range(len(E)):
        sel = np.flatnonzero(views == v)
        uv, z = _project(xyz[sel], E[v], K[v])
        inside = (z > 0) & np.isfinite(uv).all(1) & (uv[:, 0] >= -0.5) & (uv[:, 1] >= -0.5) \
            & (uv[:, 0] < widths[v] - 0.5) & (uv[:, 1] < heights[v] - 0.5)
        keep[sel] = inside
        uv_all[sel] = uv
    return keep, uv_all


def write_colmap_text(folder: str | os.PathLike, image_names: list[str], widths, heights,
                      intrinsics: np.ndarray, extrinsics: np.ndarray, xyz: np.ndarray, rgb: np.ndarray,
                      views: np.ndarray) -> dict[str, int]:
    """Write ``cameras.txt``, ``images.txt`` and ``points3D.txt`` into ``folder``.

    intrinsics (V, 3, 3) and extrinsics (V, 3, 4) world-to-camera in OpenCV conventions;
    point ``i`` is observed in view ``views[i]`` (an index into the V views). Returns counts."""
    folder = Path(folder)
    V = len(image_names)
    K = np.asarray(intrinsics, np.float64).reshape(V, 3, 3)
    E = np.asarray(extrinsics, np.float64).reshape(V, 3, 4)
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    rgb = np.asarray(rgb, np.uint8).reshape(-1, 3)
    views = np.asarray(views, np.int64).reshape(-1)
    widths, heights = np.asarray(widths).reshape(V), np.asarray(heights).reshape(V)
    bad_views = len(views) and not 0 <= views.min() <= views.max() < V
    if len(rgb) != len(xyz) or len(views) != len(xyz) or bad_views:
        raise InputError("COLMAP export: points, colours and view indices must match the views")

    keep, uv_all = source_observations(xyz, views, E, K, widths, heights)
    ids = np.flatnonzero(keep)  # point3D_id = position in ids + 1

    cameras = ["# Camera list with one line of data per camera:",
               "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {V}"]
    for v in range(V):
        fx, fy, cx, cy = K[v, 0, 0], K[v, 1, 1], K[v, 0, 2] + 0.5, K[v, 1, 2] + 0.5
        cameras.append(f"{v + 1} PINHOLE {int(widths[v])} {int(heights[v])} "
                       f"{fx:.10g} {fy:.10g} {cx:.10g} {cy:.10g}")

    quats = rotation_to_quaternion(E[:, :, :3])
    point2d_index = np.zeros(len(xyz), np.int64)
    images = ["# Image list with two lines of data per image:",
              "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
              "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {V}"]
    for v in range(V):
        name = str(image_names[v])
        if any(c.isspace() for c in name):
            raise InputError(f"COLMAP image names cannot contain whitespace: {name!r}")
        qw, qx, qy, qz = quats[v]
        tx, ty, tz = E[v, :, 3]
        images.append(f"{v + 1} {qw:.12g} {qx:.12g} {qy:.12g} {qz:.12g} {tx:.12g} {ty:.12g} {tz:.12g} "
                      f"{v + 1} {name}")
        mine = ids[views[ids] == v]
        point2d_index[mine] = np.arange(len(mine))
        uv = uv_all[mine] + 0.5
        images.append(" ".join(f"{x:.6f} {y:.6f} {pid + 1}"
                               for (x, y), pid in zip(uv, np.searchsorted(ids, mine))))

    points = ["# 3D point list with one line of data per point:",
              "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
              f"# Number of points: {len(ids)}"]
    for n, i in enumerate(ids):
        x, y, z = xyz[i]
        r, g, b = rgb[i]
        points.append(f"{n + 1} {x:.9g} {y:.9g} {z:.9g} {r} {g} {b} 0 {views[i] + 1} {point2d_index[i]}")

    atomic_write_text(folder / "cameras.txt", "\n".join(cameras) + "\n")
    atomic_write_text(folder / "images.txt", "\n".join(images) + "\n")
    atomic_write_text(folder / "points3D.txt", "\n".join(points) + "\n")
    return {"images": V, "points": len(ids), "dropped_points": int(len(xyz) - len(ids))}


# Camera models whose first parameters are focal length(s) and principal point (distortion ignored).
_COLMAP_MODELS = {"SIMPLE_PINHOLE": 1, "PINHOLE": 2, "SIMPLE_RADIAL": 1, "RADIAL": 1, "OPENCV": 2,
                  "OPENCV_FISHEYE": 2, "FULL_OPENCV": 2, "SIMPLE_RADIAL_FISHEYE": 1, "RADIAL_FISHEYE": 1,
                  "THIN_PRISM_FISHEYE": 2, "FOV": 2}


def _data_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"COLMAP model file missing: {path}")
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]


def read_colmap_cameras(path: str | os.PathLike) -> dict[int, tuple[int, int, np.ndarray]]:
    """A COLMAP ``cameras.txt``: camera id -> (width, height, 3x3 intrinsics in OpenCV's convention;
    distortion ignored)."""
    path = Path(path)
    cams = {}
    for line in _data_lines(path):
        w = line.split()
        if not w:
            continue
        model = w[1] if len(w) > 1 else "?"
        if model not in _COLMAP_MODELS:
            raise InputError(f"{path}: unsupported COLMAP camera model {model}")
        try:
            p = [float(v) for v in w[4:]]
            fx, fy = (p[0], p[0]) if _COLMAP_MODELS[model] == 1 else (p[0], p[1])
            cx, cy = p[_COLMAP_MODELS[model]], p[_COLMAP_MODELS[model] + 1]
            cams[int(w[0])] = (int(w[2]), int(w[3]),
                               np.array([[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1]]))
        except (ValueError, IndexError):
            raise InputError(f"{path}: malformed camera line {line.strip()!r}") from None
    return cams


def read_colmap_text(folder: str | os.PathLike) -> dict:
    """A COLMAP text model as arrays, images ordered by IMAGE_ID: ``names``, ``widths``,
    ``heights``, ``intrinsics`` (V, 3, 3; OpenCV convention; distortion ignored), ``extrinsics``
    (V, 3, 4) world-to-camera, and ``xyz`` (N, 3), ``rgb`` (N, 3) of points3D.txt (if present)."""
    folder = Path(folder)
    cams = read_colmap_cameras(folder / "cameras.txt")
    lines = [ln for ln in _data_lines(folder / "images.txt")]
    images = []
    i = 0
    while i < len(lines):
        w = lines[i].split()
        if not w:  # an empty POINTS2D line can only follow a header line, so skip stray blanks
            i += 1
            continue
        image_id, q, t, cam_id, name = int(w[0]), [float(v) for v in w[1:5]], [float(v) for v in w[5:8]], \
            int(w[8]), " ".join(w[9:])
        images.append((image_id, q, t, cam_id, name))
        i += 2
    images.sort()
    if not images:
        raise InputError(f"{folder}: images.txt lists no images")
    try:
        widths, heights, Ks = zip(*(cams[c] for _, _, _, c, _ in images))
    except KeyError as e:
        raise InputError(f"{folder}: images.txt refers to camera {e} missing from cameras.txt") from None
    R = quaternion_to_rotation(np.array([q for _, q, _, _, _ in images]))
    t = np.array([t for _, _, t, _, _ in images])
    out = {"names": [n for *_, n in images], "widths": np.array(widths), "heights": np.array(heights),
           "intrinsics": np.stack(Ks), "extrinsics": np.concatenate([R, t[:, :, None]], axis=2),
           "xyz": np.zeros((0, 3)), "rgb": np.zeros((0, 3), np.uint8)}
    if (folder / "points3D.txt").is_file():
        rows = [ln.split() for ln in _data_lines(folder / "points3D.txt") if ln.strip()]
        if rows:
            out["xyz"] = np.array([[float(v) for v in r[1:4]] for r in rows])
            out["rgb"] = np.array([[int(v) for v in r[4:7]] for r in rows], np.uint8)
    return out


# ---------------------------------------------------------------------------------------- per scene


def _colmap_names(paths: list[str], frame_idx: np.ndarray, spec: dict) -> list[str]:
    """Image names for COLMAP: paths relative to the scene folder (video frames get synthetic names);
    whitespace, which the text format cannot hold, becomes '_'."""
    if "video" in spec:
        stem = Path(spec["video"]).stem
        names = [f"{stem}_frame{int(i):06d}.png" for i in frame_idx]
    else:
        root = spec.get("root") or ""
        names = [os.path.relpath(p, root) if root else os.path.basename(p) for p in paths]
    return [re.sub(r"\s", "_", n) for n in names]


def colmap_binary_path(layout: ReconLayout, scene: str) -> Path:
    """The binary model's folder, where COLMAP's mapper would write it (images/ beside sparse/)."""
    return layout.colmap_path(scene) / "sparse" / "0"


def write_exports(layout: ReconLayout, scene: str, cfg: ExportConfig, cams: SceneCameras | None = None,
                  pts: ScenePoints | None = None, spec: dict | None = None, only_missing: bool = False
                  ) -> list[str]:
    """Write the requested exports of a scene (from the given arrays, else from its stored tables);
    returns the exports written."""
    wants_ply = cfg.ply and not (only_missing and layout.ply_path(scene).is_file())
    have_colmap = (layout.colmap_path(scene) / "points3D.txt").is_file()
    wants_colmap = cfg.colmap and not (only_missing and have_colmap)
    wants_glb = cfg.glb and not (only_missing and glb_path(layout, scene).is_file())
    have_binary = (colmap_binary_path(layout, scene) / "points3D.bin").is_file()
    wants_binary = cfg.colmap_binary and not (only_missing and have_binary)
    if not (wants_ply or wants_colmap or wants_binary or wants_glb):
        return []
    if cams is None or pts is None:
        cams, pts = load_scene(layout.root, scene)
    written = []
    if wants_ply:
        write_ply(layout.ply_path(scene), pts.xyz, pts.rgb, pts.confidence if cfg.ply_confidence else None)
        written.append("ply")
    if wants_colmap or wants_binary:
        idx = np.arange(len(pts.xyz))
        if cfg.colmap_max_points and len(idx) > cfg.colmap_max_points:
            idx = np.sort(np.random.default_rng(0).choice(idx, cfg.colmap_max_points, replace=False))
        view_of = {int(f): v for v, f in enumerate(cams.frame_idx)}
        views = np.asarray([view_of[int(f)] for f in pts.frame_idx[idx]], np.int64)
        if spec is None:
            spec = {"root": os.path.commonpath([os.path.dirname(p) for p in cams.image_path])}
            if len(set(cams.image_path)) == 1 and len(cams.image_path) > 1:  # frames of one video
                spec = {"video": cams.image_path[0]}
        names = _colmap_names(cams.image_path, cams.frame_idx, spec)
        if len(set(names)) != len(names):  # e.g. a scene list naming one file twice
            names = [f"{int(f):06d}_{os.path.basename(n)}" for f, n in zip(cams.frame_idx, names)]
    if wants_colmap:
        write_colmap_text(layout.colmap_path(scene), names, cams.width, cams.height, cams.intrinsic,
                          cams.extrinsic, pts.xyz[idx], pts.rgb[idx], views)
        written.append("colmap")
    if wants_binary:
        from tomeray.pipeline.reconstruction.colmap_binary import write_colmap_binary

        write_colmap_binary(layout.colmap_path(scene), names, cams, pts.xyz[idx], pts.rgb[idx], views,
                            cfg.camera_model, cfg.shared_camera, video="video" in spec)
        written.append("colmap_binary")
    if wants_glb:
        write_glb(glb_path(layout, scene), cams, pts)
        written.append("glb")
    return written
