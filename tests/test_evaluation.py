"""Pose and point cloud metrics: zero on identical inputs, the known error under synthetic rotation,
translation, scale changes and noise; and the evaluation job on exported files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tomeray.jobs.eval_reconstruction import main as eval_main
from tomeray.models.errors import InputError
from tomeray.models.pose import Sim3, camera_centers, quaternion_to_rotation, rotation_angle_deg, umeyama
from tomeray.pipeline.reconstruction.evaluation import evaluate, match_names, point_metrics, pose_metrics
from tomeray.pipeline.reconstruction.exports import write_colmap_text, write_ply
from tomeray.pipeline.reconstruction.layout import cameras_table


def rot(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    half = np.radians(degrees) / 2
    return quaternion_to_rotation(np.r_[np.cos(half), np.sin(half) * axis])


def trajectory(n=20, seed=0):
    """Cameras on a noisy circle looking inwards-ish: world-to-camera (n, 3, 4)."""
    rng = np.random.default_rng(seed)
    R = quaternion_to_rotation(rng.normal(size=(n, 4)))
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    centres = np.stack([3 * np.cos(angle), 3 * np.sin(angle), rng.normal(0, 0.3, n)], 1)
    t = -np.einsum("nij,nj->ni", R, centres)
    return np.concatenate([R, t[:, :, None]], 2)


SIM = Sim3(2.5, rot([1, 2, 3], 40), np.array([1.0, -2.0, 0.5]))


def test_umeyama_recovers_a_similarity():
    src = np.random.default_rng(0).normal(size=(50, 3))
    est = umeyama(src, SIM.apply(src))
    assert est.s == pytest.approx(2.5) and np.allclose(est.R, SIM.R) and np.allclose(est.t, SIM.t)
    assert umeyama(src, SIM.apply(src), with_scale=False).s == 1.0


def test_identical_cameras_give_zero_error():
    E = trajectory()
    m, sim = pose_metrics(E, E)
    for key in ("ate_rmse", "ate_mean", "rot_mean_deg", "rot_max_deg", "rpe_trans_rmse", "rpe_rot_mean_deg"):
        assert m[key] == pytest.approx(0, abs=1e-6), key
    assert m["scale"] == pytest.approx(1) and m["views"] == 20


def test_a_similarity_of_the_world_is_undone_by_sim3_alignment():
    ref = trajectory()
    # The prediction is the reference seen in another frame and scale: x_pred = S^-1(x_ref).
    inverse = Sim3(1 / SIM.s, SIM.R.T, -SIM.R.T @ SIM.t / SIM.s)
    pred = inverse.apply_to_extrinsics(ref)
    assert np.allclose(camera_centers(pred), inverse.apply(camera_centers(ref)))
    m, sim = pose_metrics(pred, ref, "sim3")
    assert m["ate_rmse"] < 1e-9 and m["rot_max_deg"] < 1e-6 and m["rpe_trans_rmse"] < 1e-9
    assert m["scale"] == pytest.approx(2.5)
    # se3 cannot undo the scale: the error is that of the best rigid fit, clearly not zero
    assert pose_metrics(pred, ref, "se3")[0]["ate_rmse"] > 0.5


def test_known_errors_without_alignment():
    ref = trajectory()
    # Translating the world by d moves every camera centre by exactly |d|; orientations unchanged.
    d = np.array([0.3, -0.4, 1.2])
    moved = Sim3(1.0, np.eye(3), d).apply_to_extrinsics(ref)
    m, _ = pose_metrics(moved, ref, "none")
    assert m["ate_mean"] == pytest.approx(1.3) and m["ate_rmse"] == pytest.approx(1.3)
    assert m["rot_max_deg"] == pytest.approx(0, abs=1e-6)
    assert m["rpe_rot_mean_deg"] == pytest.approx(0, abs=1e-6)
    # Rotating the world by 10 degrees turns every camera by 10 degrees; relative motions keep their angles.
    turned = Sim3(1.0, rot([0, 0, 1], 10), np.zeros(3)).apply_to_extrinsics(ref)
    m, _ = pose_metrics(turned, ref, "none")
    assert m["rot_mean_deg"] == pytest.approx(10) and m["rot_max_deg"] == pytest.approx(10)
    assert m["rpe_rot_mean_deg"] == pytest.approx(0, abs=1e-6)
    # Scaling the world by 2 doubles every centre's distance from the origin.
    scaled = Sim3(2.0, np.eye(3), np.zeros(3)).apply_to_extrinsics(ref)
    m, _ = pose_metrics(scaled, ref, "none")
    assert m["ate_mean"] == pytest.approx(np.linalg.norm(camera_centers(ref), axis=1).mean())


def test_noise_gives_the_expected_trajectory_error():
    ref = trajectory(400, seed=3)
    sigma = 0.01
    noise = np.random.default_rng(4).normal(0, sigma, (400, 3))
    R = ref[:, :, :3]
    noisy = ref.copy()
    noisy[:, :, 3] = -np.einsum("nij,nj->ni", R, camera_centers(ref) + noise)  # centres moved, R kept
    m, _ = pose_metrics(noisy, ref, "sim3")
    assert m["ate_rmse"] == pytest.approx(sigma * np.sqrt(3), rel=0.1)
    assert m["rot_max_deg"] < 0.1  # the fit to noisy centres turns the cameras only slightly


def test_rotation_angle_is_exact_near_zero_and_half_turn():
    assert rotation_angle_deg(rot([0, 1, 0], 1e-4)) == pytest.approx(1e-4, rel=1e-6)
    assert rotation_angle_deg(rot([1, 1, 0], 179.999)) == pytest.approx(179.999, rel=1e-9)


def test_two_cameras_align_by_the_first_pose():
    ref = trajectory(2)
    pred = Sim3(0.5, rot([0, 1, 1], 30), np.array([0, 1.0, 0])).apply_to_extrinsics(ref)
    m, _ = pose_metrics(pred, ref, "sim3")
    assert m["ate_rmse"] < 1e-9 and m["rot_max_deg"] < 1e-6


def test_point_metrics_known_offset_and_thresholds():
    grid = np.stack(np.meshgrid(*[np.arange(5.0)] * 3), -1).reshape(-1, 3)  # spacing 1
    assert point_metrics(grid, grid)["chamfer"] == 0.0
    m = point_metrics(grid + [0.1, 0, 0], grid, tau=0.05)
    assert m["accuracy"] == pytest.approx(0.1, abs=1e-6) and m["completeness"] == pytest.approx(0.1, abs=1e-6)
    assert m["chamfer"] == pytest.approx(0.1, abs=1e-6) and m["fscore"] == 0.0
    # a prediction covering half the reference: accurate, half complete
    half = grid[grid[:, 0] < 2.5]
    m = point_metrics(half, grid, tau=0.5)
    assert m["accuracy"] == 0 and m["precision"] == 1.0
    assert m["recall"] == pytest.approx(len(half) / len(grid))
    with pytest.raises(InputError):
        point_metrics(np.zeros((0, 3)), grid)


def test_names_match_by_path_or_file_name():
    pred, ref = match_names(["/x/a.jpg", "/x/b.jpg"], ["b.jpg", "c.jpg", "a.jpg"])
    assert pred.tolist() == [1, 0] and ref.tolist() == [0, 2]
    with pytest.raises(InputError, match="no views in common"):
        match_names(["a.jpg"], ["b.jpg"])


@pytest.fixture
def files(tmp_path):
    """A reference (COLMAP model + PLY) and a prediction in another similarity frame (Parquet +
    PLY), as the evaluation job reads them."""
    ref = trajectory(6, seed=5)
    names = [f"img{i}.jpg" for i in range(6)]
    K = np.tile(np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]), (6, 1, 1))
    cloud = np.random.default_rng(6).normal(size=(300, 3))
    write_colmap_text(tmp_path / "ref", names, [640] * 6, [480] * 6, K, ref, np.zeros((0, 3)),
                      np.zeros((0, 3)), np.zeros(0))
    write_ply(tmp_path / "ref.ply", cloud, np.zeros((300, 3)))
    inverse = Sim3(1 / SIM.s, SIM.R.T, -SIM.R.T @ SIM.t / SIM.s)
    import pyarrow.parquet as pq

    pq.write_table(cameras_table("s", range(6), [f"/data/s/{n}" for n in names], [640] * 6, [480] * 6,
                                 inverse.apply_to_extrinsics(ref), K), tmp_path / "pred.parquet")
    write_ply(tmp_path / "pred.ply", inverse.apply(cloud), np.zeros((300, 3)))
    return tmp_path


def test_evaluate_files_identical_and_transformed(files):
    same = evaluate(files / "ref", files / "ref", pred_points=files / "ref.ply", ref_points=files / "ref.ply")
    assert same["pose"]["ate_rmse"] < 1e-9 and same["points"]["chamfer"] == pytest.approx(0, abs=1e-6)
    moved = evaluate(files / "pred.parquet", files / "ref", files / "ref.ply", pred_points=files / "pred.ply",
                     tau=0.01)
    assert moved["pose"]["ate_rmse"] < 1e-6 and moved["pose"]["rot_max_deg"] < 1e-4
    assert moved["pose"]["scale"] == pytest.approx(2.5)
    assert moved["points"]["chamfer"] < 1e-5 and moved["points"]["fscore"] == 1.0
    unaligned = evaluate(files / "pred.parquet", files / "ref", files / "ref.ply",
                         pred_points=files / "pred.ply", align="none")
    assert unaligned["pose"]["rot_mean_deg"] == pytest.approx(40, abs=1e-4)  # SIM's rotation, known


def test_eval_job_prints_a_table_and_writes_json(files, capsys):
    out = files / "eval.json"
    code = eval_main(["--pred", str(files / "pred.parquet"), "--ref-cameras", str(files / "ref"),
                      "--pred-points", str(files / "pred.ply"), "--ref-points", str(files / "ref.ply"),
                      "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pose.ate_rmse" in printed and "points.chamfer" in printed
    result = json.loads(out.read_text())
    assert result["pose"]["ate_rmse"] < 1e-6 and result["alignment"]["scale"] == pytest.approx(2.5)
    assert eval_main(["--pred", str(files / "pred.parquet")]) == 2  # no reference: a clear error
    assert "reference" in capsys.readouterr().err
