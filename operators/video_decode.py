"""Decode videos into fixed-size clips of uint8 frames with decord (a Ray Data stage run as tasks).

One input row (``path``, ``key``) becomes one output row per clip: the whole video, or in segment
mode one row per window of ``segment_s`` seconds. Frames are decoded straight to the model's
resolution (decord scales while decoding, shorter side -> ``image_size``) and centre-cropped, so a
row carries ``(T, S, S, 3)`` uint8, not full-size frames.

Random access and broken timestamps: decord seeks by presentation timestamp. Containers without
usable timestamps (e.g. MPEG-4 AVIs with packed B-frames such as opencv-doc's ``Megamind.avi``)
make ``get_batch``, ``seek`` and ``skip_frames`` return *wrong frames without an error*. Such
videos are therefore read sequentially (every frame up to the last one needed), which gives the
same frames as OpenCV's sequential reader; videos with monotonic timestamps use ``get_batch``.

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
import struct
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from tomeray.models.errors import InputError
from tomeray.models.frames import center_crop, resized_hw, sample_frame_indices

__all__ = [
    "Clip",
    "CorruptVideoError",
    "TruncatedVideoError",
    "UnreadableVideoError",
    "VideoDecoder",
    "decode_clips",
    "empty_clip_row",
    "segment_windows",
]


class UnreadableVideoError(InputError):
    """The file is missing, empty, or not a video decord can open."""


class TruncatedVideoError(InputError):
    """The container declares more data than the file holds."""


class CorruptVideoError(InputError):
    """The decoder reported damaged data."""


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


def _has_usable_timestamps(reader) -> bool:
    """True when every frame has a finite, non-negative, strictly increasing start time."""
    try:
        pts = np.asarray(reader.get_frame_timestamp(np.arange(len(reader))), dtype=np.float64)
    except Exception:  # noqa: BLE001 - decord raises its own error types; any failure means "no"
        return False
    starts = pts.reshape(len(reader), -1)[:, 0]
    return bool(np.isfinite(starts).all() and (starts >= 0).all() and (np.diff(starts) > 0).all())


def container_truncation(path: str | os.PathLike) -> str | None:
    """Why the file is shorter than its container says (RIFF/AVI, ISO-BMFF/MP4/MOV), or None.

    Walks the top-level chunks/boxes by their size fields only; other containers return None."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] == b"RIFF":  # AVI: RIFF 'AVI ' chunk, then 'AVIX' chunks for files over 1 GB
            position = 0
            while position + 8 <= size:
                f.seek(position)
                tag, length = struct.unpack("<4sI", f.read(8))
                end = position + 8 + length + (length & 1)
                if end > size + (length & 1):
                    return f"the {tag.decode('latin-1')!r} chunk ends at byte {end}, the file has {size}"
                position = end
            return None
        if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
            position = 0
            while position + 8 <= size:
                f.seek(position)
                length, kind = struct.unpack(">I4s", f.read(8))
                if length == 1:
                    length = struct.unpack(">Q", f.read(8))[0]
                elif length == 0:  # the last box runs to the end of the file
                    return None
                if length < 8:
                    return f"box {kind!r} at byte {position} has an invalid size {length}"
                if position + length > size:
                    end = position + length
                    return f"box {kind.decode('latin-1')!r} ends at byte {end}, the file has {size}"
                position += length
    return None


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
) -> Iterator[Clip]:
    """Decode the clips of one video, in time order. Raises on unreadable or damaged input
    (damage reported by the decoder is ignored when ``strict`` is False)."""
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
            for clip in _decode(path, image_size, num_frames, sample_fps, segment_s, num_threads):
                damaged(log)
                yield clip
        except UnreadableVideoError as e:
            reason = log.messages()
            raise UnreadableVideoError(f"{e}: {reason[-1]}" if reason else str(e)) from None
        damaged(log)


def load_decord():
    """The decord module, imported only after OpenCV. decord's bundled FFmpeg brings its own zlib;
    loaded first, it breaks OpenCV's PNG decoding for the rest of the process ("libpng error: bad
    parameters to zlib"), which would fail image loading in any Ray worker that decoded a video."""
    import cv2  # noqa: F401 - must be loaded before decord
    import decord

    return decord


