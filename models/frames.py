"""Frame sampling and CLIP preprocessing as pure functions (NumPy / PyTorch, no decoding).

The defaults reproduce the TempMe / CLIP4Clip test-time loader exactly:

* ``sample_frame_indices``: candidates every ``round(fps / 1)`` frames (one per second), then
  ``num_frames`` of them picked with ``np.linspace(..., dtype=int)``; a video with fewer candidates
  than ``num_frames`` is sampled uniformly over all its frames (indices may repeat when the video
  has fewer frames than ``num_frames``). For vtest.avi (795 frames, 10 fps) this gives
  0, 70, 140, 210, 280, 350, 430, 500, 570, 640, 710, 790.
* ``resize_shorter_side`` + ``center_crop`` + ``normalize_frames``: open_clip's / torchvision's
  ``Resize(size, BICUBIC)``, ``CenterCrop(size)``, ``ToTensor()``, ``Normalize(mean, std)``.

A decoder that resizes by itself (decord's ``width``/``height``) should ask ``resized_hw`` for
the target size so that its crops have the same geometry as the reference pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tomeray.models.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "center_crop",
    "normalize_frames",
    "preprocess_frames",
    "resize_shorter_side",
    "resized_hw",
    "sample_frame_indices",
]

# OpenAI CLIP's normalisation (open_clip's OPENAI_DATASET_MEAN / _STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The reference loader's candidate rate when no fps is asked for: one candidate per second.
_REFERENCE_CANDIDATE_FPS = 1.0


def _frame_stride(video_fps: float, rate: float) -> int:
    """Frames between candidates at ``rate`` per second; 1 when the container's fps is unusable."""
    if not math.isfinite(video_fps) or video_fps <= 0:
        return 1
    # Python's round (half to even), as the reference loader uses it.
    return max(1, int(round(float(video_fps) / rate)))


def sample_frame_indices(
    num_video_frames: int,
    video_fps: float,
    num_frames: int = 12,
    sample_fps: float | None = None,
) -> np.ndarray:
    """Indices (int64, sorted) of the frames to decode from a video of ``num_video_frames`` frames.

    ``sample_fps=None`` (default): exactly ``num_frames`` indices spread over the whole video,
    following the reference test-time rule (see the module docstring).
    ``sample_fps=x``: one frame every ``round(video_fps / x)`` frames; when that yields more than
    ``num_frames`` frames, ``num_frames`` of them are picked uniformly. Never repeats a frame, so
    a short video yields fewer than ``num_frames`` indices: pad the clip and pass a frame mask.
    An fps that is zero, negative or not finite (broken container metadata) counts as a stride of
    one frame.
    """
    if int(num_video_frames) != num_video_frames or num_video_frames < 1:
        raise InputError(f"num_video_frames must be a positive integer, got {num_video_frames!r}")
    if int(num_frames) != num_frames or num_frames < 1:
        raise InputError(f"num_frames must be a positive integer, got {num_frames!r}")
    if sample_fps is not None and not (math.isfinite(sample_fps) and sample_fps > 0):
        raise InputError(f"sample_fps must be a positive number or None, got {sample_fps!r}")
    num_video_frames, num_frames = int(num_video_frames), int(num_frames)

    rate = _REFERENCE_CANDIDATE_FPS if sample_fps is None else float(sample_fps)
    candidates = np.arange(0, num_video_frames, _frame_stride(video_fps, rate), dtype=np.int64)
    if len(candidates) > num_frames:
        picked = candidates[np.linspace(0, len(candidates) - 1, num=num_frames, dtype=int)]
    elif len(candidates) == num_frames or sample_fps is not None:
        picked = candidates
    else:
        picked = np.linspace(0, num_video_frames - 1, num=num_frames, dtype=int)
    return np.asarray(picked, dtype=np.int64)


def resized_hw(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to ``size`` with the aspect kept.

    The longer side is truncated, as torchvision's ``Resize(int)`` does: 576x768 -> 224x298.
    """
    if min(height, width, size) < 1:
        raise InputError(f"height, width and size must be positive, got {height}, {width}, {size}")
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _check_uint8_hwc(frames: np.ndarray, what: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(
            f"{what} expects uint8 RGB frames of shape (T,H,W,3), got {frames.dtype} {tuple(frames.shape)}"
        )
    return frames


def resize_shorter_side(frames: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of (T,H,W,3) uint8 frames so the shorter side is ``size`` (PIL, like open_clip)."""
    frames = _check_uint8_hwc(frames, "resize_shorter_side")
    height, width = resized_hw(frames.shape[1], frames.shape[2], size)
    if (height, width) == frames.shape[1:3]:
        return frames.copy()
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))
    return out


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Central ``size`` x ``size`` crop of (T,H,W,3) uint8 frames, offsets rounded as torchvision does."""
    frames = _check_uint8_hwc(frames, "center_crop")
    height, width = frames.shape[1:3]
    if height < size or width < size:
        raise InputError(
            f"center_crop({size}) needs frames at least {size}x{size}, got {height}x{width}; "
            "resize the shorter side first (resized_hw / resize_shorter_side)"
        )
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return np.ascontiguousarray(frames[:, top : top + size, left : left + size])


def normalize_frames(
    frames: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """uint8 (...,H,W,3) -> float32 (...,3,H,W): ``(x / 255 - mean) / std``, computed in float32.

    The same operations in the same order as ``ToTensor`` + ``Normalize``, so the result is
    bit-identical to the reference loader's input.
    """
    import torch  # here, not at the top: decode workers use the NumPy half only and skip torch's import

    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise InputError(
            f"normalize_frames expects uint8 (...,H,W,3) frames, got {frames.dtype} {tuple(frames.shape)}"
        )
    if len(mean) != 3 or len(std) != 3:
        raise InputError(f"mean and std need 3 values (RGB), got {mean!r} and {std!r}")
    x = frames.movedim(-1, -3).to(torch.float32) / 255
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return ((x - mean_t) / std_t).contiguous()


def preprocess_frames(
    frames: np.ndarray, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """Decoded (T,H,W,3) uint8 frames -> model input (T,3,size,size) float32, as open_clip's transform."""
    return normalize_frames(center_crop(resize_shorter_side(frames, size), size), mean, std)
