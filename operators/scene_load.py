"""Load the views of one scene (an image folder, or frames of a video) and preprocess them for
VGGT (a Ray Data stage run as tasks, one scene per call).

Images are read with OpenCV from bytes (``cv2.imdecode``, ``IMREAD_UNCHANGED`` so that 16-bit
depth and alpha survive) and then:

* EXIF orientation is applied (read from the file header with Pillow), so an image is used the
  way viewers show it, as ``cv2.imread(path)`` with its default ``IMREAD_COLOR`` would; the
  width and height recorded for a view are those of the oriented image;
* grayscale becomes RGB, transparent pixels are composited on white (as the official VGGT loader
  does), 16-bit values are scaled to 8 bits, float images are taken as [0, 1];
* truncated JPEG / PNG files (no end marker), files OpenCV cannot decode, empty files and images
  over ``max_pixels`` are errors of that image only: the scene goes on with the others.

Views: at most ``max_views`` per scene with ``policy="subsample"`` (evenly spaced over the
scene's sorted images, first and last included; an image that fails is replaced by an unused
one), all of them with ``policy="chunks"`` or ``"split"`` (the reconstruct stage then runs them in
chunks).

The output row carries the model-ready views as uint8 (S, H, W, 3): the preprocessing makes
values k / 255 of 8-bit PIL resizes and white padding, so uint8 transport is lossless and 4x
smaller than float32. With them come, per view, the frame index, source path, original size
and where the original landed in the model input (for intrinsics in original pixels).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
from tomeray.models.errors import InputError, link_note, one_line
from tomeray.operators.video_io import FrameReader, container_truncation, load_decord
from tomeray.operators.worker import cost_columns, measure, node_id

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "SceneLoader",
    "load_scene_views",
    "read_image",
    "read_video_frames",
    "video_frame_indices",
    "view_order",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".jp2",
                    ".pbm", ".pgm", ".ppm", ".pnm", ".avif")
DEFAULT_MAX_PIXELS = 1 << 28  # 268 megapixels: about 800 MB decoded as RGB


class ImageReadError(InputError):
    """An image file could not be used (missing, empty, truncated, not decodable, too large)."""


# ------------------------------------------------------------------------------------------ images


def _truncation(data: bytes) -> str | None:
    """Why the bytes are a cut-off JPEG or PNG, or None. Entropy-coded JPEG data never contains
    0xFFD9 or 0xFFDA, so a complete file has its last end-of-image marker after its last scan."""
    if data[:2] == b"\xff\xd8":
        if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
            return "the JPEG data ends before its end-of-image marker (truncated file)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and data.rfind(b"IEND") < 0:
        return "the PNG has no IEND chunk (truncated file)"
    return None


def _header(data: bytes) -> tuple[int | None, int | None, int]:
    """(width, height, EXIF orientation) from the header, without decoding pixels; (None, None, 1)
    for formats Pillow does not know."""
    from PIL import Image

    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the size is checked by the caller
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "TIFF":
                orientation = im.getexif().get(0x0112, 1)
            else:  # JPEG, WebP and PNG with eXIf before the pixels: parsed at open, no decode needed
                raw = im.info.get("exif")
                orientation = Image.Exif()
                if raw:
                    orientation.load(raw)
                orientation = orientation.get(0x0112, 1)
            return im.size[0], im.size[1], int(orientation) if orientation in range(1, 9) else 1
    except Exception:  # noqa: BLE001 - Pillow cannot parse it; OpenCV may still decode it
        return None, None, 1
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an (H, W, C) array, as viewers (and OpenCV) do."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](img)) if orientation in ops else img


def _to_rgb8(img: np.ndarray) -> np.ndarray:
    """Decoded OpenCV array (gray / BGR / BGRA, 8 or 16 bit or float) -> (H, W, 3) uint8 RGB."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.round(np.clip(np.nan_to_num(img), 0.0, 1.0) * 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageReadError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels in (2, 4):  # with alpha: composite on white like the official loader
        alpha = img[:, :, -1:].astype(np.float32) / 255.0
        colour = img[:, :, :-1].astype(np.float32)
        img = np.round(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        channels -= 1
    if channels == 1:
        return np.repeat(img, 3, axis=2)
    if channels == 3:
        return np.ascontiguousarray(img[:, :, ::-1])  # BGR -> RGB
    raise ImageReadError(f"unsupported channel count {img.shape[2]}")


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, oriented (see the module docstring). Raises
    ``ImageReadError`` saying why the file cannot be used."""
    import cv2

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageReadError(f"cannot read the file: {e.strerror or e}") from None
    if not data:
        raise ImageReadError("the file is empty (0 bytes)")
    truncated = _truncation(data)
    if truncated:
        raise ImageReadError(truncated)
    width, height, orientation = _header(data)
    if width is not None and width * height > max_pixels:
        raise ImageReadError(f"the image is {width}x{height} ({width * height / 1e6:.0f} MP), over the "
                             f"limit of {max_pixels / 1e6:.0f} MP (load.max_pixels): downscale it first")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageReadError("not an image OpenCV can decode (corrupt, or not an image)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageReadError(f"the image is {img.shape[1]}x{img.shape[0]}, over load.max_pixels")
    return _orient(_to_rgb8(img), orientation)


# ------------------------------------------------------------------------------------------ videos


def video_frame_indices(n_frames: int, fps: float, num_frames: int = 16,
                        sample_fps: float | None = None) -> np.ndarray:
    """Frames to take from a video: every ``1 / sample_fps`` seconds when given (else every frame),
    then at most ``num_frames`` of those evenly spaced (first and last included; 0: no cap)."""
    if n_frames < 1:
        return np.zeros(0, np.int64)
    if sample_fps and sample_fps > 0 and math.isfinite(fps) and fps > 0:
        step = max(1.0, fps / sample_fps)
        idx = np.unique(np.round(np.arange(0, n_frames - 1e-9, step)).astype(np.int64))
    else:
        idx = np.arange(n_frames, dtype=np.int64)
    if num_frames > 0 and len(idx) > num_frames:
        idx = idx[np.unique(np.round(np.linspace(0, len(idx) - 1, num_frames)).astype(np.int64))]
    return idx


def read_video_frames(path: str | os.PathLike, num_frames: int = 16, sample_fps: float | None = None,
                      max_frames: int = 0, window_s: tuple[float, float] | None = None
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(frame numbers, RGB uint8 frames) sampled by ``video_frame_indices``, from the frames whose
    times lie in ``window_s`` (seconds, both ends included) when given; when ``max_frames`` > 0
    only that many of them, evenly spaced (the view budget), are decoded."""
    decord = load_decord()

    path = os.fspath(path)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise ImageReadError("the video file is missing or empty")
    truncated = container_truncation(path)
    if truncated:
        raise ImageReadError(f"the video is truncated: {truncated}")
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        n, fps = len(reader), float(reader.get_avg_fps())
    except (RuntimeError, decord.DECORDError) as e:
        raise ImageReadError(f"not a readable video: {str(e).splitlines()[0][:200]}") from None
    first = 0
    if window_s is not None and fps > 0:
        first = min(n, max(0, math.ceil(float(window_s[0]) * fps - 1e-6)))
        if math.isfinite(float(window_s[1])):
            n = min(n, math.floor(float(window_s[1]) * fps + 1e-6) + 1)
    indices = first + video_frame_indices(n - first, fps, num_frames, sample_fps)
    if max_frames > 0 and len(indices) > max_frames:
        indices = indices[view_order(len(indices), max_frames, "subsample")[:max_frames]]
        indices.sort()
    if not len(indices):
        raise ImageReadError("the video has no frames")
    return indices, list(FrameReader(reader).read(indices))


# ------------------------------------------------------------------------------------------- views


def view_order(n: int, max_views: int, policy: str = "subsample") -> list[int]:
    """The order in which to try a scene's ``n`` candidate views: with ``subsample`` and more than
    ``max_views`` candidates, ``max_views`` evenly spaced ones first, then the others as spares."""
    if policy != "subsample" or max_views <= 0 or n <= max_views:
        return list(range(n))
    chosen = np.unique(np.round(np.linspace(0, n - 1, max_views)).astype(int)).tolist()
    taken = set(chosen)
    return chosen + [i for i in range(n) if i not in taken]


def _pad_to(views: list[np.ndarray], infos: list[dict]) -> np.ndarray:
    """Pad views of different shapes with white, centred, to the largest height and width (the
    official loader's rule), updating the offsets."""
    H, W = max(v.shape[0] for v in views), max(v.shape[1] for v in views)
    if any(v.shape[:2] != (H, W) for v in views):
        log.info("views of different shapes %s padded with white to %dx%d",
                 sorted({v.shape[:2] for v in views}), H, W)
    out = np.full((len(views), H, W, 3), 255, np.uint8)
    for i, (v, info) in enumerate(zip(views, infos)):
        top, left = (H - v.shape[0]) // 2, (W - v.shape[1]) // 2
        out[i, top : top + v.shape[0], left : left + v.shape[1]] = v
        info["offset_xy"] = (info["offset_xy"][0] + left, info["offset_xy"][1] + top)
    return out


def load_scene_views(spec: dict, mode: str = "crop", size: int = 518, patch: int = 14,
                     max_views: int = 0, policy: str = "subsample", max_pixels: int = DEFAULT_MAX_PIXELS,
                     video_frames: int = 16, video_fps: float | None = None) -> dict:
    """Load and preprocess one scene. ``spec``: ``{"scene", "images": [paths], "frame_idx": [...]}``
    or ``{"scene", "video": path}`` (frames from ``"window_s": [start, end]`` seconds of it when given).
    Returns a dict with ``images`` (S, H, W, 3) uint8 and per-view ``frame_idx``, ``image_path``,
    ``orig_hw``, ``scale_xy``, ``offset_xy``, ``content_hw``; plus ``errors`` (rows for the errors
    table) and ``skipped`` (candidates beyond the view budget)."""
    import torch
    from tomeray.models.vggt.preprocess import preprocess_images

    errors: list[dict] = []
    loaded: list[tuple[int, str, np.ndarray]] = []  # (frame_idx, path, rgb)
    skipped = 0
    budget = max_views if policy == "subsample" else 0

    def fail(path: str, error: BaseException) -> None:
        errors.append({"path": path, "stage": "load", "error_type": type(error).__name__,
                       "message": one_line(error) + link_note(path)})

    if "video" in spec:
        try:
            indices, frames = read_video_frames(spec["video"], video_frames, video_fps, budget,
                                                spec.get("window_s"))
            loaded = [(int(i), spec["video"], f) for i, f in zip(indices, frames)]
        except (InputError, OSError, RuntimeError) as e:
            fail(spec["video"], e)
    else:
        paths, frame_idx = spec["images"], spec.get("frame_idx") or list(range(len(spec["images"])))
        order = view_order(len(paths), budget, policy)
        attempted = 0
        for i in order:
            if budget and len(loaded) >= budget:
                break
            attempted += 1
            try:
                loaded.append((int(frame_idx[i]), paths[i], read_image(paths[i], max_pixels)))
            except (InputError, OSError, MemoryError) as e:
                fail(paths[i], e)
        skipped = len(paths) - attempted
        loaded.sort(key=lambda item: item[0])

    views, infos = [], []
    for idx, path, rgb in loaded:
        try:  # one image at a time, so that one unusable shape loses only that image
            x, (info,) = preprocess_images([rgb], mode=mode, size=size, patch=patch, return_info=True)
        except InputError as e:
            fail(path, e)
            continue
        views.append((x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
        infos.append({"frame_idx": idx, "image_path": path, "orig_hw": info.original_hw,
                      "scale_xy": info.scale_xy, "offset_xy": info.offset_xy, "content_hw": info.resized_hw})
    images = _pad_to(views, infos) if views else np.zeros((0, patch, patch, 3), np.uint8)
    return {
        "images": images,
        "frame_idx": np.asarray([i["frame_idx"] for i in infos], np.int64),
        "image_path": [i["image_path"] for i in infos],
        "orig_hw": np.asarray([i["orig_hw"] for i in infos], np.int64).reshape(-1, 2),
        "scale_xy": np.asarray([i["scale_xy"] for i in infos], np.float64).reshape(-1, 2),
        "offset_xy": np.asarray([i["offset_xy"] for i in infos], np.float64).reshape(-1, 2),
        "content_hw": np.asarray([i["content_hw"] for i in infos], np.int64).reshape(-1, 2),
        "errors": errors,
        "skipped": skipped,
    }


class SceneLoader:
    """Ray Data stage: ``{scene, spec}`` rows (``spec`` a JSON string, see ``load_scene_views``) ->
    one row per scene with the preprocessed views and what loading it cost (``load_cpu_s``, ...:
    ``operators.worker``). Never raises for bad input: failures travel in the ``errors`` column (a
    JSON list of error rows)."""

    def __init__(self, mode: str = "crop", size: int = 518, patch: int = 14, max_views: int = 0,
                 policy: str = "subsample", max_pixels: int = DEFAULT_MAX_PIXELS, video_frames: int = 16,
                 video_fps: float | None = None):
        self.options = dict(mode=mode, size=size, patch=patch, max_views=max_views, policy=policy,
                            max_pixels=max_pixels, video_frames=video_frames, video_fps=video_fps)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(batch["spec"]) != 1:
            raise ValueError("SceneLoader takes one scene per batch (map_batches(batch_size=1))")
        load_decord()  # the worker's first call imports OpenCV (and decord): start-up, not a scene's cost
        from PIL import Image  # noqa: F401
        with measure() as cost:  # cost columns: operators.worker
            spec = json.loads(str(batch["spec"][0]))
            try:
                out = load_scene_views(spec, **self.options)
            except Exception as e:  # noqa: BLE001 - a bug or an unforeseen input must not fail the job
                log.exception("loading scene %s failed", spec["scene"])
                out = load_scene_views({"scene": spec["scene"], "images": []}, **self.options)
                out["errors"] = [{"path": "", "stage": "load", "error_type": type(e).__name__,
                                  "message": one_line(e)}]
        row = {k: out[k] for k in ("images", "frame_idx", "orig_hw", "scale_xy", "offset_xy", "content_hw")}
        return {
            "scene": np.asarray([spec["scene"]], dtype=object),
            **{k: v[None] for k, v in row.items()},
            "image_path": np.asarray([json.dumps(out["image_path"])], dtype=object),
            "skipped": np.asarray([out["skipped"]], np.int64),
            "errors": np.asarray([json.dumps(out["errors"])], dtype=object),
            "load_node": np.asarray([node_id()], dtype=object),
            **cost_columns("load", 1, cost),
        }

