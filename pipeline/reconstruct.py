"""``tomeray reconstruct``: cameras and point clouds for many scenes with VGGT on Ray Data.

    discover scenes -> skip finished ones -> load + preprocess (Ray tasks) -> VGGT (actor pool)
    -> per-scene outputs written by the driver as each scene arrives -> consolidated tables -> manifest

Scenes. An input is a scenes root (each sub-folder is a scene, its images found recursively and
ordered by path; images directly in the root form a scene named after the root; a video file in
the root is a scene named after the file), a video file (one scene), or a CSV / Parquet list with
``scene`` and ``image_path`` columns (relative paths are relative to the list). ``frame_idx`` is a
view's position in its scene's ordered image list, or its frame number in a video (whose views all
have the video's path as ``image_path``).

Output layout and conventions: :mod:`pipeline.recon_store`. Resume: a scene is finished when its
completion record is written (after all its files), so a crash loses at most the scenes in
flight and a rerun into the same ``--out`` does only the others; scenes that failed are retried.
The settings that shape results (model and weights, preprocessing, views, point filtering) are
pinned in the manifest; a rerun with different ones is refused. Exports are derived from the
stored tables, so switching ``export.ply`` / ``export.colmap`` on for a rerun adds them to the
finished scenes too.

Exit status of ``main``: 0 every scene reconstructed without errors, 1 done but some scenes or
images failed (see errors.parquet), 2 nothing done (bad arguments, config, weights or an output
made with other settings), 130 interrupted (finished scenes are kept; rerun to resume).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tomeray.models.device import InferenceConfig
from tomeray.models.errors import ConfigError, InputError, TomerayError
from tomeray.models.vggt import VGGTModelConfig
from tomeray.operators.scene_load import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from tomeray.pipeline.config import config_to_dict, load_config, save_config
from tomeray.pipeline.discover import VIDEO_EXTENSIONS
from tomeray.pipeline.recon_store import (
    SCHEMA_VERSION,
    ReconLayout,
    SceneCameras,
    ScenePoints,
    cameras_table,
    load_scene,
    points_table,
    scene_key,
)
from tomeray.pipeline.store import remove_stale_temporaries, tomeray_version, utc_now

log = logging.getLogger(__name__)

__all__ = ["ReconConfig", "ReconSummary", "discover_scenes", "main", "print_output_summary",
           "run_reconstruct", "write_exports"]


# ------------------------------------------------------------------------------------------- config


@dataclass
class LoadConfig:
    mode: str = "crop"  # crop | pad: the official VGGT preprocessing modes
    size: int = 518  # model input width (crop) or longer side (pad), a multiple of 14
    extensions: list[str] = field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are reported, not decoded
    scene_column: str = "scene"  # columns of CSV / Parquet scene lists
    path_column: str = "image_path"


@dataclass
class VideoConfig:
    extensions: list[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))
    num_frames: int = 16  # frames per video scene, evenly spaced (0: all sampled frames)
    fps: float | None = None  # sample this many frames per second first (None: every frame)


@dataclass
class ViewsConfig:
    max_views: int = 64  # views per model call
    policy: str = "subsample"  # subsample: evenly spaced views; split: all views, in anchored chunks


@dataclass
class PointsConfig:
    source: str = "depth"  # depth: depth maps unprojected through the cameras | point_head
    conf_threshold: float | None = None  # keep confidence >= this
    conf_percentile: float | None = 50.0  # keep confidence >= this percentile of the scene's pixels
    max_points: int = 1_000_000  # per scene, seeded subsample (0: no cap)
    seed: int = 0


@dataclass
class ExportConfig:
    ply: bool = False  # ply/<scene>.ply, binary little-endian
    ply_confidence: bool = True  # add a confidence property to the PLY vertices
    colmap: bool = False  # colmap/<scene>/{cameras,images,points3D}.txt
    colmap_max_points: int = 100_000  # points3D subsample (seeded)


@dataclass
class RayConfig:
    address: str | None = None  # cluster to join; None: RAY_ADDRESS, else a local cluster
    num_cpus: int | None = None  # CPUs of the local cluster (None: all)
    load_num_cpus: float = 0.5  # CPUs reserved per load task
    load_memory_mb: int = 1024  # memory reserved per load task
    load_concurrency: int | None = None  # max load tasks at once (None: as many as fit)
    actors: int = 0  # model actors; 0: one per GPU, one on CPU-only clusters
    actor_num_cpus: float = 1.0  # CPUs reserved per model actor
    actor_num_gpus: float | None = None  # None: 1 per actor when the cluster has GPUs, else 0
    model_threads: int = 0  # torch threads of a CPU actor; 0: its reserved CPUs (at least 1)


@dataclass
class OutputConfig:
    progress: bool = True  # Ray Data progress bars


@dataclass
class ReconConfig:
    model: VGGTModelConfig = field(default_factory=VGGTModelConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    points: PointsConfig = field(default_factory=PointsConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def _validate(cfg: ReconConfig) -> None:
    checks = [
        (cfg.load.mode in ("crop", "pad"), f"load.mode must be crop or pad; got {cfg.load.mode!r}"),
        (cfg.load.size > 0 and cfg.load.size % 14 == 0, f"load.size must be a positive multiple of 14; "
                                                         f"got {cfg.load.size}"),
        (cfg.views.policy in ("subsample", "split"), f"views.policy must be subsample or split; "
                                                     f"got {cfg.views.policy!r}"),
        (cfg.views.max_views >= 1, f"views.max_views must be >= 1; got {cfg.views.max_views}"),
        (cfg.views.policy != "split" or cfg.views.max_views >= 2,
         "views.policy=split needs views.max_views >= 2 (every chunk repeats the anchor view)"),
        (cfg.points.source in ("depth", "point_head"), f"points.source must be depth or point_head; "
                                                       f"got {cfg.points.source!r}"),
        (cfg.points.conf_percentile is None or 0 <= cfg.points.conf_percentile <= 100,
         f"points.conf_percentile must be in [0, 100]; got {cfg.points.conf_percentile}"),
        (cfg.points.max_points >= 0, "points.max_points must be >= 0"),
        (cfg.inference.precision in ("auto", "fp32", "bf16", "fp16"),
         f"inference.precision must be auto, fp32, bf16 or fp16; got {cfg.inference.precision!r}"),
        (cfg.video.num_frames >= 0, "video.num_frames must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    from tomeray.models.vggt import get_arch

    get_arch(cfg.model.arch)  # a ConfigError naming the valid archs


def _pinned_settings(cfg: ReconConfig, weights_id: str) -> dict:
    """What shapes the results; a rerun into the same output must use the same."""
    d = config_to_dict(cfg)
    return json.loads(json.dumps({
        # the resolved weights, not how they were named (a relative or absolute path, say)
        "model": {**{k: v for k, v in d["model"].items() if k != "pretrained"}, "weights_id": weights_id},
        "load": {k: d["load"][k] for k in ("mode", "size")},
        "video": {k: d["video"][k] for k in ("num_frames", "fps")},
        "views": d["views"],
        "points": d["points"],
    }))


def _weights_id(model: VGGTModelConfig) -> str:
    """Which weights the actors will load, resolved on the driver without building the model (a
    missing checkpoint or an offline hub id fails here, before any work starts)."""
    from tomeray.models.vggt.weights import is_random, random_init_id, resolve_checkpoint

    if is_random(model.pretrained):
        return random_init_id(model.seed)
    return resolve_checkpoint(model.pretrained)[1]


# ---------------------------------------------------------------------------------------- discovery

_NAME_OK = re.compile(r"^[^\x00-\x1f]*\S[^\x00-\x1f]*$")  # printable, not blank


def _walk_images(folder: Path, exts: tuple[str, ...]) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if not f.startswith(".") and f.lower().endswith(exts)]
    return sorted(found, key=lambda p: os.path.relpath(p, folder))


def _read_scene_list(path: Path, scene_column: str, path_column: str) -> list[tuple[str, str]]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        missing = [c for c in (scene_column, path_column) if c not in table.column_names]
        if missing:
            raise InputError(f"{path}: missing column(s) {missing}; has {table.column_names}")
        rows = zip(table[scene_column].to_pylist(), table[path_column].to_pylist())
    else:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            missing = [c for c in (scene_column, path_column) if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing column(s) {missing}; has {reader.fieldnames}")
            rows = [(r[scene_column], r[path_column]) for r in reader]
    base = path.parent.resolve()
    return [(str(s).strip(), str(p) if os.path.isabs(str(p)) else str(base / str(p)))
            for s, p in rows if s is not None and p]


def discover_scenes(inputs: list[str], cfg: ReconConfig) -> tuple[list[dict], list[dict]]:
    """Scene specs ``{"scene", "images" | "video", "frame_idx", "root"}`` and error rows (stage
    ``discover``) for inputs that name nothing, empty scenes and duplicate names."""
    image_exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in cfg.load.extensions)
    video_exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in cfg.video.extensions)
    specs: list[dict] = []
    errors: list[dict] = []

    def error(scene: str, path: str, error_type: str, message: str) -> None:
        errors.append({"scene": scene, "image_path": path, "stage": "discover", "error_type": error_type,
                       "message": message})

    def add(spec: dict) -> None:
        specs.append(spec)

    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            root = path.resolve()
            children = sorted(p for p in root.iterdir() if not p.name.startswith("."))
            for child in children:
                if child.is_dir():
                    add({"scene": child.name, "images": _walk_images(child, image_exts), "root": str(child)})
                elif child.is_file() and child.name.lower().endswith(video_exts):
                    add({"scene": child.stem, "video": str(child), "root": str(root)})
            direct = [str(c) for c in children if c.is_file() and c.name.lower().endswith(image_exts)]
            if direct:
                add({"scene": root.name, "images": direct, "root": str(root)})
            elif not any(c.is_dir() or c.name.lower().endswith(video_exts) for c in children):
                error(root.name, str(root), "NoScenes", f"'{root}' holds no scene folders, images or videos")
        elif path.is_file() and path.name.lower().endswith(video_exts):
            add({"scene": path.stem, "video": str(path.resolve()), "root": str(path.resolve().parent)})
        elif path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".parquet"):
            try:
                rows = _read_scene_list(path, cfg.load.scene_column, cfg.load.path_column)
            except (OSError, ValueError, UnicodeDecodeError) as e:
                error("", str(path), type(e).__name__, f"cannot read the scene list: {e}")
                continue
            grouped: dict[str, list[str]] = {}
            for scene, image in rows:
                grouped.setdefault(scene, []).append(image)
            for scene, images in grouped.items():
                add({"scene": scene, "images": images, "root": os.path.commonpath(
                    [os.path.dirname(p) for p in images])})
        elif path.exists():
            error("", str(path), "UnsupportedInput", f"'{path}' is neither a scenes folder, a video nor a "
                  ".csv/.parquet scene list")
        else:
            error("", str(path), "FileNotFoundError", f"'{path}' does not exist")

    unique, seen = [], set()
    for spec in specs:
        name = spec["scene"]
        if name in seen:
            error(name, spec.get("video") or spec["root"], "DuplicateScene",
                  f"another input already has a scene named '{name}'; rename one of them")
        elif not _NAME_OK.match(name) or name in (".", "..") or len(scene_key(name)) > 200:
            error(name, spec["root"], "InvalidSceneName", f"scene name {name!r} cannot name files")
        elif "images" in spec and not spec["images"]:
            seen.add(name)
            error(name, spec["root"], "NoImages",
                  f"no image files ({', '.join(image_exts)}) in '{spec['root']}'")
        else:
            seen.add(name)
            if "images" in spec:
                spec["frame_idx"] = list(range(len(spec["images"])))
            unique.append(spec)
    return unique, errors


# ------------------------------------------------------------------------------------------- summary


@dataclass
class ReconSummary:
    reconstructed: int  # scenes finished by this run
    skipped: int  # scenes finished before this run
    failed: int  # scenes that failed in this run (see errors.parquet)
    image_errors: int  # error rows of this run (images and scenes)
    seconds: float
    weights_id: str
    views: int = 0  # views reconstructed by this run
    points: int = 0  # points kept by this run
    pipeline_s: float = 0.0
    out: str = ""
    scenes: dict[str, dict] = field(default_factory=dict)  # this run's scene records
    failures: list[dict] = field(default_factory=list)  # this run's error rows
    load_nodes: dict[str, int] = field(default_factory=dict)
    model_nodes: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.failures else 0


# -------------------------------------------------------------------------------------------- writing


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


def write_exports(layout: ReconLayout, scene: str, cfg: ExportConfig, cams: SceneCameras | None = None,
                  pts: ScenePoints | None = None, spec: dict | None = None, only_missing: bool = False
                  ) -> list[str]:
    """Write the requested exports of a scene (from the given arrays, else from its stored tables);
    returns the exports written."""
    from tomeray.pipeline.exports import write_colmap_text, write_ply

    wants_ply = cfg.ply and not (only_missing and layout.ply_path(scene).is_file())
    have_colmap = (layout.colmap_path(scene) / "points3D.txt").is_file()
    wants_colmap = cfg.colmap and not (only_missing and have_colmap)
    if not (wants_ply or wants_colmap):
        return []
    if cams is None or pts is None:
        cams, pts = load_scene(layout.root, scene)
    written = []
    if wants_ply:
        write_ply(layout.ply_path(scene), pts.xyz, pts.rgb, pts.confidence if cfg.ply_confidence else None)
        written.append("ply")
    if wants_colmap:
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
        write_colmap_text(layout.colmap_path(scene), names, cams.width, cams.height, cams.intrinsic,
                          cams.extrinsic, pts.xyz[idx], pts.rgb[idx], views)
        written.append("colmap")
    return written


class _SceneWriter:
    """Writes each scene as its result arrives on the driver (see pipeline.recon_store)."""

    def __init__(self, layout: ReconLayout, cfg: ReconConfig, specs: dict[str, dict]):
        self.layout, self.cfg, self.specs = layout, cfg, specs
        self.records: dict[str, dict] = {}
        self.failed: set[str] = set()
        self.errors: list[dict] = []
        self.seen: set[str] = set()
        self.load_nodes: dict[str, int] = {}
        self.model_nodes: dict[str, int] = {}

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for i in range(len(batch["scene"])):
            self._add_one({k: v[i] for k, v in batch.items()})

    def _add_one(self, row: dict) -> None:
        scene = str(row["scene"])
        self.seen.add(scene)
        for key, counter in (("load_node", self.load_nodes), ("model_node", self.model_nodes)):
            counter[str(row[key])] = counter.get(str(row[key]), 0) + 1
        errors = json.loads(str(row["errors"]))
        stats = json.loads(str(row["stats"]))
        self.errors.extend(errors)
        if str(row["status"]) != "ok":
            self.failed.add(scene)
            self.layout.write_scene_errors(scene, errors)
            log.warning("scene %s failed: %s", scene, errors[-1]["message"] if errors else "?")
            return
        cams = SceneCameras(
            scene, np.asarray(row["frame_idx"], np.int32), json.loads(str(row["image_path"])),
            np.asarray(row["width"], np.int32), np.asarray(row["height"], np.int32),
            np.asarray(row["extrinsic"], np.float64), np.asarray(row["intrinsic"], np.float64))
        pts = ScenePoints(np.asarray(row["xyz"], np.float32), np.asarray(row["rgb"], np.uint8),
                          np.asarray(row["confidence"], np.float32), np.asarray(row["point_frame"], np.int32))
        self.layout.write_scene_parts(
            scene, cameras_table(scene, cams.frame_idx, cams.image_path, cams.width, cams.height,
                                 cams.extrinsic, cams.intrinsic),
            points_table(pts.xyz, pts.rgb, pts.confidence, pts.frame_idx), errors)
        exports = write_exports(self.layout, scene, self.cfg.export, cams, pts, self.specs[scene])
        spec = self.specs[scene]
        record = {**stats, "image_errors": len(errors), "exports": exports, "finished": utc_now(),
                  "source": spec.get("video") or spec.get("root")}
        self.layout.write_record(scene, record)  # last: the scene is finished
        self.records[scene] = record
        log.info("scene %s: %d views, %d points (%.1f s model)", scene, record["views"], record["points"],
                 record.get("model_seconds", 0.0))


# ---------------------------------------------------------------------------------------------- job


def _plan_actors(cfg: RayConfig, scenes: int) -> dict:
    """Actor count and resources of the model stage on the connected cluster."""
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    num_gpus = cfg.actor_num_gpus if cfg.actor_num_gpus is not None else (1.0 if gpus else 0.0)
    actors = cfg.actors or (max(1, int(gpus / num_gpus)) if num_gpus > 0 else 1)
    threads = cfg.model_threads or (0 if num_gpus > 0 else max(1, round(cfg.actor_num_cpus)))
    return {"actors": max(1, min(actors, scenes)), "num_gpus": num_gpus, "num_cpus": cfg.actor_num_cpus,
            "threads": threads}


def build_dataset(specs: list[dict], cfg: ReconConfig):
    """The Ray Data graph: scene rows -> load tasks -> VGGT actor pool (one scene per call)."""
    import ray
    from tomeray.operators.reconstruct import SceneReconstructor
    from tomeray.operators.scene_load import SceneLoader

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.output.progress
    # A worker that dies (out of memory on a huge scene, a crashed decoder) loses its scene, not the
    # job; such scenes are reported as errors after the run and retried by the next one.
    ctx.max_errored_blocks = len(specs)
    items = [{"scene": s["scene"], "spec": json.dumps(s)} for s in specs]
    # One scene per block, so a dying worker loses one scene (capped: Ray schedules blocks, not rows).
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 10_000))
    loader = SceneLoader(mode=cfg.load.mode, size=cfg.load.size, max_views=cfg.views.max_views,
                         policy=cfg.views.policy, max_pixels=cfg.load.max_pixels,
                         video_frames=cfg.video.num_frames, video_fps=cfg.video.fps)
    # Declaring memory keeps Ray Data from fusing loading into the actors (it fuses stages with equal
    # resource requests), so loads spread over the cluster and overlap with inference.
    ds = ds.map_batches(loader, batch_size=1, num_cpus=cfg.ray.load_num_cpus,
                        memory=cfg.ray.load_memory_mb * 2**20,
                        compute=ray.data.TaskPoolStrategy(size=cfg.ray.load_concurrency))
    plan = _plan_actors(cfg.ray, len(items))
    log.info("reconstructing with %d actor(s), %s CPU / %s GPU each", plan["actors"], plan["num_cpus"],
             plan["num_gpus"])
    model = dataclasses.asdict(cfg.model)
    return ds.map_batches(
        SceneReconstructor,
        fn_constructor_kwargs={"model": model, "points": dataclasses.asdict(cfg.points),
                               "max_views": cfg.views.max_views, "policy": cfg.views.policy,
                               "device": cfg.inference.device, "precision": cfg.inference.precision,
                               "num_threads": plan["threads"]},
        batch_size=1, compute=ray.data.ActorPoolStrategy(size=plan["actors"]),
        num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"] or None,
    )


def _open_output(layout: ReconLayout, pinned: dict) -> dict:
    """The output's manifest, created when new; refuses an output made with other settings."""
    if layout.exists():
        manifest = layout.read_manifest()
        old = manifest.get("settings", {})
        if old != pinned:
            differ = sorted(f"{section}.{key}" for section in set(old) | set(pinned)
                            for key in set(old.get(section, {})) | set(pinned.get(section, {}))
                            if old.get(section, {}).get(key) != pinned.get(section, {}).get(key))
            raise InputError(f"'{layout.root}' was made with other settings (differ: {', '.join(differ)}); "
                             "use the same settings to resume, or a new --out directory")
        return manifest
    if layout.finished_scenes():
        raise InputError(f"'{layout.root}' holds finished scenes but no manifest.json, so their settings are "
                         "unknown; move them away or use a new --out directory")
    manifest = {"schema_version": SCHEMA_VERSION, "settings": pinned,
                "weights_id": pinned["model"]["weights_id"], "created": utc_now(), "complete": False}
    layout.write_manifest(manifest)
    return manifest


