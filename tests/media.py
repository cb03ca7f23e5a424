"""Synthetic media for tests: small videos written with OpenCV."""

from __future__ import annotations

import cv2
import numpy as np


def write_video(path, n_frames, width, height, fps=10.0, seed=0, fourcc="MJPG"):
    """A random texture (fixed by ``seed``) sliding sideways: distinct videos for distinct seeds,
    distinct frames within a video."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for i in range(n_frames):
        writer.write(np.roll(base, 3 * i, axis=1))
    writer.release()
    return path
