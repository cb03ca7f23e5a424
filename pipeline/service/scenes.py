"""Served reconstruction outputs: their finished scenes, cameras, view thumbnails and points.

Scene names from requests are looked up in the outputs' scene lists (completion records); a name is
never turned into a path. Points are read from the scene's Parquet part one row group at a time
and packed into fixed-size little-endian records (``POINT_RECORD``), so a request holds its answer
and one row group, never the whole scene's columns.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tomeray.models.errors import InputError
from tomeray.pipeline.reconstruction.layout import ReconLayout
from tomeray.pipeline.reconstruction.results import load_scene_cameras
from tomeray.pipeline.reconstruction.thumbnails import read_view_thumbnail, thumbnails_path

__all__ = ["POINT_LAYOUT", "POINT_RECORD", "SceneNotFound", "SceneStore", "ServedScene", "output_kind",
           "sample_counts"]

log = logging.getLogger(__name__)

# float32 x, y, z; uint8 r, g, b, pad; float32 confidence: 20 bytes, little-endian
POINT_RECORD = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1"),
                         ("pad", "u1"), ("confidence", "<f4")])
POINT_LAYOUT = "x:f32,y:f32,z:f32,r:u8,g:u8,b:u8,pad:u8,confidence:f32;little-endian;stride=20"
POINT_COLUMNS = ["x", "y", "z", "r", "g", "b", "confidence"]


class SceneNotFound(InputError):
    """A scene, view or file the served outputs do not have (HTTP 404)."""


def output_kind(path: str | Path) -> str:
    """``"index"`` (made by ``tomeray index``) or ``"reconstruction"`` (``tomeray reconstruct``), read
    from the directory's manifest."""
    manifest_path = Path(path) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"'{path}' has no manifest.json: give index directories made by 'tomeray index' "
                         "or reconstruction outputs made by 'tomeray reconstruct'") from None
    except (OSError, ValueError) as e:
        raise InputError(f"'{manifest_path}' is unreadable: {e}") from None
    if isinstance(manifest, dict) and "views" in (manifest.get("settings") or {}):
        return "reconstruction"
    if isinstance(manifest, dict) and "dim" in manifest and "model" in manifest:
        return "index"
    raise InputError(f"'{path}' is neither a video index nor a reconstruction output (its manifest "
                     "has neither kind's fields)")


def sample_counts(group_rows: list[int], want: int, seed: int) -> list[np.ndarray]:
    """Row numbers to keep in each row group: ``want`` of ``sum(group_rows)`` rows in all, spread over
    the groups in proportion to their sizes, drawn with ``seed`` (the same every request)."""
    total = sum(group_rows)
    if want >= total:
        return [np.arange(n) for n in group_rows]
    share = np.asarray(group_rows, np.float64) * want / total
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(-(share - counts), kind="stable")[: want - int(counts.sum())]] += 1
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n, int(k), replace=False)) for n, k in zip(group_rows, counts)]


@dataclass(frozen=True)
class ServedScene:
    name: str
    output: str  # the served output's name
    layout: ReconLayout
    record: dict
    weights_id: str

    def summary(self) -> dict:
        r = self.record
        return {"scene": self.name, "output": self.output, "views": int(r.get("views", 0)),
                "points": int(r.get("points", 0)), "weights_id": self.weights_id,
                "random_weights": self.weights_id.startswith("random-init"),
                "errors": int(r.get("image_errors", 0)), "finished": r.get("finished"),
                "viewer_url": f"/scenes/{_quote(self.name)}",
                "thumbnail_url": (f"/api/scenes/{_quote(self.name)}/views/{r['first_view']}/thumbnail"
                                  if r.get("first_view") is not None else None)}


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


