"""Clip decoding for training and evaluation: time ranges, one row per input, seeded RandAugment."""

from __future__ import annotations

import numpy as np
import pytest
from tomeray.models.errors import InputError
from tomeray.operators.clip_decode import ClipDecoder
from tomeray.operators.video_decode import VideoDecoder, decode_clips, time_window


def test_time_windows_cover_the_range_and_refuse_ranges_outside_the_video():
    assert time_window(100, 10.0, 2.0, 3.5) == (20, 35)
    assert time_window(100, 10.0, 9.95, 20.0) == (99, 100)  # clamped, at least one frame
    with pytest.raises(InputError, match="starts at 12 s but the video is 10.00 s long"):
        time_window(100, 10.0, 12.0, 13.0)
    with pytest.raises(InputError, match="not a range"):
        time_window(100, 10.0, 3.0, 3.0)


def test_a_window_is_one_clip_sampled_inside_it(opencv_data):
    (clip,) = decode_clips(opencv_data / "vtest.avi", 64, 4, None, window=(10.0, 19.0))
    assert clip.frame_indices.tolist() == [100, 120, 150, 180]
    assert clip.start_s == 10.0 and clip.end_s == 19.0 and clip.mask.all()
    rows = list(VideoDecoder(64, 4)({"path": np.array([str(opencv_data / "vtest.avi")] * 2),
                                     "key": np.array(["a", "b"]), "start_s": np.array([10.0, np.nan]),
                                     "end_s": np.array([19.0, np.nan])}))
    assert rows[0]["frame_indices"][0].tolist() == [100, 120, 150, 180]
    assert rows[1]["end_s"][0] == pytest.approx(79.5)  # NaN range: the whole video


def batch(opencv_data, seeds):
    n = len(seeds)
    return {"path": np.array([str(opencv_data / "vtest.avi")] * (n - 1) + ["/nowhere.avi"]),
            "start_s": np.array([10.0] * n), "end_s": np.array([19.0] * n), "seed": np.array(seeds),
            "caption": np.array([f"c{i}" for i in range(n)])}


def test_clip_decoder_gives_one_row_per_input_with_errors_inline(opencv_data):
    out = ClipDecoder(64, 4, augment={"enabled": False})(batch(opencv_data, [0, 0]))
    assert out["frames"].shape == (2, 4, 64, 64, 3) and out["caption"].tolist() == ["c0", "c1"]
    assert out["mask"][0].all() and not out["mask"][1].any()
    assert out["error_type"].tolist() == ["", "UnreadableVideoError"]
    (plain,) = decode_clips(opencv_data / "vtest.avi", 64, 4, None, window=(10.0, 19.0))
    assert (out["frames"][0] == plain.frames).all()


def test_rand_augment_is_seeded_and_one_draw_per_clip(opencv_data):
    decoder = ClipDecoder(64, 4, augment={"enabled": True, "num_ops": 2, "magnitude": 9})
    a = decoder(batch(opencv_data, [1, 2, 3, 0]))
    b = decoder(batch(opencv_data, [1, 2, 3, 0]))
    assert (a["frames"] == b["frames"]).all()  # the same seeds, the same augmentation
    assert not (a["frames"][0] == a["frames"][1]).all()  # another seed, another draw
    (plain,) = decode_clips(opencv_data / "vtest.avi", 64, 4, None, window=(10.0, 19.0))
    changed = [not (a["frames"][i] == plain.frames).all() for i in range(3)]
    assert any(changed)
