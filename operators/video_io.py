"""Reading videos with decord, shared by the decode stage (indexing) and the scene loader (video
scenes): the formats, the errors, the container checks, and frame access that stays correct when
timestamps are broken.

Random access and broken timestamps: decord seeks by presentation timestamp. Containers without
usable timestamps (e.g. MPEG-4 AVIs with packed B-frames such as opencv-doc's ``Megamind.avi``)
make ``get_batch``, ``seek`` and ``skip_frames`` return *wrong frames without an error*. Such
videos are therefore read sequentially (every frame up to the last one needed), which gives the
same frames as OpenCV's sequential reader; videos with monotonic timestamps use ``get_batch``.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from tomeray.models.errors import InputError

__all__ = ["VIDEO_EXTENSIONS", "CorruptVideoError", "FrameReader", "TruncatedVideoError",
           "UnreadableVideoError",            "container_truncation", "has_usable_timestamps", "load_decord"]

VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp", ".ogv",
)


class UnreadableVideoError(InputError):
    """The file is missing, empty, or not a video decord can open."""


class TruncatedVideoError(InputError):
    """The container declares more data than the file holds."""


class CorruptVideoError(InputError):
    """The decoder reported damaged data."""


def load_decord():
    """The decord module, imported only after OpenCV. decord's bundled FFmpeg brings its own zlib;
    loaded first, it breaks OpenCV's PNG decoding for the rest of the process ("libpng error: bad
    parameters to zlib"), which would fail image loading in any Ray worker that decoded a video."""
    import cv2  # noqa: F401 - must be loaded before decord
    import decord

    return decord


def has_usable_timestamps(reader) -> bool:
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


class FrameReader:
    """Frames of one decord ``VideoReader`` by frame number, in increasing order across calls:
    ``get_batch`` when the timestamps allow seeking, else one sequential pass that never goes back
    (each call continues where the previous one stopped)."""

    def __init__(self, reader, seekable: bool | None = None):
        self.reader = reader
        self.n_frames = len(reader)
        self.seekable = has_usable_timestamps(reader) if seekable is None else seekable
        self.position = 0  # next frame of the sequential pass

    def read(self, indices) -> np.ndarray:
        """(k, H, W, 3) uint8 frames for ascending frame numbers ``indices``."""
        indices = np.asarray(indices, np.int64)
        if self.seekable:
            return self.reader.get_batch(indices).asnumpy()
        if len(indices) and indices[0] < self.position:
            raise ValueError(f"sequential reads go forward: frame {indices[0]} is behind {self.position}")
        wanted, frames = set(indices.tolist()), {}
        last = int(indices.max()) if len(indices) else -1
        while self.position <= last:
            try:
                frame = self.reader.next()
            except StopIteration:
                raise CorruptVideoError(f"the container claims {self.n_frames} frames but only "
                                        f"{self.position} could be decoded") from None
            if self.position in wanted:
                frames[self.position] = frame.asnumpy()
            self.position += 1
        return np.stack([frames[int(i)] for i in indices])

    def close(self) -> None:
        """Release the reader (this joins decord's read-ahead thread, so its messages are out)."""
        self.reader = None
