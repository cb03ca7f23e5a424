"""From per-frame cut scores to shots, and from shots to the segments an index embeds.

* :func:`detect_shots`: every maximal run of frames whose score is above the threshold is one
  transition; the new shot starts after the run's highest-scoring frame (TransNetV2 marks the last
  frame before a cut, and the middle of a gradual transition). A run that touches the first or
  the last frame opens no shot (it would only cut off the video's edge).
* :func:`segment_shots`: shots shorter than ``min_s`` merge into a neighbour (the previous one,
  or the next for a video's first shot) and shots longer than ``max_s`` split into equal parts.
  Pure arithmetic on the stored shots, so other lengths need no new detection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Shot", "detect_shots", "segment_shots"]


@dataclass(frozen=True)
class Shot:
    start: int  # first frame
    end: int  # one past the last frame
    cut_prob: float  # the score of the cut that starts this shot (0 for a video's first shot)


def detect_shots(scores: np.ndarray, threshold: float) -> list[Shot]:
    """The shots of a video from its per-frame cut ``scores`` (at least one shot for one frame)."""
    scores = np.asarray(scores, np.float64)
    n = len(scores)
    if n == 0:
        return []
    above = np.concatenate([[False], scores > threshold, [False]])
    edges = np.flatnonzero(above[1:] != above[:-1])
    shots, start, prob = [], 0, 0.0
    for a, b in zip(edges[::2], edges[1::2]):  # runs [a, b) of frames above the threshold
        if a == 0 or b == n:
            continue
        peak = int(a + np.argmax(scores[a:b]))
        shots.append(Shot(start, peak + 1, prob))
        start, prob = peak + 1, float(scores[peak])
    shots.append(Shot(start, n, prob))
    return shots


def segment_shots(shots: list[Shot], fps: float, min_s: float = 0.0,
                  max_s: float = 0.0) -> list[tuple[int, int]]:
    """Frame ranges ``[start, end)`` to embed: ``shots`` with the short ones merged and the long
    ones split (``min_s`` / ``max_s`` <= 0: no merging / splitting; an unusable fps: neither)."""
    ranges = [(s.start, s.end) for s in shots]
    if not math.isfinite(fps) or fps <= 0:
        return ranges
    if min_s > 0:
        min_frames = min_s * fps
        while len(ranges) > 1:
            lengths = [b - a for a, b in ranges]
            i = int(np.argmin(lengths))
            if lengths[i] >= min_frames:
                break
            j = i - 1 if i > 0 else 1  # the neighbour it joins
            lo, hi = min(i, j), max(i, j)
            ranges[lo:hi + 1] = [(ranges[lo][0], ranges[hi][1])]
    if max_s > 0:
        max_frames = max_s * fps
        split = []
        for a, b in ranges:
            parts = max(1, math.ceil((b - a) / max_frames - 1e-9))
            bounds = [a + round(k * (b - a) / parts) for k in range(parts)] + [b]
            split.extend((x, y) for x, y in zip(bounds, bounds[1:]) if y > x)
        ranges = split
    return ranges
