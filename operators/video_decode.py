"""Decode videos into fixed-size clips of uint8 frames with decord (a Ray Data stage run as tasks).

One input row (``path``, ``key``) becomes one output row per clip: the whole video, or in segment
mode one row per window of ``segment_s`` seconds; a row that names a time range (finite ``start_s`` and
``end_s`` columns) becomes one clip of that range. Frames are decoded straight to the model's
resolution (decord scales while decoding, shorter side -> ``image_size``) and centre-cropped, so a
row carries ``(T, S, S, 3)`` uint8, not full-size frames, and what producing it cost
(``decode_cpu_s``, ``decode_wall_s``, ``decode_done_at``: ``operators.worker``); with ``thumbnails``
also a small JPEG of one of its frames (``operators.thumbnail``), for search results.

Videos without usable timestamps are read sequentially (``operators.video_io.FrameReader``).

Damage is an error, not a silent degradation. Besides files decord cannot open, two checks catch
files that would otherwise decode "successfully" with missing or garbage frames:

* truncation: the container's own size fields (RIFF/AVI chunks, ISO-BMFF/MP4/MOV boxes) say the
  file should be longer than it is;
* corruption: FFmpeg (inside decord) logs an error while decoding (decord's default log level
  shows errors only, and healthy files log nothing). The decode stage captures that log and
  fails the video with FFmpeg's first message. ``strict=False`` indexes such videos anyway.

A video that fails yields one row with ``error_type`` / ``error_message`` set (stage ``decode``)
and an empty mask; it never raises, so one bad file cannot fail a job.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from tomeray.models.errors import InputError, one_line
from tomeray.models.frames import center_crop, resized_hw, sample_frame_indices
from tomeray.operators.thumbnail import thumbnail_jpeg
from tomeray.operators.video_io import (
    CorruptVideoError,
    FrameReader,
    TruncatedVideoError,
    UnreadableVideoError,
    container_truncation,
    has_usable_timestamps,
    load_decord,
)
from tomeray.operators.worker import node_id, timed_steps

__all__ = [
    "Clip",
    "CorruptVideoError",
    "TruncatedVideoError",
    "UnreadableVideoError",
    "VideoDecoder",
    "decode_clips",
    "empty_clip_row",
    "row_window",
    "segment_windows",
    "time_window",
]


@dataclass
class Clip:
    """One decoded clip (a whole video or a window of it)."""

    frames: np.ndarray  # (T, S, S, 3) uint8, padded with zeros after the valid frames
    mask: np.ndarray  # (T,) bool, True for real frames
    frame_indices: np.ndarray  # (k,) int64, the decoded frame numbers (k <= T)
    start_s: float
    end_s: float
    duration_s: float  # of the whole video
    fps: float
    n_frames: int  # of the whole video
    thumbnail: bytes = b""  # JPEG of the middle sampled frame (when asked for), b"" otherwise


def segment_windows(n_frames: int, fps: float, segment_s: float | None) -> list[tuple[int, int]]:
    """Frame ranges ``[start, end)`` of the clips of a video: the whole video when ``segment_s`` is
    not positive or the fps is unusable, else consecutive windows of ``segment_s`` seconds (the
    last one may be shorter). Deterministic, so a rerun can tell whether a video is complete."""
    if n_frames < 1:
        return []
    if not segment_s or segment_s <= 0 or not math.isfinite(fps) or fps <= 0:
        return [(0, n_frames)]
    step = segment_s * fps
    count = max(1, math.ceil(n_frames / step - 1e-9))
    bounds = [min(n_frames, int(round(i * step))) for i in range(count)] + [n_frames]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def time_window(n_frames: int, fps: float, start_s: float, end_s: float) -> tuple[int, int]:
    """Frame range ``[start, end)`` of the clip from ``start_s`` to ``end_s`` seconds (at least one
    frame; the end is clamped to the video). Raises when the range is not inside the video."""
    if not (math.isfinite(start_s) and math.isfinite(end_s)) or start_s < 0 or end_s <= start_s:
        raise InputError(f"clip range {start_s}-{end_s} s is not a range (0 <= start_s < end_s)")
    if not math.isfinite(fps) or fps <= 0:
        raise InputError("the video has no usable frame rate, so a clip's time range cannot be located")
    start = int(math.floor(start_s * fps + 1e-9))
    if start >= n_frames:
        raise InputError(f"clip range starts at {start_s:g} s but the video is {n_frames / fps:.2f} s long")
    return start, max(start + 1, min(n_frames, int(math.ceil(end_s * fps - 1e-9))))


_FFMPEG_LINE = re.compile(r"^\[[\w.,-]+ @ 0x[0-9a-fA-F]+\]\s*(.*\S)?")
_DECORD_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+\.cc:\d+: (.*\S)")


class _DecoderLog:
    """Captures what FFmpeg and decord write to file descriptor 2 (C code, bypassing Python).

    decord decodes ahead in a background thread, so a reader must be released *inside* the
    capture for all its messages to land here. Lines that are neither FFmpeg's nor decord's are
    passed on to stderr when the capture ends. In a Ray task the capture is safe: the task runs
    alone in its worker process and the descriptor is restored when the video is done."""

    def __enter__(self) -> _DecoderLog:
        self._sink = tempfile.TemporaryFile()
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(self._sink.fileno(), 2)
        return self

    def _lines(self) -> list[str]:
        self._sink.seek(0)
        return self._sink.read().decode("utf-8", "replace").splitlines()

    def _parse(self) -> tuple[list[str], list[str]]:
        messages: list[str] = []
        others: list[str] = []
        continued = False
        for line in self._lines():
            match = _FFMPEG_LINE.match(line) or _DECORD_LINE.match(line)
            if match:
                messages.append(match.group(1) or "")
                continued = not match.group(1)
            elif continued:  # FFmpeg prints "[ctx @ 0x..] " and then the text on its own line
                messages[-1], continued = line.strip(), False
            elif line.strip():
                others.append(line)
        return [m for m in messages if m], others

    def messages(self) -> list[str]:
        """FFmpeg's and decord's messages so far, one per message."""
        return self._parse()[0]

    def __exit__(self, *exc) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        others = self._parse()[1]
        self._sink.close()
        for line in others:
            print(line, file=sys.stderr)


def decode_clips(
    path: str | os.PathLike,
    image_size: int = 224,
    num_frames: int = 12,
    sample_fps: float | None = None,
    segment_s: float | None = None,
    num_threads: int = 1,
    strict: bool = True,
    *,
    thumbnails: bool = False,
    window: tuple[float, float] | None = None,
    segmenter=None,
    stored_shots: str = "",
) -> Iterator[Clip]:
    """Decode the clips of one video, in time order. Raises on unreadable or damaged input
    (damage reported by the decoder is ignored when ``strict`` is False). ``thumbnails``: each clip
    carries a JPEG of its middle sampled frame. ``window``: one clip of that ``(start_s, end_s)``
    range instead (``segment_s`` is then ignored). ``segmenter``: one clip per shot
    (:class:`tomeray.operators.shot_decode.ShotSegmenter`; ``stored_shots``: its known shots)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UnreadableVideoError(f"'{path}' does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise UnreadableVideoError("permission denied: the file is not readable")
    if os.path.getsize(path) == 0:
        raise UnreadableVideoError("the file is empty (0 bytes)")
    truncated = container_truncation(path)
    if truncated:
        raise TruncatedVideoError(f"the file is truncated: {truncated}")

    def damaged(log: _DecoderLog) -> None:
        messages = log.messages()
        if messages and strict:
            more = f" (and {len(messages) - 1} more decoder errors)" if len(messages) > 1 else ""
            raise CorruptVideoError(f"the decoder reported damaged data: {messages[0]}{more}")

    with _DecoderLog() as log:
        try:
            for clip in _decode(path, image_size, num_frames, sample_fps, segment_s, num_threads, thumbnails,
                                window, segmenter, stored_shots):
                damaged(log)
                yield clip
        except UnreadableVideoError as e:
            reason = log.messages()
            raise UnreadableVideoError(f"{e}: {reason[-1]}" if reason else str(e)) from None
        damaged(log)


def _decode(path: str, image_size: int, num_frames: int, sample_fps: float | None,
            segment_s: float | None, num_threads: int, thumbnails: bool = False,
            window: tuple[float, float] | None = None, segmenter=None,
            stored_shots: str = "") -> Iterator[Clip]:
    decord = load_decord()

    try:
        probe = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        n_frames, fps = len(probe), float(probe.get_avg_fps())
        height, width = probe.next().shape[:2]
    except (RuntimeError, AssertionError, StopIteration, decord.DECORDError):
        raise UnreadableVideoError("not a readable video") from None
    seekable = has_usable_timestamps(probe)
    del probe
    h, w = resized_hw(height, width, image_size)
    reader = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=num_threads)
    if len(reader) != n_frames:
        raise CorruptVideoError(f"the frame count changes between reads ({n_frames} vs {len(reader)})")
    duration = n_frames / fps if math.isfinite(fps) and fps > 0 else float("nan")

    plans = []
    if window:
        ranges = [time_window(n_frames, fps, *window)]
    elif segmenter is not None:
        ranges = segmenter.plan(path, n_frames, fps, stored_shots)
    else:
        ranges = segment_windows(n_frames, fps, segment_s)
    for start, end in ranges:
        local = sample_frame_indices(end - start, fps, num_frames, sample_fps)
        plans.append((start, end, local + start))

    def clip(start: int, end: int, indices: np.ndarray, frames: np.ndarray) -> Clip:
        crops = center_crop(frames, image_size)
        out = np.zeros((num_frames, image_size, image_size, 3), np.uint8)
        out[: len(crops)] = crops
        mask = np.arange(num_frames) < len(crops)
        to_s = (lambda f: f / fps) if math.isfinite(duration) else (lambda f: float("nan"))
        # the uncropped frame keeps the picture's shape
        thumbnail = thumbnail_jpeg(frames[len(frames) // 2]) if thumbnails and len(frames) else b""
        return Clip(out, mask, indices.astype(np.int64), to_s(start), to_s(end), duration, fps, n_frames,
                    thumbnail)

    # Windows are disjoint and in order, so even a sequential reader makes one pass, and each clip
    # is emitted as soon as its last frame is read.
    frames_of = FrameReader(reader, seekable)
    del reader
    for number, (start, end, indices) in enumerate(plans):
        frames = frames_of.read(indices)
        if number == len(plans) - 1:
            frames_of.close()  # decord's read-ahead thread is joined, so its messages are captured now
        yield clip(start, end, indices, frames)


def row_window(start_s, end_s) -> tuple[float, float] | None:
    """The time range a row names, or None (whole video) when either end is missing or NaN."""
    if start_s is None or end_s is None:
        return None
    start, end = float(start_s), float(end_s)
    return (start, end) if math.isfinite(start) and math.isfinite(end) else None


def empty_clip_row(num_frames: int, image_size: int) -> dict:
    """The frame columns of a row that carries no frames (a failed input)."""
    return {
        "frames": np.zeros((num_frames, image_size, image_size, 3), np.uint8),
        "mask": np.zeros(num_frames, bool),
        "frame_indices": np.zeros(0, np.int64),
        "thumbnail": b"",
    }


class VideoDecoder:
    """Ray Data stage: ``{path, key}`` rows -> clip rows (see the module docstring).

    Use an *instance* with ``map_batches`` so it runs as stateless tasks; construction is cheap."""

    def __init__(
        self,
        image_size: int = 224,
        num_frames: int = 12,
        sample_fps: float | None = None,
        segment_s: float | None = None,
        num_threads: int = 1,
        strict: bool = True,
        thumbnails: bool = False,
        shots: dict | None = None,
    ):
        self.shots = shots  # ShotSegmenter's arguments: one row per shot (segment_s is then ignored)
        self.strict = bool(strict)
        self.thumbnails = bool(thumbnails)
        self.image_size = int(image_size)
        self.num_frames = int(num_frames)
        self.sample_fps = sample_fps
        self.segment_s = segment_s
        self.num_threads = int(num_threads)

    def rows(self, path: str, key: str, window: tuple[float, float] | None = None,
             stored_shots: str = "") -> Iterator[dict]:
        """Output rows of one video (or of its ``window``): one per clip, or a single error row."""
        base = {"path": path, "key": key, "decode_node": node_id(), "error_stage": "", "error_type": "",
                "error_message": ""}
        segmenter = None
        if self.shots is not None:
            from tomeray.operators.shot_decode import ShotSegmenter

            segmenter = ShotSegmenter(**self.shots, num_threads=self.num_threads)
            base.update(segmenter.columns(-1))
        emitted = 0
        try:
            for c in decode_clips(path, self.image_size, self.num_frames, self.sample_fps, self.segment_s,
                                  self.num_threads, self.strict, thumbnails=self.thumbnails,
                                  window=window, segmenter=segmenter, stored_shots=stored_shots):
                yield {
                    **base,
                    "start_s": c.start_s, "end_s": c.end_s, "duration_s": c.duration_s, "fps": c.fps,
                    "n_frames": c.n_frames, "frame_indices": c.frame_indices, "frames": c.frames,
                    "mask": c.mask, "thumbnail": c.thumbnail,
                    **(segmenter.columns(emitted) if segmenter is not None else {}),
                }
                emitted += 1
        except Exception as e:  # noqa: BLE001 - any decoder failure is this input's error, not the job's
            message = one_line(e)
            if emitted:
                message = f"after {emitted} clip(s): {message}"
            nan = float("nan")
            yield {**base, **empty_clip_row(self.num_frames, self.image_size),
                   "start_s": nan, "end_s": nan, "duration_s": nan, "fps": nan, "n_frames": 0,
                   "error_stage": "decode", "error_type": type(e).__name__, "error_message": message}

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        load_decord()  # the worker's first call imports the decoder: start-up, not a video's cost
        n = len(batch["path"])
        starts = batch.get("start_s", np.full(n, np.nan))
        ends = batch.get("end_s", np.full(n, np.nan))
        stored = batch.get("stored_shots", np.full(n, ""))
        for path, key, start, end, shots in zip(batch["path"], batch["key"], starts, ends, stored):
            rows = self.rows(str(path), str(key), row_window(start, end), str(shots or ""))
            for row, cost in timed_steps(rows):  # cost columns: operators.worker
                yield _as_batch([{**row, "decode_cpu_s": cost.cpu_s, "decode_wall_s": cost.wall_s,
                                  "decode_done_at": cost.done_at}])


def _as_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    batch = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        if name in ("frame_indices", "thumbnail"):  # ragged: object columns of int64 arrays / bytes
            column = np.empty(len(values), dtype=object)
            column[:] = values
            batch[name] = column
        else:
            batch[name] = np.stack(values) if isinstance(values[0], np.ndarray) else np.asarray(values)
    return batch
