"""Decode training and evaluation clips: one row per (video, time range), optionally with
RandAugment (a Ray Data stage run as tasks).

An input row names a video (``path``), an optional time range (``start_s``, ``end_s``; NaN: the
whole video) and, for augmentation, a ``seed``; every other column passes through unchanged (the
caption, the step and slot a training worker assigned the row to, ...). The output row adds
``frames`` (T, S, S, 3) uint8, ``mask`` (T,) bool, ``error_type`` and ``error_message``.

Exactly one output row per input row, in order, and the stage never raises: a video that cannot be
decoded gives a row with an empty mask and the reason, so a training step still knows which of its
rows failed.

RandAugment (torchvision's ``RandAugment``) draws its operations once per clip, so every frame of a
clip gets the same operations at the same magnitude, as the reference applies one draw to a video's
frames. The draw is seeded by the row's ``seed``: a resumed run augments each clip as the
interrupted run would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tomeray.models.errors import one_line
from tomeray.operators.video_decode import UnreadableVideoError, decode_clips, empty_clip_row, row_window

__all__ = ["AugmentConfig", "ClipDecoder", "rand_augment"]


@dataclass
class AugmentConfig:
    enabled: bool = True
    num_ops: int = 4  # operations per clip (the reference: rand-m7-n4)
    magnitude: int = 7  # 0..30 (torchvision's scale)


def rand_augment(frames: np.ndarray, seed: int, num_ops: int, magnitude: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> the same frames after one RandAugment draw applied to all of them."""
    import torch
    from torchvision.transforms import v2

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    with torch.random.fork_rng(devices=[]):  # the draw depends on the seed only
        torch.manual_seed(int(seed))
        x = v2.RandAugment(num_ops=int(num_ops), magnitude=int(magnitude))(x)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


class ClipDecoder:
    """Ray Data stage: clip rows -> decoded (and optionally augmented) rows. Use an instance with
    ``map_batches`` (tasks; construction is cheap)."""

    def __init__(self, image_size: int, num_frames: int, sample_fps: float | None = None,
                 strict: bool = True, num_threads: int = 1, augment: AugmentConfig | dict | None = None):
        self.image_size, self.num_frames = int(image_size), int(num_frames)
        self.sample_fps, self.strict, self.num_threads = sample_fps, bool(strict), int(num_threads)
        augment = AugmentConfig(**augment) if isinstance(augment, dict) else augment
        self.augment = augment if augment is not None and augment.enabled else None

    def decode(self, path: str, window: tuple[float, float] | None,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(frames, mask) of one clip; raises on a bad video."""
        # consumed to the end: the decoder's damage checks run when the video is done
        clips = list(decode_clips(path, self.image_size, self.num_frames, self.sample_fps, None,
                                  self.num_threads, self.strict, window=window))
        if not clips:
            raise UnreadableVideoError("the video has no frames")
        clip = clips[0]
        frames = clip.frames
        if self.augment is not None:
            valid = int(clip.mask.sum())
            frames = frames.copy()
            frames[:valid] = rand_augment(frames[:valid], seed, self.augment.num_ops, self.augment.magnitude)
        return frames, clip.mask

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["path"])
        frames = np.zeros((n, self.num_frames, self.image_size, self.image_size, 3), np.uint8)
        mask = np.zeros((n, self.num_frames), bool)
        error_type, error_message = [""] * n, [""] * n
        starts = batch.get("start_s", np.full(n, np.nan))
        ends = batch.get("end_s", np.full(n, np.nan))
        seeds = batch.get("seed", np.zeros(n, np.int64))
        for i in range(n):
            try:
                frames[i], mask[i] = self.decode(str(batch["path"][i]), row_window(starts[i], ends[i]),
                                                 int(seeds[i]))
            except Exception as e:  # noqa: BLE001 - a bad video is this row's error, never the job's
                empty = empty_clip_row(self.num_frames, self.image_size)
                frames[i], mask[i] = empty["frames"], empty["mask"]
                error_type[i], error_message[i] = type(e).__name__, one_line(e)
        return {**batch, "frames": frames, "mask": mask, "error_type": np.asarray(error_type, dtype=str),
                "error_message": np.asarray(error_message, dtype=str)}