class SceneStore:
    """The finished scenes of reconstruction outputs ``dirs``, re-read when an output gains scenes
    (a run of ``tomeray reconstruct``, or a reconstruction the service started)."""

    def __init__(self, dirs: list[str | Path]):
        self.layouts = [ReconLayout(d) for d in dirs]
        for layout in self.layouts:
            layout.read_manifest()  # a clear error for a missing or foreign directory
        self.names: list[str] = []
        for layout in self.layouts:
            self.names.append(self._unique_name(layout.root))
        self._lock = threading.Lock()
        self._stamps: tuple = ()
        self._scenes: dict[str, ServedScene] = {}

    def add(self, root: str | Path) -> None:
        """Serve another output too (one the service writes, once it exists)."""
        root = Path(root)
        with self._lock:
            if any(layout.root.resolve() == root.resolve() for layout in self.layouts):
                return
            self.layouts = [*self.layouts, ReconLayout(root)]
            self.names = [*self.names, self._unique_name(root)]
            self._stamps = ()

    def _unique_name(self, root: Path) -> str:
        """The folder's name, made unique among the served outputs (``recon``, ``recon-2``, ...)."""
        base = Path(root).resolve().name or "output"
        name, n = base, 2
        while name in self.names:
            name, n = f"{base}-{n}", n + 1
        return name

    def _stamp(self) -> tuple:
        stamps = []
        for layout in self.layouts:
            try:
                stamps.append((layout.scenes_dir.stat().st_mtime_ns, layout.manifest_path.stat().st_mtime_ns))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def scenes(self) -> dict[str, ServedScene]:
        """Every served scene by name (the first output that has a name serves it)."""
        stamp = self._stamp()
        with self._lock:
            if stamp == self._stamps:
                return self._scenes
            scenes: dict[str, ServedScene] = {}
            for name, layout in zip(self.names, self.layouts):
                weights = str(layout.read_manifest().get("weights_id", "unknown"))
                for scene, record in sorted(layout.finished_scenes().items()):
                    if scene in scenes:
                        log.warning("scene %s of %s is shadowed by the one in %s", scene, name,
                                    scenes[scene].output)
                        continue
                    record = {**record, "first_view": _first_view(layout, scene)}
                    scenes[scene] = ServedScene(scene, name, layout, record, weights)
            self._scenes, self._stamps = scenes, stamp
            return scenes

    def find(self, name: str) -> ServedScene:
        scene = self.scenes().get(name)
        if scene is None:
            raise SceneNotFound(f"no served scene is named {name[:80]!r} (GET /api/scenes lists them)")
        return scene

    def cameras(self, name: str) -> list[dict]:
        scene = self.find(name)
        cams = load_scene_cameras(scene.layout.root, scene.name)
        return [{"frame_idx": int(f), "image_path": Path(p).name, "width": int(w), "height": int(h),
                 "extrinsic": e.tolist(), "intrinsic": k.tolist()}
                for f, p, w, h, e, k in zip(cams.frame_idx, cams.image_path, cams.width, cams.height,
                                            cams.extrinsic, cams.intrinsic)]

    def thumbnail(self, name: str, frame_idx: int) -> bytes:
        scene = self.find(name)
        data = read_view_thumbnail(scene.layout, scene.name, frame_idx)
        if data is None:
            raise SceneNotFound(f"scene {name[:80]!r} has no thumbnail of view {frame_idx}")
        return data

    def points(self, name: str, want: int, seed: int = 0) -> tuple[memoryview, int, int]:
        """``(records, count, total)``: a seeded subsample of at most ``want`` of the scene's ``total``
        points as ``POINT_RECORD`` bytes (a view of one array, sent without another copy)."""
        scene = self.find(name)
        path = scene.layout.points_part(scene.name)
        if not path.is_file():
            raise SceneNotFound(f"scene {name[:80]!r} has no points file")
        with pq.ParquetFile(path, memory_map=True) as parquet:
            groups = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
            keep = sample_counts(groups, want, seed)
            out = np.empty(sum(len(k) for k in keep), POINT_RECORD)
            at = 0
            for group, rows in enumerate(keep):
                if not len(rows):
                    continue
                table = parquet.read_row_group(group, columns=POINT_COLUMNS)
                part = out[at : at + len(rows)]
                for column in POINT_COLUMNS:
                    values = table[column].to_numpy()
                    part[column] = values if len(rows) == len(values) else values[rows]
                at += len(rows)
        out["pad"] = 0
        return memoryview(out).cast("B"), len(out), sum(groups)


def _first_view(layout: ReconLayout, scene: str) -> int | None:
    path = thumbnails_path(layout, scene)
    if not path.is_file():
        return None
    frames = pq.read_table(path, columns=["frame_idx"])["frame_idx"].to_numpy()
    return int(frames.min()) if len(frames) else None
