"""Small JPEG thumbnails of video rows, for search results.

The decode stage makes one per clip from a frame it has already decoded (the middle sampled frame,
before the centre crop, so the picture keeps its aspect ratio): :func:`thumbnail_jpeg`. Rows indexed
before thumbnails existed get theirs from :func:`thumbnails_of`, which decodes just those frames
(a rerun of ``tomeray index`` backfills them, and the search service uses it for old indexes).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from tomeray.models.frames import resized_hw
from tomeray.operators.video_io import FrameReader, load_decord

__all__ = ["THUMBNAIL_MAX", "ThumbnailMaker", "middle_frame", "thumbnail_jpeg", "thumbnails_of"]

THUMBNAIL_MAX = (320, 180)  # width, height: a 16:9 box; other shapes fit inside it
JPEG_QUALITY = 80  # ~6-12 KB per thumbnail


def thumbnail_jpeg(frame: np.ndarray, max_size: tuple[int, int] = THUMBNAIL_MAX,
                   quality: int = JPEG_QUALITY) -> bytes:
    """An (H, W, 3) uint8 RGB frame -> JPEG bytes, scaled down (never up) to fit ``max_size``."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise ValueError(f"a thumbnail needs an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}")
    height, width = frame.shape[:2]
    scale = min(1.0, max_size[0] / width, max_size[1] / height)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any valid uint8 image
        raise ValueError("OpenCV could not encode the thumbnail")
    return data.tobytes()


def middle_frame(frame_indices) -> int:
    """The frame a row's thumbnail shows: the middle one of the frames sampled for it."""
    indices = np.asarray(frame_indices, np.int64)
    return int(indices[len(indices) // 2]) if len(indices) else 0


def thumbnails_of(path: str | os.PathLike, frames: list[int], short_side: int = 224) -> list[bytes]:
    """Thumbnails of the given frame numbers of one video, decoded at ``short_side`` pixels (as the
    decode stage sees them). Raises on unreadable videos; frames past the end give the last one."""
    decord = load_decord()
    probe = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0))
    n_frames = len(probe)
    if n_frames == 0:
        raise ValueError(f"'{path}' has no frames")
    height, width = probe.next().shape[:2]
    del probe
    h, w = resized_hw(height, width, short_side)
    reader = FrameReader(decord.VideoReader(os.fspath(path), ctx=decord.cpu(0), width=w, height=h))
    wanted = np.clip(np.asarray(frames, np.int64), 0, n_frames - 1)
    unique = np.unique(wanted)  # FrameReader reads ascending numbers, each once
    decoded = dict(zip(unique.tolist(), reader.read(unique)))
    reader.close()
    return [thumbnail_jpeg(decoded[int(f)]) for f in wanted]


class ThumbnailMaker:
    """Ray Data stage for rows indexed without thumbnails: ``{path, video_ids, frames}`` (one video,
    its rows' ids and thumbnail frame numbers) -> ``{video_id, thumbnail}`` rows. A video that cannot
    be read gives no rows (its rows keep no thumbnail; the search service shows a placeholder)."""

    def __init__(self, short_side: int = 224):
        self.short_side = int(short_side)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, thumbnails = [], []
        for path, video_ids, frames in zip(batch["path"], batch["video_ids"], batch["frames"]):
            try:
                made = thumbnails_of(str(path), [int(f) for f in frames], self.short_side)
            except Exception:  # noqa: BLE001 - a video that no longer decodes just keeps no thumbnail
                continue
            ids.extend(int(i) for i in video_ids)
            thumbnails.extend(made)
        column = np.empty(len(thumbnails), dtype=object)
        column[:] = thumbnails
        return {"video_id": np.asarray(ids, np.int64), "thumbnail": column}
