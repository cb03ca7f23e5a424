"""Decoding: right frames (against the TempMe reference and OpenCV), edge-case videos, bad files."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest
from safetensors.numpy import load_file
from tomeray.models.frames import center_crop, resize_shorter_side
from tomeray.operators.video_decode import (
    CorruptVideoError,
    TruncatedVideoError,
    UnreadableVideoError,
    VideoDecoder,
    container_truncation,
    decode_clips,
    segment_windows,
)


def write_video(path, n_frames, width, height, fps=10.0, fourcc="MJPG"):
    """A synthetic video whose frames differ (a moving bar and the frame number)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for i in range(n_frames):
        img = np.full((height, width, 3), (i * 29) % 255, np.uint8)
        left = i * 7 % width
        cv2.rectangle(img, (left, 0), (left + max(1, width // 8), height - 1), (0, 0, 255), -1)
        writer.write(img)
    writer.release()
    return path


def corrupt_copy(source, target):
    """Overwrite 2 KB every 50 KB with random bytes, leaving the container's sizes intact."""
    data = bytearray(source.read_bytes())
    rng = np.random.default_rng(0)
    for offset in range(100_000, len(data) - 4000, 50_000):
        data[offset : offset + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return target


def opencv_frames(path):
    """Every frame, decoded sequentially by OpenCV, as RGB."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return np.stack(frames)
        frames.append(frame[:, :, ::-1])


def test_vtest_matches_the_tempme_reference_loader(opencv_data, fixtures_dir):
    ref = load_file(str(fixtures_dir / "tempme_tiny_io.safetensors"))
    (clip,) = decode_clips(opencv_data / "vtest.avi", image_size=224, num_frames=12)
    np.testing.assert_array_equal(clip.frame_indices, ref["sampled_frame_indices"])
    assert clip.frames.shape == (12, 224, 224, 3) and clip.frames.dtype == np.uint8 and clip.mask.all()
    # decord scales while decoding (swscale), the reference used PIL bicubic: same geometry, close pixels
    diff = np.abs(clip.frames.astype(int) - ref["input_frames_uint8_hwc"].astype(int))
    assert diff.mean() < 3.0
    assert clip.n_frames == 795 and clip.fps == pytest.approx(10.0) and clip.duration_s == pytest.approx(79.5)
    assert (clip.start_s, clip.end_s) == (0.0, pytest.approx(79.5))


def test_broken_timestamps_are_read_sequentially_and_give_the_right_frames(opencv_data):
    """decord's seeking returns wrong frames for Megamind.avi (packed B-frames, no usable
    timestamps, mean error ~30-47 grey levels); the sequential path must match OpenCV exactly."""
    reference = opencv_frames(opencv_data / "Megamind.avi")
    (clip,) = decode_clips(opencv_data / "Megamind.avi", image_size=528)  # 528 = native height: no scaling
    np.testing.assert_array_equal(clip.frames, center_crop(reference[clip.frame_indices], 528))
    (small,) = decode_clips(opencv_data / "Megamind.avi", image_size=224)
    expected = center_crop(resize_shorter_side(reference[small.frame_indices], 224), 224)
    assert np.abs(small.frames.astype(int) - expected.astype(int)).mean() < 3.0


def test_megamind_bugy_decodes_like_opencv(opencv_data):
    """opencv-doc's 'damaged' copy is a valid stream with degraded pictures (the PSNR tutorial's test
    video): FFmpeg reports no error and every frame matches OpenCV's decode, so it is indexable."""
    reference = opencv_frames(opencv_data / "Megamind_bugy.avi")
    (clip,) = decode_clips(opencv_data / "Megamind_bugy.avi", image_size=528)
    assert clip.n_frames == len(reference) == 270
    np.testing.assert_array_equal(clip.frames, center_crop(reference[clip.frame_indices], 528))


def test_segment_windows():
    assert segment_windows(795, 10.0, 0) == [(0, 795)]
    assert segment_windows(795, 10.0, 20.0) == [(0, 200), (200, 400), (400, 600), (600, 795)]
    assert segment_windows(100, 10.0, 10.0) == [(0, 100)]
    assert segment_windows(100, float("nan"), 10.0) == [(0, 100)]  # unusable fps: the whole video
    assert segment_windows(0, 10.0, 10.0) == []
    windows = segment_windows(270, 23.976, 3.0)
    assert windows[0][0] == 0 and windows[-1][1] == 270
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))


def test_segment_mode_yields_one_clip_per_window(opencv_data):
    clips = list(decode_clips(opencv_data / "vtest.avi", num_frames=4, segment_s=20.0))
    assert [(c.start_s, c.end_s) for c in clips] == [(0.0, 20.0), (20.0, 40.0), (40.0, 60.0), (60.0, 79.5)]
    for c, (start, end) in zip(clips, segment_windows(795, 10.0, 20.0)):
        assert start <= c.frame_indices.min() and c.frame_indices.max() < end


