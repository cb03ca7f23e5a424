"""Frame sampling and CLIP preprocessing (models/frames.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tomeray.models.errors import InputError
from tomeray.models.frames import (
    CLIP_MEAN,
    CLIP_STD,
    center_crop,
    normalize_frames,
    preprocess_frames,
    resize_shorter_side,
    resized_hw,
    sample_frame_indices,
)


def test_sampling_reference_rule_for_long_video():
    # vtest.avi: 795 frames at 10 fps -> 80 one-per-second candidates, 12 picked by linspace
    idx = sample_frame_indices(795, 10.0)
    assert idx.dtype == np.int64
    assert idx.tolist() == [0, 70, 140, 210, 280, 350, 430, 500, 570, 640, 710, 790]


def test_sampling_few_candidates_spreads_over_all_frames():
    # tree.avi: 68 frames at ~15 fps -> 5 candidates < 12: uniform over all 68 frames
    idx = sample_frame_indices(68, 14.999925)
    assert idx.tolist() == np.linspace(0, 67, 12, dtype=int).tolist()
    # exactly T candidates are all taken
    assert sample_frame_indices(120, 10.0).tolist() == list(range(0, 120, 10))
    # fewer frames than T: indices repeat (the reference loader's rule), still sorted
    short = sample_frame_indices(5, 30.0)
    assert len(short) == 12 and np.all(np.diff(short) >= 0) and short[-1] == 4


def test_sampling_at_fixed_fps_never_repeats():
    assert sample_frame_indices(68, 15.0, sample_fps=1.0).tolist() == [0, 15, 30, 45, 60]
    many = sample_frame_indices(795, 10.0, num_frames=12, sample_fps=5.0)  # 398 candidates -> 12
    assert len(many) == 12 and np.all(np.diff(many) > 0) and many[0] == 0 and many[-1] == 794
    # broken fps metadata counts as one frame per step
    assert sample_frame_indices(10, 0.0, num_frames=4).tolist() == [0, 3, 6, 9]


@pytest.mark.parametrize(
    "args", [(0, 10.0), (10, 10.0, 0), (10, 10.0, 12, 0.0), (10, 10.0, 12, float("nan")), (2.5, 10.0)]
)
def test_sampling_bad_arguments_raise_input_error(args):
    with pytest.raises(InputError):
        sample_frame_indices(*args)


def test_resized_hw_matches_torchvision_rule():
    assert resized_hw(576, 768, 224) == (224, 298)
    assert resized_hw(768, 576, 224) == (298, 224)
    assert resized_hw(240, 320, 224) == (224, 298)
    assert resized_hw(100, 100, 64) == (64, 64)
    with pytest.raises(InputError):
        resized_hw(0, 10, 224)


def test_center_crop_offsets_and_errors():
    frames = np.arange(2 * 5 * 8 * 3, dtype=np.uint8).reshape(2, 5, 8, 3)
    crop = center_crop(frames, 4)
    # (5-4)/2 = 0.5 -> round half to even = 0 ; (8-4)/2 = 2
    np.testing.assert_array_equal(crop, frames[:, 0:4, 2:6])
    with pytest.raises(InputError, match="at least 6x6"):
        center_crop(frames, 6)
    with pytest.raises(InputError, match="uint8"):
        center_crop(frames.astype(np.float32), 4)


def test_normalize_is_bit_identical_to_reference_loader(fixtures_dir):
    io = load_file(fixtures_dir / "tempme_tiny_io.safetensors")
    x = normalize_frames(io["input_frames_uint8_hwc"], CLIP_MEAN, CLIP_STD)
    assert x.shape == (12, 3, 224, 224) and x.dtype == torch.float32
    expected = "5ebf6fcc9b186a4a664c5a9a4f48e3f1ddc1b00a21c1a0036f18d2d02fcbf9d7"
    assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == expected
    with pytest.raises(InputError):
        normalize_frames(io["input_frames_uint8_hwc"].float())


def test_preprocess_odd_sized_frames():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 37, 53, 3), dtype=np.uint8)
    resized = resize_shorter_side(frames, 32)
    assert resized.shape == (3, 32, 45, 3)
    x = preprocess_frames(frames, 32)
    assert x.shape == (3, 3, 32, 32) and torch.isfinite(x).all()