def _finish(layout: ReconLayout, manifest: dict, cfg: ReconConfig) -> dict:
    """Exports missing from finished scenes, consolidated tables, then the manifest (the last write)."""
    finished = layout.finished_scenes()
    for scene, record in finished.items():
        added = write_exports(layout, scene, cfg.export, only_missing=True)
        if added:
            exports = sorted(set(record.get("exports", [])) | set(added))
            layout.write_record(scene, {**record, "exports": exports})
    cameras, errors = layout.consolidate()
    failed = {str(s) for s in layout.read_errors()["scene"].to_pylist() if s} - set(finished)
    manifest = {**manifest, "complete": True, "updated": utc_now(), "tomeray_version": tomeray_version(),
                "counts": {"scenes": len(finished), "failed_scenes": len(failed), "views": cameras,
                           "points": int(sum(r.get("points", 0) for r in finished.values())),
                           "errors": errors}}
    layout.write_manifest(manifest)
    return manifest


def run_reconstruct(inputs: list[str], out: str | Path, overrides: list[str] | tuple[str, ...] = (),
                    address: str | None = None, *, config: ReconConfig | None = None) -> ReconSummary:
    """Reconstruct every scene of ``inputs`` into ``out`` (created, or resumed). See the module docstring."""
    started = time.perf_counter()
    cfg = config if config is not None else load_config(ReconConfig, "reconstruct", list(overrides))
    _validate(cfg)
    if not inputs:
        raise InputError("no inputs given: pass a scenes folder, a video or a .csv/.parquet scene list")
    specs, discover_errors = discover_scenes(list(inputs), cfg)
    weights_id = _weights_id(cfg.model)  # fails early on missing weights
    layout = ReconLayout(out)
    layout.root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(layout.root)
    manifest = _open_output(layout, _pinned_settings(cfg, weights_id))
    save_config(cfg, layout.config_path)
    if weights_id.startswith("random-init"):
        log.warning("VGGT weights are RANDOM (%s): cameras and points are for smoke tests only", weights_id)

    finished = layout.finished_scenes()
    todo = [s for s in specs if s["scene"] not in finished]
    layout.write_input_errors([e for e in discover_errors if not e["scene"]])
    for scene in {e["scene"] for e in discover_errors if e["scene"] and e["scene"] not in finished}:
        layout.write_scene_errors(scene, [e for e in discover_errors if e["scene"] == scene])
    log.info("%d scene(s): %d to reconstruct, %d already finished, %d discovery error(s)",
             len(specs), len(todo), len(specs) - len(todo), len(discover_errors))

    writer = _SceneWriter(layout, cfg, {s["scene"]: s for s in specs})
    pipeline_s = 0.0
    if todo:
        from tomeray.pipeline.ray_session import init_ray

        init_ray(address or cfg.ray.address, num_cpus=cfg.ray.num_cpus)
        pipeline_start = time.perf_counter()
        for batch in build_dataset(todo, cfg).iter_batches(batch_size=None, batch_format="numpy"):
            writer.add(batch)
        pipeline_s = time.perf_counter() - pipeline_start
        for spec in todo:
            if spec["scene"] not in writer.seen:
                lost = {"scene": spec["scene"], "image_path": "", "stage": "reconstruct",
                        "error_type": "WorkerLost",
                        "message": "no result came back (the worker processing it died, e.g. out of memory); "
                                   "rerun to retry, with fewer views.max_views if it happens again"}
                writer.errors.append(lost)
                writer.failed.add(spec["scene"])
                layout.write_scene_errors(spec["scene"], [lost])
    _finish(layout, manifest, cfg)
    failed_discovery = {e["scene"] or e["image_path"] for e in discover_errors}
    return ReconSummary(
        reconstructed=len(writer.records), skipped=len(specs) - len(todo),
        failed=len(writer.failed | failed_discovery), image_errors=len(writer.errors) + len(discover_errors),
        seconds=time.perf_counter() - started, weights_id=weights_id,
        views=sum(r["views"] for r in writer.records.values()),
        points=sum(r["points"] for r in writer.records.values()), pipeline_s=pipeline_s, out=str(layout.root),
        scenes=writer.records, failures=discover_errors + writer.errors,
        load_nodes=writer.load_nodes, model_nodes=writer.model_nodes,
    )


