"""Overlapping chunks: the chunk plan, the robust Sim(3) fit, and the chained alignment on synthetic
long trajectories with known ground truth (no model weights involved)."""

from __future__ import annotations

import numpy as np
import pytest
from tomeray.jobs.alignment_data import chunk_outputs, corridor, random_rotation
from tomeray.models.chunks import align_chunks, overlapping_chunks
from tomeray.models.errors import InputError
from tomeray.models.pose import Sim3, robust_sim3, umeyama
from tomeray.operators.scene_reconstruct import SceneReconstructor, split_chunks
from tomeray.pipeline.reconstruction.evaluation import pose_metrics


def test_overlapping_chunks_plan_covers_every_view_in_capture_order():
    chunks = overlapping_chunks(14, 8, 4)
    assert [c.tolist() for c in chunks] == [list(range(0, 8)), list(range(4, 12)), list(range(8, 14))]
    for n, chunk, overlap in [(100, 60, 30), (61, 60, 30), (2000, 60, 30), (37, 7, 1)]:
        chunks = overlapping_chunks(n, chunk, overlap)
        assert np.array_equal(np.unique(np.concatenate(chunks)), np.arange(n))
        assert all(len(c) <= chunk for c in chunks)
        assert all(len(np.intersect1d(a, b)) >= overlap for a, b in zip(chunks, chunks[1:]))
    assert [c.tolist() for c in overlapping_chunks(5, 8, 4)] == [[0, 1, 2, 3, 4]]
    with pytest.raises(InputError, match="views.overlap"):
        overlapping_chunks(20, 8, 8)


def test_overlapping_chunks_robust_sim3_ignores_outliers_that_break_plain_umeyama():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(2000, 3))
    true = Sim3(2.5, random_rotation(rng, 70), np.array([1.0, -2.0, 0.5]))
    dst = true.apply(src) + rng.normal(scale=0.01, size=src.shape)
    bad = rng.random(len(src)) < 0.2
    dst[bad] = rng.uniform(0, 10, size=(int(bad.sum()), 3))  # wrong points, all on one side
    fit = robust_sim3(src, dst)
    assert abs(fit.sim.s - 2.5) < 0.01 and np.allclose(fit.sim.R, true.R, atol=5e-3)
    assert np.allclose(fit.sim.t, true.t, atol=0.02)
    assert 0.75 < fit.inlier_ratio < 0.85
    plain = umeyama(src, dst)
    assert abs(plain.s - 2.5) > 0.2  # the outliers pull the least-squares fit away
    # confidence weights: zero weight on the outliers gives the clean fit directly
    weighted = umeyama(src, dst, weights=(~bad).astype(float))
    assert abs(weighted.s - 2.5) < 0.01


def _ate_rel(merged: dict, scene) -> tuple[float, float]:
    metrics, _ = pose_metrics(merged["extrinsic"], scene.extrinsic)
    return metrics["ate_rmse"] / scene.length, metrics["rpe_rot_mean_deg"]


def test_overlapping_chunks_recover_a_long_trajectory_with_outliers():
    scene = corridor(400, seed=2)
    chunks = overlapping_chunks(400, 40, 20)
    outputs = chunk_outputs(scene, chunks, seed=5, outliers=0.05)
    merged, records = align_chunks(outputs, chunks)
    ate_rel, rpe = _ate_rel(merged, scene)
    assert ate_rel <= 0.01, ate_rel
    assert rpe < 0.5
    assert len(records) == len(chunks) - 1
    for r in records:
        assert r["shared_views"] == 20 and r["pairs"] > 1000
        assert 0.85 < r["inlier_ratio"] <= 0.97  # about 5 % of the pairs are outliers
        assert r["median_residual_rel"] < 0.05
    # every view in view 0's frame: view 0 of the first chunk is the identity up to its own noise
    assert merged["extrinsic"].shape == (400, 3, 4) and merged["depth"].shape[0] == 400


def test_overlapping_chunks_do_not_drift_where_split_does():
    n, size = 300, 40
    scene = corridor(n, seed=4)
    # the late views do not see view 0 (their points fall outside its image)
    cam = scene.points[-1].reshape(-1, 3) @ scene.extrinsic[0, :, :3].T + scene.extrinsic[0, :, 3]
    uv = cam @ scene.intrinsic.T
    u = uv[:, 0] / uv[:, 2]
    assert not np.any((cam[:, 2] > 0) & (u >= 0) & (u < 16))

    split = split_chunks(n, size)
    split_merged = SceneReconstructor._assemble(chunk_outputs(scene, split, seed=6), split)
    chunks = overlapping_chunks(n, size, size // 2)
    merged, _ = align_chunks(chunk_outputs(scene, chunks, seed=6), chunks)
    split_ate, _ = _ate_rel(split_merged, scene)
    chunks_ate, _ = _ate_rel(merged, scene)
    assert chunks_ate <= 0.01
    assert split_ate > 5 * chunks_ate and split_ate > 0.02, (split_ate, chunks_ate)


def test_overlapping_chunks_need_shared_views():
    scene = corridor(20)
    chunks = [np.arange(0, 10), np.arange(10, 20)]
    with pytest.raises(InputError, match="shares no view"):
        align_chunks(chunk_outputs(scene, chunks), chunks)
