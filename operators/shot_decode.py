"""Shot segmentation inside the decode stage (``sampling.segments=shots``).

Per video, inside the decode task (so the decoder's damage checks cover it):

1. every frame is decoded small (96x54 by decord, then 48x27 by area averaging: TransNetV2's input
   size; decord cannot scale to an odd height directly) and scored by the detector;
2. the scores become shots (:func:`tomeray.models.shots.detect_shots`) and the shots the segments
   to embed (``min_s`` / ``max_s``: :func:`tomeray.models.shots.segment_shots`);
3. the decode stage then reads only each segment's sampled frames at the model's size.

Why in the decode stage and in two reads (measured in ``jobs/bench_shots.py``): the detector needs
every frame, the embedding a dozen per shot. Scaling every frame to the model's size in one pass
costs more than the small pass plus a second read of the sampled frames, which decodes only from
the nearest key frame to each sampled frame; and a stage of its own would have to ship the small
frames between processes or decode them again. Videos that cannot seek (broken timestamps) are
read sequentially in both reads.

A video with stored shots (the index's own ``shots/`` table on resume, or ``sampling.shots.reuse``)
skips step 1.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache

import numpy as np
from tomeray.models.shots import Shot, create_detector, detect_shots, segment_shots
from tomeray.operators.video_io import CorruptVideoError, load_decord

__all__ = ["ShotSegmenter", "decode_small_frames", "shots_from_json", "shots_to_json"]

SMALL_DECODE_WH = (96, 54)  # decord's output size for the detector's frames (twice 48x27)


def decode_small_frames(path: str, n_frames: int, num_threads: int = 1) -> np.ndarray:
    """Every frame of ``path`` as (N, 27, 48, 3) uint8 RGB, read sequentially."""
    import cv2

    decord = load_decord()
    reader = decord.VideoReader(path, ctx=decord.cpu(0), width=SMALL_DECODE_WH[0], height=SMALL_DECODE_WH[1],
                                num_threads=num_threads)
    out = np.empty((n_frames, 27, 48, 3), np.uint8)
    try:
        for i in range(n_frames):
            try:
                frame = reader.next().asnumpy()
            except StopIteration:
                raise CorruptVideoError(f"the container claims {n_frames} frames but only {i} could be "
                                        "decoded") from None
            out[i] = cv2.resize(frame, (48, 27), interpolation=cv2.INTER_AREA)
    finally:
        del reader  # joins decord's read-ahead thread while the caller still captures its log
    return out


@lru_cache(maxsize=2)
def _detector(name: str, batch_windows: int, window: int, precision: str):
    """One detector per worker process (Ray reuses task workers, so the weights load once)."""
    import torch

    torch.set_num_threads(1)  # a decode task holds a fraction of a CPU
    return create_detector(name, batch_windows, window, precision)


def shots_to_json(shots: list[Shot]) -> str:
    return json.dumps([[s.start, s.end, round(float(s.cut_prob), 6)] for s in shots])


def shots_from_json(text: str) -> list[Shot]:
    return [Shot(int(a), int(b), float(p)) for a, b, p in json.loads(text)]


class ShotSegmenter:
    """Plans one video's segments; keeps what it found for the row's shot columns."""

    def __init__(self, detector: str, threshold: float, min_s: float, max_s: float, batch_windows: int = 1,
                 window: int = 100, precision: str = "fp32", num_threads: int = 1):
        self.window, self.precision = int(window), precision
        self.detector, self.threshold = detector, float(threshold)
        self.min_s, self.max_s = float(min_s), float(max_s)
        self.batch_windows, self.num_threads = int(batch_windows), int(num_threads)
        self.shots: list[Shot] = []
        self.detected = False  # whether this video went through the detector (not stored shots)
        self.detect_cpu_s = 0.0

    def plan(self, path: str, n_frames: int, fps: float, stored: str = "") -> list[tuple[int, int]]:
        """Frame ranges ``[start, end)`` of the video's segments, from ``stored`` shots (JSON) or
        from detection."""
        started = time.process_time()
        if stored:
            self.shots, self.detected = shots_from_json(stored), False
        else:
            scores = _detector(self.detector, self.batch_windows, self.window, self.precision).predict(
                decode_small_frames(path, n_frames, self.num_threads))
            self.shots, self.detected = detect_shots(scores, self.threshold), True
        self.detect_cpu_s = time.process_time() - started
        return segment_shots(self.shots, fps, self.min_s, self.max_s)

    def columns(self, segment: int) -> dict:
        """The shot columns of the row of segment number ``segment`` (the shot table rides on the
        first row only); ``segment=-1``: an error row's."""
        first = segment == 0
        return {"shot": segment, "shot_table": shots_to_json(self.shots) if first else "",
                "shots_detected": bool(first and self.detected),
                "detect_cpu_s": self.detect_cpu_s if first else 0.0}
