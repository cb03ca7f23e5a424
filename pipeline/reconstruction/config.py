"""Configuration of ``tomeray reconstruct`` (defaults: ``configs/reconstruct.yaml``;
``tomeray config reconstruct`` prints them), its checks, and the settings an output pins."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tomeray.models.device import InferenceConfig
from tomeray.models.errors import ConfigError
from tomeray.models.vggt import VGGTModelConfig
from tomeray.operators.scene_load import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from tomeray.operators.video_io import VIDEO_EXTENSIONS
from tomeray.pipeline.core.config import config_to_dict
from tomeray.pipeline.core.graph import ActorPoolConfig, RayJobConfig, TaskPoolConfig

__all__ = ["CamerasConfig", "ExportConfig", "LoadConfig", "PointsConfig", "ReconConfig", "RefineConfig",
           "VideoConfig", "ViewsConfig",
           "pinned_settings", "resolve_weights_id", "validate"]



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
    # chunks: all views, in overlapping chunks chained by Sim(3) fits; subsample: evenly spaced
    # views; split: all views, in chunks anchored on view 0
    policy: str = "chunks"
    chunk: int | None = None  # views per chunk (policy chunks; None: max_views)
    overlap: int | None = None  # views shared by neighbouring chunks (None: half a chunk)


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
    glb: bool = False  # glb/<scene>.glb: points and camera frustums (binary glTF, trimesh)
    colmap_binary: bool = False  # colmap/<scene>/sparse/0/*.bin + images/ links (splatting tools)
    camera_model: str = "PINHOLE"  # PINHOLE | SIMPLE_PINHOLE (of the binary model)
    shared_camera: bool = False  # one camera for all images of a scene (binary model)


@dataclass
class RefineConfig:
    ba: bool = False  # bundle adjustment of the predicted cameras (pycolmap)
    tracks: str = "features"  # features: OpenCV SIFT | vggt: the model's track head
    refine_intrinsics: bool = False  # refine focal lengths (never with cameras.intrinsics)
    loss: str = "huber"  # trivial | huber | soft_l1 | cauchy
    loss_scale_px: float = 4.0
    max_iterations: int = 100
    max_features: int = 2048  # SIFT keypoints per view
    match_window: int = 0  # match views at most this far apart in capture order (0: all pairs)
    max_query_points: int = 512  # vggt tracks: query points per chunk


@dataclass
class CamerasConfig:
    intrinsics: str | None = None  # OpenCV YAML (camera_matrix / M1), COLMAP cameras.txt, or CSV


@dataclass
class ReconConfig:
    model: VGGTModelConfig = field(default_factory=VGGTModelConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    points: PointsConfig = field(default_factory=PointsConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    cameras: CamerasConfig = field(default_factory=CamerasConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # load tasks of half a CPU and 1 GB; one VGGT actor of a whole CPU per GPU, or one on CPU-only clusters
    ray: RayJobConfig = field(default_factory=lambda: RayJobConfig(tasks=TaskPoolConfig(memory_mb=1024),
                                                                   actors=ActorPoolConfig(num_cpus=1.0)))


def validate(cfg: ReconConfig) -> None:
    checks = [
        (cfg.load.mode in ("crop", "pad"), f"load.mode must be crop or pad; got {cfg.load.mode!r}"),
        (cfg.load.size > 0 and cfg.load.size % 14 == 0, f"load.size must be a positive multiple of 14; "
                                                         f"got {cfg.load.size}"),
        (cfg.views.policy in ("chunks", "subsample", "split"), f"views.policy must be chunks, subsample or "
                                                               f"split; got {cfg.views.policy!r}"),
        (cfg.views.chunk is None or cfg.views.chunk >= 2, f"views.chunk must be >= 2; got {cfg.views.chunk}"),
        (cfg.views.overlap is None or 1 <= cfg.views.overlap < chunk_size(cfg.views),
         f"views.overlap must be in [1, views.chunk - 1]; got {cfg.views.overlap}"),
        (cfg.refine.tracks in ("features", "vggt"), f"refine.tracks must be features or vggt; "
                                                    f"got {cfg.refine.tracks!r}"),
        (cfg.refine.loss in ("trivial", "huber", "soft_l1", "cauchy"),
         f"refine.loss must be trivial, huber, soft_l1 or cauchy; got {cfg.refine.loss!r}"),
        (not (cfg.refine.refine_intrinsics and cfg.cameras.intrinsics),
         "refine.refine_intrinsics=true contradicts cameras.intrinsics (given intrinsics are held fixed)"),
        (cfg.export.camera_model in ("PINHOLE", "SIMPLE_PINHOLE"),
         f"export.camera_model must be PINHOLE or SIMPLE_PINHOLE; got {cfg.export.camera_model!r}"),
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
        (cfg.ray.actors.batch_size in (0, 1),
         "ray.actors.batch_size must be 0 or 1: the model takes one scene per call"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    from tomeray.models.vggt import get_arch

    arch = get_arch(cfg.model.arch)  # a ConfigError naming the valid archs
    if cfg.refine.ba and cfg.refine.tracks == "vggt" and not arch.track_head:
        raise ConfigError(f"refine.tracks=vggt needs a model with a track head; {cfg.model.arch} has none "
                          "(use refine.tracks=features, or model.arch=vggt-1b)")


def chunk_size(views: ViewsConfig) -> int:
    return views.chunk or views.max_views


def chunk_overlap(views: ViewsConfig) -> int:
    return views.overlap if views.overlap is not None else max(1, chunk_size(views) // 2)


def pinned_settings(cfg: ReconConfig, weights_id: str) -> dict:
    """What shapes the results; a rerun into the same output must use the same."""
    d = config_to_dict(cfg)
    return json.loads(json.dumps({
        # the resolved weights, not how they were named (a relative or absolute path, say)
        "model": {**{k: v for k, v in d["model"].items() if k != "pretrained"}, "weights_id": weights_id},
        "load": {k: d["load"][k] for k in ("mode", "size")},
        "video": {k: d["video"][k] for k in ("num_frames", "fps")},
        "views": d["views"],
        "points": d["points"],
        "refine": d["refine"],
    }))


def resolve_weights_id(model: VGGTModelConfig) -> str:
    """Which weights the actors will load, resolved on the driver without building the model (a
    missing checkpoint or an offline hub id fails here, before any work starts)."""
    from tomeray.models.vggt.weights import is_random, random_init_id, resolve_checkpoint

    if is_random(model.pretrained):
        return random_init_id(model.seed)
    return resolve_checkpoint(model.pretrained)[1]