# ---------------------------------------------------------------------------------------------- CLI

_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tomeray reconstruct",
        description="Reconstruct cameras and point clouds from image folders (one folder per scene) or "
                    "videos with VGGT + FastVGGT merging on Ray (resumable: a rerun does only what is "
                    "missing).",
        epilog="Examples:\n"
               "  tomeray reconstruct scenes/ --out recon\n"
               "  tomeray reconstruct scenes/ --out recon model.arch=vggt-tiny model.pretrained=none\n"
               "  tomeray reconstruct list.csv --out recon views.policy=split export.ply=true\n"
               "  tomeray reconstruct --summary recon\n"
               "Exit status: 0 all scenes reconstructed, 1 some scenes or images failed (errors.parquet),\n"
               "2 nothing done (bad arguments, config, weights, other settings), 130 interrupted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("items", nargs="*", metavar="INPUT|KEY=VALUE",
                   help="scenes folders, videos or .csv/.parquet lists (scene,image_path); and config "
                        "overrides such as model.pretrained=none (see configs/reconstruct.yaml)")
    p.add_argument("--out", help="output directory (created, or resumed when it exists)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")
    p.add_argument("--summary", metavar="DIR", default=None,
                   help="print the scenes, views, points and errors of an output directory and exit")
    return p


def print_output_summary(root: str | Path, file=None) -> int:
    """Per-scene table of an output directory (finished and failed scenes, errors). Returns the number
    of current error rows."""
    file = file or sys.stdout
    layout = ReconLayout(root)
    manifest = layout.read_manifest()
    records = layout.finished_scenes()
    errors = layout.read_errors().to_pylist()
    by_scene: dict[str, int] = {}
    for e in errors:
        by_scene[e["scene"]] = by_scene.get(e["scene"], 0) + 1
    failed = sorted(s for s in by_scene if s and s not in records)
    weights = manifest.get("weights_id", "?")
    random = " (RANDOM weights: not a real reconstruction)" if str(weights).startswith("random") else ""
    print(f"{layout.root}: {len(records)} scene(s) reconstructed, {len(failed)} failed; "
          f"weights {weights}{random}", file=file)
    rows = [(s, str(r.get("views", 0)), str(r.get("skipped_views", 0)), str(r.get("points", 0)),
             str(by_scene.get(s, 0)), "ok") for s, r in sorted(records.items())]
    rows += [(s, "0", "-", "0", str(by_scene[s]), "failed") for s in failed]
    header = ("scene", "views", "skipped", "points", "errors", "status")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)), file=file)
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)), file=file)
    for e in errors[:50]:
        where = e["image_path"] or e["scene"]
        print(f"  error [{e['stage']}] {e['scene'] or '-'}: {where}: {e['error_type']}: {e['message']}",
              file=file)
    if len(errors) > 50:
        print(f"  ... and {len(errors) - 50} more (see {layout.errors_path})", file=file)
    return len(errors)


