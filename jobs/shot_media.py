"""Edited test videos with known shot boundaries, made of real footage (opencv-doc's videos and
photos), for ``jobs/bench_shots.py`` and the tests.

A *piece* is a run of frames of one source: frames ``[start, end)`` of a video, or a photo panned
slowly (a moving crop, so it is footage, not a still). Pieces are scaled to one size and joined
with hard cuts or cross-dissolves (the last ``n`` frames of one piece blended into the first ``n``
of the next) and written with OpenCV's ``VideoWriter`` (MJPG). opencv-doc's ``Megamind.avi`` has
cuts of its own before frames 98, 154 and 200: pieces of it must stay inside one of its shots
(:data:`MEGAMIND_SHOTS`), so the only boundaries are the ones written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["MEGAMIND_SHOTS", "Piece", "Transition", "compose_video"]

MEGAMIND_SHOTS = ((0, 98), (98, 154), (154, 200), (200, 270))  # its own shots, as frame ranges


@dataclass(frozen=True)
class Piece:
    source: str  # a video or an image file
    start: int = 0  # video: first frame; image: unused
    end: int = 0  # video: one past the last frame; image: the number of frames to make


@dataclass(frozen=True)
class Transition:
    kind: str  # "cut" | "dissolve"
    first: int  # first frame of the transition in the output (a cut: the new shot's first frame)
    last: int  # last frame of it (a cut: the same frame)


def _video_frames(piece: Piece, size: tuple[int, int]) -> list[np.ndarray]:
    cap = cv2.VideoCapture(piece.source)
    frames, i = [], 0
    while i < piece.end:
        ok, frame = cap.read()
        if not ok:
            raise ValueError(f"{piece.source} has only {i} frames, the piece needs {piece.end}")
        if i >= piece.start:
            frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
        i += 1
    cap.release()
    return frames


def _panned_frames(piece: Piece, size: tuple[int, int]) -> list[np.ndarray]:
    image = cv2.imread(piece.source)
    if image is None:
        raise ValueError(f"cannot read the image {piece.source}")
    h, w = image.shape[:2]
    crop_w, crop_h = int(w * 0.7), int(h * 0.7)
    frames = []
    for i in range(piece.end):
        t = i / max(1, piece.end - 1)
        x, y = int(t * (w - crop_w)), int(t * (h - crop_h) * 0.5)
        frames.append(cv2.resize(image[y:y + crop_h, x:x + crop_w], size, interpolation=cv2.INTER_AREA))
    return frames


def piece_frames(piece: Piece, size: tuple[int, int]) -> list[np.ndarray]:
    is_image = Path(piece.source).suffix.lower() in (".jpg", ".jpeg", ".png")
    return _panned_frames(piece, size) if is_image else _video_frames(piece, size)


def compose_video(path: str | Path, pieces: list[Piece], dissolves: list[int] | None = None,
                  size: tuple[int, int] = (320, 240), fps: float = 25.0) -> list[Transition]:
    """Write ``pieces`` joined in order to ``path``; ``dissolves[i]`` > 0: the join after piece
    ``i`` is a cross-dissolve of that many frames, else a hard cut. Returns the transitions."""
    dissolves = list(dissolves or [0] * (len(pieces) - 1))
    out: list[np.ndarray] = []
    transitions = []
    for i, piece in enumerate(pieces):
        frames = piece_frames(piece, size)
        n = dissolves[i - 1] if i else 0
        if n:
            tail, out = out[-n:], out[:-n]
            first = len(out)
            for k in range(n):
                alpha = (k + 1) / (n + 1)
                out.append(cv2.addWeighted(tail[k], 1 - alpha, frames[k], alpha, 0))
            transitions.append(Transition("dissolve", first, first + n - 1))
            frames = frames[n:]
        elif i:
            transitions.append(Transition("cut", len(out), len(out)))
        out.extend(frames)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {path}")
    for frame in out:
        writer.write(frame)
    writer.release()
    return transitions
