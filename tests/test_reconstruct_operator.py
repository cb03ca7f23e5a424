"""The reconstruct stage without Ray: chunked (split) scenes reassembled in one frame, intrinsics in
original pixels, padding and confidence filtering, and the actor's call on real images with the
random-init ``vggt-tiny`` model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tomeray.models.pose import Sim3, quaternion_to_rotation
from tomeray.operators.scene_load import load_scene_views
from tomeray.operators.scene_reconstruct import (
    SceneReconstructor,
    chunk_alignment,
    content_mask,
    original_intrinsics,
    split_chunks,
)

TINY = {"arch": "vggt-tiny", "pretrained": "none"}


def test_split_chunks_share_the_anchor():
    assert [c.tolist() for c in split_chunks(3, 4)] == [[0, 1, 2]]
    chunks = split_chunks(8, 3)
    assert all(c[0] == 0 and len(c) <= 3 for c in chunks)
    assert sorted(np.concatenate([c[1:] for c in chunks]).tolist()) == list(range(1, 8))


def synthetic_scene(views=7, hw=(6, 8), seed=0):
    """Poses and depth maps of one scene, in the frame of view 0."""
    rng = np.random.default_rng(seed)
    R = quaternion_to_rotation(np.c_[np.ones(views) * 4, rng.normal(size=(views, 3))])
    R[0] = np.eye(3)
    t = rng.normal(size=(views, 3))
    t[0] = 0
    E = np.concatenate([R, t[:, :, None]], 2)
    depth = rng.uniform(2, 5, (views, *hw)).astype(np.float32)
    return E, depth


def test_chunks_predicted_in_their_own_frames_are_reassembled_exactly():
    E, depth = synthetic_scene()
    K = np.tile(np.array([[10.0, 0, 4], [0, 10, 3], [0, 0, 1]]), (7, 1, 1))
    points = np.random.default_rng(1).normal(size=(7, 6, 8, 3)).astype(np.float32)
    chunks = split_chunks(7, 3)
    outputs = []
    for k, chunk in enumerate(chunks):
        # each model call has its own world frame and scale: world_k = S_k^-1(world_0)
        S = Sim3(1.0 + k, quaternion_to_rotation([1.0, 0.1 * k, -0.2 * k, 0.3]), np.array([k, -k, 0.5 * k]))
        inverse = Sim3(1 / S.s, S.R.T, -S.R.T @ S.t / S.s)
        outputs.append({"extrinsic": inverse.apply_to_extrinsics(E[chunk]), "intrinsic": K[chunk],
                        "depth": depth[chunk] / S.s, "points": inverse.apply(points[chunk]),
                        "conf": np.full((len(chunk), 6, 8), float(k), np.float32)})
    got = SceneReconstructor._assemble(outputs, chunks)
    first = Sim3(1.0, quaternion_to_rotation([1.0, 0, 0, 0.3]), np.zeros(3))  # chunk 0's own frame
    expected_E = Sim3(1.0, first.R.T, np.zeros(3)).apply_to_extrinsics(E)
    assert np.allclose(got["extrinsic"], expected_E, atol=1e-9)
    assert np.allclose(got["depth"], depth, rtol=1e-5)
    assert np.allclose(got["points"], points @ first.R, atol=1e-4)  # chunk 0's frame, everywhere
    assert got["conf"][0].max() == 0 and got["conf"][1].max() == 0  # anchor and view 1 from chunk 0


def test_chunk_alignment_recovers_scale_and_pose():
    E, depth = synthetic_scene(2)
    s, R, t = chunk_alignment(E[0], depth[0], E[1], depth[0] / 2.0, np.ones(depth[0].shape, bool))
    assert s == pytest.approx(2.0)
    aligned = Sim3(s, R, t).apply_to_extrinsics(E[1])
    assert np.allclose(aligned, E[0], atol=1e-9)


def test_intrinsics_in_original_pixels():
    # An original 640x480 image resized by 0.8 and shifted by (3, -5) in the model input.
    scale, offset = np.array([[0.8, 0.75]]), np.array([[3.0, -5.0]])
    K_model = np.array([[[400.0, 0, 259], [0, 410, 196], [0, 0, 1]]])
    K = original_intrinsics(K_model, scale, offset)[0]
    X = np.array([0.3, -0.2, 2.0])
    u, v = (K_model[0] @ X)[:2] / X[2]
    x, y = (K @ X)[:2] / X[2]
    # the preprocessing maps original pixel centre x to (x + 0.5) * scale - 0.5 + offset
    assert u == pytest.approx((x + 0.5) * 0.8 - 0.5 + 3) and v == pytest.approx((y + 0.5) * 0.75 - 0.5 - 5)


def test_content_mask_excludes_padding():
    mask = content_mask((4, 6), np.array([[1, 0], [0, -2]]), np.array([[4, 3], [8, 6]]))
    assert mask[0].sum() == 12 and not mask[0][:, 0].any() and mask[0][:, 1:4].all()
    assert mask[1].all()  # cropped (negative offset): every pixel shows the image


@pytest.fixture(scope="module")
def scene(opencv_data):
    names = ["left01.jpg", "aloeL.jpg", "leuvenA.jpg"]  # mixed sizes and aspect ratios
    spec = {"scene": "s", "images": [str(opencv_data / n) for n in names], "frame_idx": [0, 4, 9]}
    return load_scene_views(spec, max_views=8)


def call(rec, scene):
    batch = {"scene": np.array(["s"], dtype=object), "images": scene["images"][None],
             "frame_idx": scene["frame_idx"][None], "image_path": np.array([json.dumps(scene["image_path"])]),
             "orig_hw": scene["orig_hw"][None], "scale_xy": scene["scale_xy"][None],
             "offset_xy": scene["offset_xy"][None], "content_hw": scene["content_hw"][None],
             "skipped": np.array([0]), "errors": np.array(["[]"], dtype=object)}
    return {k: (v[0] if len(v) else v) for k, v in rec(batch).items()}


def test_reconstructor_on_real_images(scene):
    rec = SceneReconstructor(TINY, {"conf_percentile": 50.0, "max_points": 5000}, num_threads=2)
    out = call(rec, scene)
    stats = json.loads(out["stats"])
    assert out["status"] == "ok" and stats["weights_id"] == "random-init(seed=0)" and stats["views"] == 3
    assert out["frame_idx"].tolist() == [0, 4, 9] and json.loads(out["image_path"]) == scene["image_path"]
    assert out["width"].tolist() == [640, 1282, 751] and out["height"].tolist() == [480, 1110, 563]
    assert out["extrinsic"].shape == (3, 3, 4) and np.isfinite(out["intrinsic"]).all()
    assert out["xyz"].shape == (5000, 3) and out["rgb"].dtype == np.uint8 and len(out["confidence"]) == 5000
    assert set(out["point_frame"].tolist()) <= {0, 4, 9}
    valid = content_mask(scene["images"].shape[1:3], scene["offset_xy"], scene["content_hw"]).sum()
    assert stats["points_valid"] == valid  # padding never becomes points
    assert stats["points_confident"] == pytest.approx(valid / 2, rel=0.02)  # the 50th percentile
    # Depth points re-project into the ORIGINAL image they came from, through the stored cameras.
    for v, frame in enumerate(out["frame_idx"]):
        pts = out["xyz"][out["point_frame"] == frame].astype(np.float64)
        E, K = out["extrinsic"][v], out["intrinsic"][v]
        cam = pts @ E[:, :3].T + E[:, 3]
        pix = cam @ K.T
        uv = pix[:, :2] / pix[:, 2:]
        assert (cam[:, 2] > 0).all()
        assert (uv[:, 0] > -1).all() and (uv[:, 0] < out["width"][v]).all()
        assert (uv[:, 1] > -1).all() and (uv[:, 1] < out["height"][v]).all()


def test_split_policy_and_point_head(scene):
    rec = SceneReconstructor(TINY, {"source": "point_head", "conf_percentile": None, "max_points": 0},
                             max_views=2, policy="split")
    out = call(rec, scene)
    stats = json.loads(out["stats"])
    assert out["status"] == "ok" and stats["chunks"] == 2 and len(out["extrinsic"]) == 3
    assert stats["points"] == stats["points_valid"] == len(out["xyz"])  # no filter, no cap
    assert np.isfinite(out["extrinsic"]).all() and np.isfinite(out["xyz"]).all()


def test_failures_become_error_rows(scene):
    rec = SceneReconstructor({**TINY, "merge": {"enabled": False}})
    rec.model.memory_budget = 1024  # bytes: far too little for any scene
    out = call(rec, scene)
    errors = json.loads(out["errors"])
    assert out["status"] == "failed" and errors[-1]["stage"] == "reconstruct"
    assert errors[-1]["error_type"] == "InputError" and "fewer views" in errors[-1]["message"]
    assert len(out["xyz"]) == 0 and len(out["extrinsic"]) == 0

    empty = load_scene_views({"scene": "s", "images": []})
    out = call(SceneReconstructor(TINY), empty)
    assert out["status"] == "failed" and json.loads(out["errors"])[0]["error_type"] == "NoUsableImages"
