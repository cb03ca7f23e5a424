"""A weight-free shot-boundary baseline: HSV histogram distance between consecutive frames with an
adaptive threshold.

Each frame gets a normalised hue/saturation/value histogram; the distance between frame ``i`` and
``i + 1`` is half the L1 distance of their histograms (0: same colours, 1: disjoint). A cut
follows frame ``i`` when its distance exceeds both a floor and the mean plus ``k`` standard
deviations of the distances around it (so steady motion or flicker raises the bar locally). The
score is ``distance / (2 * bar)``, capped at 1: above 0.5 exactly when the distance clears the
bar, so it takes the same threshold as TransNetV2's probabilities. Catches hard cuts; gradual
transitions change the colours a little per frame and mostly pass under the bar.
"""

from __future__ import annotations

import numpy as np
from tomeray.models.errors import InputError

__all__ = ["HistogramDetector"]


class HistogramDetector:
    """Per-frame cut scores of uint8 RGB frames (any size; the index feeds it 48x27 frames)."""

    name = "histogram"
    weights_id = "histogram-hsv-16x4x4-v1"  # no weights: the method's version stands for them

    def __init__(self, floor: float = 0.25, k: float = 3.0, radius: int = 12):
        self.floor, self.k, self.radius = float(floor), float(k), int(radius)

    def histograms(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (N, 256) HSV histograms that sum to 1."""
        import cv2

        n = len(frames)
        hsv = cv2.cvtColor(np.ascontiguousarray(frames).reshape(-1, frames.shape[2], 3), cv2.COLOR_RGB2HSV)
        hsv = hsv.reshape(n, -1, 3).astype(np.int64)
        bins = (hsv[..., 0] * 16 // 180) * 16 + (hsv[..., 1] >> 6) * 4 + (hsv[..., 2] >> 6)
        counts = np.stack([np.bincount(b, minlength=256) for b in bins]).astype(np.float64)
        return counts / counts.sum(axis=1, keepdims=True)

    def predict(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
            raise InputError(f"the histogram detector expects uint8 frames (N, H, W, 3), got "
                             f"{frames.dtype} {frames.shape}")
        scores = np.zeros(len(frames), np.float32)
        if len(frames) < 2:
            return scores
        hist = self.histograms(frames)
        distance = 0.5 * np.abs(np.diff(hist, axis=0)).sum(axis=1)  # distance[i]: frame i -> i + 1
        bars = np.empty_like(distance)
        for i in range(len(distance)):
            r = self.radius
            around = np.concatenate([distance[max(0, i - r):i], distance[i + 1:i + 1 + r]])
            local = around.mean() + self.k * around.std() if len(around) else 0.0
            bars[i] = max(self.floor, local)
        scores[:-1] = np.minimum(1.0, distance / (2 * bars))
        return scores