@pytest.mark.parametrize("n_frames,width,height", [(1, 320, 240), (20, 321, 243), (5, 160, 120), (8, 17, 9)])
def test_edge_case_videos(tmp_path, n_frames, width, height):
    path = write_video(tmp_path / "v.avi", n_frames, width, height)
    (clip,) = decode_clips(path, image_size=64, num_frames=12)
    assert clip.frames.shape == (12, 64, 64, 3) and clip.mask.all()
    assert clip.n_frames == n_frames and len(clip.frame_indices) == 12
    assert clip.frame_indices.max() == n_frames - 1  # short videos repeat frames to fill T slots


def test_fps_sampling_pads_short_clips_and_masks_the_padding(tmp_path):
    path = write_video(tmp_path / "v.avi", 25, 64, 48, fps=10.0)
    (clip,) = decode_clips(path, image_size=32, num_frames=12, sample_fps=2.0)
    np.testing.assert_array_equal(clip.frame_indices, [0, 5, 10, 15, 20])
    assert clip.mask.tolist() == [True] * 5 + [False] * 7
    assert (clip.frames[5:] == 0).all()


def _errors_of(path):
    rows = list(VideoDecoder(image_size=32, num_frames=4).rows(str(path), "key"))
    assert len(rows) == 1
    return rows[0]


def test_bad_files_become_error_rows(tmp_path, opencv_data):
    vtest = (opencv_data / "vtest.avi").read_bytes()
    cases = {
        "zero.mp4": (b"", UnreadableVideoError, "empty"),
        "text.mp4": (b"hello, not a video\n", UnreadableVideoError, "not a readable video"),
        "truncated.avi": (vtest[:3_000_000], TruncatedVideoError, "truncated"),
        "header_only.avi": (vtest[:300], TruncatedVideoError, "truncated"),
    }
    corrupt = corrupt_copy(opencv_data / "vtest.avi", tmp_path / "corrupt_source.avi").read_bytes()
    cases["corrupt.avi"] = (corrupt, CorruptVideoError, "decoder reported damaged data")
    for name, (data, error, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        row = _errors_of(tmp_path / name)
        assert (row["error_stage"], row["error_type"]) == ("decode", error.__name__), name
        assert words in row["error_message"], (name, row["error_message"])
        assert row["key"] == "key" and not row["mask"].any() and row["frames"].shape == (4, 32, 32, 3)


def test_corrupt_video_is_indexed_when_not_strict(tmp_path, opencv_data):
    corrupt_copy(opencv_data / "vtest.avi", tmp_path / "c.avi")
    with pytest.raises(CorruptVideoError):
        list(decode_clips(tmp_path / "c.avi", image_size=32, num_frames=4, strict=True))
    (clip,) = decode_clips(tmp_path / "c.avi", image_size=32, num_frames=4, strict=False)
    assert clip.mask.all()


def test_truncated_mp4_is_detected_from_its_boxes(tmp_path):
    path = write_video(tmp_path / "v.mp4", 30, 96, 64, fourcc="mp4v")
    assert container_truncation(path) is None
    (tmp_path / "cut.mp4").write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    assert "ends at byte" in container_truncation(tmp_path / "cut.mp4")


def test_vanished_and_unreadable_files(tmp_path, opencv_data):
    assert _errors_of(tmp_path / "gone.avi")["error_type"] == "UnreadableVideoError"
    locked = tmp_path / "locked.avi"
    shutil.copy(opencv_data / "tree.avi", locked)
    os.chmod(locked, 0)
    try:
        row = _errors_of(locked)
    finally:
        os.chmod(locked, 0o644)
    if os.geteuid() == 0:  # root reads files regardless of their mode
        assert row["error_type"] == "" and row["mask"].all()
    else:
        assert (row["error_type"], row["error_message"]) == ("UnreadableVideoError",
                                                             "permission denied: the file is not readable")


def test_paths_with_spaces_and_non_ascii(tmp_path, opencv_data):
    path = tmp_path / "dir with space" / "ñandú 視頻.avi"
    path.parent.mkdir()
    shutil.copy(opencv_data / "tree.avi", path)
    rows = list(VideoDecoder(image_size=32, num_frames=4).rows(str(path), "k"))
    assert rows[0]["error_type"] == "" and rows[0]["path"] == str(path)


def test_decoder_batch_interface(opencv_data):
    decoder = VideoDecoder(image_size=32, num_frames=4, segment_s=30.0)
    batch = {"path": np.array([str(opencv_data / "vtest.avi")]), "key": np.array(["k"])}
    out = list(decoder(batch))
    assert len(out) == 3  # 79.5 s in windows of 30 s
    assert [float(b["start_s"][0]) for b in out] == [0.0, 30.0, 60.0]  # one row per window, each its own id
    assert out[0]["frames"].shape == (1, 4, 32, 32, 3) and out[0]["frame_indices"].dtype == object