def _decode(path: str, image_size: int, num_frames: int, sample_fps: float | None,
            segment_s: float | None, num_threads: int) -> Iterator[Clip]:
    decord = load_decord()

    try:
        probe = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        n_frames, fps = len(probe), float(probe.get_avg_fps())
        height, width = probe.next().shape[:2]
    except (RuntimeError, AssertionError, StopIteration, decord.DECORDError):
        raise UnreadableVideoError("not a readable video") from None
    seekable = _has_usable_timestamps(probe)
    del probe
    h, w = resized_hw(height, width, image_size)
    reader = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=num_threads)
    if len(reader) != n_frames:
        raise CorruptVideoError(f"the frame count changes between reads ({n_frames} vs {len(reader)})")
    duration = n_frames / fps if math.isfinite(fps) and fps > 0 else float("nan")

    plans = []
    for start, end in segment_windows(n_frames, fps, segment_s):
        local = sample_frame_indices(end - start, fps, num_frames, sample_fps)
        plans.append((start, end, local + start))

    def clip(start: int, end: int, indices: np.ndarray, frames: np.ndarray) -> Clip:
        crops = center_crop(frames, image_size)
        out = np.zeros((num_frames, image_size, image_size, 3), np.uint8)
        out[: len(crops)] = crops
        mask = np.arange(num_frames) < len(crops)
        to_s = (lambda f: f / fps) if math.isfinite(duration) else (lambda f: float("nan"))
        return Clip(out, mask, indices.astype(np.int64), to_s(start), to_s(end), duration, fps, n_frames)

    if seekable:
        for number, (start, end, indices) in enumerate(plans):
            frames = reader.get_batch(indices).asnumpy()
            if number == len(plans) - 1:
                reader = None  # joins decord's read-ahead thread, so its messages are captured now
            yield clip(start, end, indices, frames)
        return
    # Sequential: one pass over the frames, each clip emitted as soon as its last frame is read.
    wanted: dict[int, np.ndarray] = {}
    needed = {int(i) for _, _, idx in plans for i in idx}
    position = 0
    for start, end, indices in plans:
        last = int(indices.max())
        while position <= last:
            try:
                frame = reader.next()
            except StopIteration:
                raise CorruptVideoError(
                    f"the container claims {n_frames} frames but only {position} could be decoded") from None
            if position in needed:
                wanted[position] = frame.asnumpy()
            position += 1
        frames = np.stack([wanted[int(i)] for i in indices])
        if end == plans[-1][1]:
            reader = None  # joins decord's read-ahead thread, so its messages are captured now
        yield clip(start, end, indices, frames)
        wanted.clear()  # windows are disjoint and in order: later clips need later frames only


def empty_clip_row(num_frames: int, image_size: int) -> dict:
    """The frame columns of a row that carries no frames (a failed input)."""
    return {
        "frames": np.zeros((num_frames, image_size, image_size, 3), np.uint8),
        "mask": np.zeros(num_frames, bool),
        "frame_indices": np.zeros(0, np.int64),
    }


class VideoDecoder:
    """Ray Data stage: ``{path, key, video_id}`` rows -> clip rows (see the module docstring).

    Use an *instance* with ``map_batches`` so it runs as stateless tasks; construction is cheap."""

    def __init__(
        self,
        image_size: int = 224,
        num_frames: int = 12,
        sample_fps: float | None = None,
        segment_s: float | None = None,
        num_threads: int = 1,
        strict: bool = True,
    ):
        self.strict = bool(strict)
        self.image_size = int(image_size)
        self.num_frames = int(num_frames)
        self.sample_fps = sample_fps
        self.segment_s = segment_s
        self.num_threads = int(num_threads)

    def rows(self, path: str, key: str, video_id: int) -> Iterator[dict]:
        """Output rows of one video: one per clip, or a single error row."""
        from tomeray.pipeline.index_layout import stable_id  # ids are defined by the index layout

        node = _node_id()
        base = {"path": path, "key": key, "decode_node": node, "error_stage": "", "error_type": "",
                "error_message": ""}
        emitted = 0
        try:
            for c in decode_clips(path, self.image_size, self.num_frames, self.sample_fps, self.segment_s,
                                  self.num_threads, self.strict):
                segmented = bool(self.segment_s) and self.segment_s > 0
                yield {
                    **base,
                    "video_id": stable_id(key, c.start_s) if segmented else int(video_id),
                    "start_s": c.start_s, "end_s": c.end_s, "duration_s": c.duration_s, "fps": c.fps,
                    "n_frames": c.n_frames, "frame_indices": c.frame_indices, "frames": c.frames,
                    "mask": c.mask,
                }
                emitted += 1
        except Exception as e:  # noqa: BLE001 - any decoder failure is this input's error, not the job's
            message = _one_line(e)
            if emitted:
                message = f"after {emitted} clip(s): {message}"
            nan = float("nan")
            yield {**base, **empty_clip_row(self.num_frames, self.image_size), "video_id": int(video_id),
                   "start_s": nan, "end_s": nan, "duration_s": nan, "fps": nan, "n_frames": 0,
                   "error_stage": "decode", "error_type": type(e).__name__, "error_message": message}

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for path, key, video_id in zip(batch["path"], batch["key"], batch["video_id"]):
            for row in self.rows(str(path), str(key), int(video_id)):
                yield _as_batch([row])


def _as_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    batch = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        if name == "frame_indices":  # ragged: an object column of int64 arrays
            column = np.empty(len(values), dtype=object)
            column[:] = values
            batch[name] = column
        else:
            batch[name] = np.stack(values) if isinstance(values[0], np.ndarray) else np.asarray(values)
    return batch


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    # decord appends C++ stack traces to its messages; keep the human part.
    return text.split(" Stack trace")[0][:500]


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # noqa: BLE001 - node ids are diagnostics only
        return "unknown"