def _print_run(s: ReconSummary) -> None:
    print(f"reconstructed {s.reconstructed} scene(s) ({s.views} views, {s.points} points), skipped "
          f"{s.skipped} already finished, failed {s.failed} -> {s.out}")
    print(f"time {s.seconds:.1f} s (load + model pipeline {s.pipeline_s:.1f} s)")
    random = " (RANDOM weights: not a real reconstruction)" if s.weights_id.startswith("random") else ""
    print(f"weights: {s.weights_id}{random}")
    for f in s.failures[:20]:
        print(f"  error [{f['stage']}] {f['scene'] or '-'}: {f['image_path'] or f['scene']}: "
              f"{f['error_type']}: {f['message']}")
    if len(s.failures) > 20:
        print(f"  ... and {len(s.failures) - 20} more (see {s.out}/errors.parquet)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    overrides = [s for s in args.items if _OVERRIDE.match(s) and not os.path.exists(s)]
    inputs = [s for s in args.items if s not in overrides]
    try:
        if args.summary is not None:
            if inputs or overrides or args.out:
                raise InputError("--summary takes an output directory only")
            print_output_summary(args.summary)
            return 0
        if not args.out:
            raise InputError("--out is required: the output directory")
        summary = run_reconstruct(inputs, args.out, overrides, args.address)
    except TomerayError as e:
        print(f"tomeray reconstruct: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tomeray reconstruct: interrupted; finished scenes are kept, rerun to resume", file=sys.stderr)
        return 130
    _print_run(summary)
    return summary.exit_code
