"""Bundle adjustment against ground truth that needs no model weights: a synthetic scene with known
cameras and points, and the opencv-doc chessboard views whose poses OpenCV's PnP gives from the
known board (9x6 corners, 25 mm squares) and the calibrated intrinsics (left_intrinsics.yml)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from tomeray.jobs.alignment_data import bundle_scene, chessboard_reference, perturb, pose_errors
from tomeray.models.bundle_adjustment import Tracks, bundle_adjust, reprojection_errors, triangulate
from tomeray.models.pose import umeyama
from tomeray.models.tracks import feature_tracks, match_pairs
from tomeray.operators.scene_refine import refine_cameras


def test_bundle_adjustment_synthetic_reaches_the_noise_floor():
    scene = bundle_scene(views=12, points=400, noise_px=1.0, seed=1)
    tracks = Tracks(scene.view, scene.track, scene.xy)
    start = perturb(scene.extrinsic, 3.0, 0.2, seed=2)
    result = bundle_adjust(start, scene.intrinsic, [scene.width] * 12, [scene.height] * 12, tracks)
    r = result.record
    ok_tracks = np.unique(scene.track)
    assert r["tracks"] == 400 and r["observations"] == len(scene.view) and r["intrinsics"] == "fixed"
    assert r["reproj_px_before"] > 10 * r["reproj_px_after"]
    errors = reprojection_errors(result.tracks, result.xyz, result.extrinsic, result.intrinsic)
    assert np.sqrt(np.mean(errors ** 2)) <= 1.5 * scene.noise_rms_px
    assert r["iterations"] > 0 and r["usable"] and r["seconds"] >= 0
    # poses, started 3 degrees and 0.2 units off: within 0.3 degrees (a pixel is 0.11 degrees here,
    # and a 2-unit object 5 units away couples rotation with translation) and 0.6 % of the 5-unit
    # camera distance, after the gauge alignment (the similarity between adjusted and true points:
    # the arc of centres fixes it poorly)
    dist, rot = pose_errors(result.extrinsic, scene.extrinsic, umeyama(result.xyz, scene.points[ok_tracks]))
    assert rot < 0.3 and dist < 0.03, (rot, dist)
    assert np.allclose(result.intrinsic, scene.intrinsic)  # held fixed


def test_bundle_adjustment_triangulates_through_the_cameras():
    scene = bundle_scene(views=6, points=50, noise_px=0.0, seed=3)
    xyz, ok = triangulate(Tracks(scene.view, scene.track, scene.xy), scene.extrinsic, scene.intrinsic)
    assert ok.all() and np.allclose(xyz, scene.points, atol=1e-6)


@pytest.fixture(scope="module")
def chessboard(opencv_data):
    """K, the PnP poses (mm) from the known board and the undistorted corners of every view."""
    return chessboard_reference(opencv_data)


def test_bundle_adjustment_chessboard_recovers_the_pnp_reference(chessboard):
    K, reference, corners = chessboard
    V = len(reference)
    tracks = Tracks(np.repeat(np.arange(V), 54), np.tile(np.arange(54), V), corners.reshape(-1, 2))
    start = perturb(reference, 5.0, 20.0, seed=0)  # 5 degrees, 20 mm
    before = pose_errors(start, reference)
    result = bundle_adjust(start, np.repeat(K[None], V, 0), [640] * V, [480] * V, tracks)
    dist_mm, rot_deg = pose_errors(result.extrinsic, reference)
    assert before[0] > 10 and before[1] > 3
    assert dist_mm <= 1.0 and rot_deg <= 0.2, (dist_mm, rot_deg)
    assert result.record["reproj_px_after"] < 0.5 < result.record["reproj_px_before"]
    assert np.allclose(result.intrinsic, K)


def test_bundle_adjustment_feature_tracks_on_real_photos(opencv_data):
    images = np.stack([cv2.cvtColor(cv2.imread(str(opencv_data / f"left{i:02d}.jpg")), cv2.COLOR_BGR2RGB)
                       for i in (1, 2, 3, 4)])
    tracks, counts = feature_tracks(images, max_features=1000)
    assert counts["pairs"] == len(match_pairs(4, 0)) == 6
    assert counts["pairs_verified"] >= 3 and tracks.count > 50
    # at most one keypoint per view in a track, and at least two views
    pairs = np.stack([tracks.track, tracks.view], 1)
    assert len(np.unique(pairs, axis=0)) == len(pairs)
    assert np.bincount(tracks.track).min() >= 2
    assert match_pairs(5, 1) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_bundle_adjustment_failure_keeps_the_unrefined_cameras():
    flat = np.full((3, 64, 64, 3), 128, np.uint8)  # no texture: no features, no tracks
    E = np.repeat(np.eye(3, 4)[None], 3, 0)
    K = np.repeat(np.array([[50.0, 0, 31.5], [0, 50, 31.5], [0, 0, 1]])[None], 3, 0)
    ones = np.ones((3, 2))
    E2, K2, record = refine_cameras(flat, np.ones((3, 64, 64), bool), E, K, ones, np.zeros((3, 2)),
                                    np.full((3, 2), 64), {"tracks": "features"}, fixed_intrinsics=True)
    assert E2 is E and K2 is K
    assert record["applied"] is False and "too few tracks" in record["reason"]


def test_bundle_adjustment_vggt_track_head_gives_tracks(opencv_data):
    import dataclasses

    import torch
    from tomeray.models.vggt import MergeConfig
    from tomeray.models.vggt.model import VGGT
    from tomeray.models.vggt.registry import get_arch
    from tomeray.models.vggt.weights import init_random
    from tomeray.operators.scene_refine import vggt_tracks

    torch.manual_seed(0)
    model = VGGT(dataclasses.replace(get_arch("vggt-tiny"), track_head=True), MergeConfig(enabled=False))
    init_random(model)
    images = np.stack([cv2.resize(cv2.imread(str(opencv_data / f"left{i:02d}.jpg")), (140, 140))[:, :, ::-1]
                       for i in (1, 2, 3, 4, 5)])
    chunks = [np.arange(0, 3), np.arange(2, 5)]
    tracks, counts = vggt_tracks(model.eval(), images, chunks, torch.device("cpu"), "fp32", max_points=20,
                                 min_score=0.0)
    assert counts["tracks"] == tracks.count > 0 and counts["observations"] == len(tracks.view)
    # each track lives in one model call: its views are that chunk's, its first view the query view
    for t in range(tracks.count):
        views = set(tracks.view[tracks.track == t].tolist())
        assert views in ({0, 1, 2}, {2, 3, 4})
    assert np.isfinite(tracks.xy).all()
