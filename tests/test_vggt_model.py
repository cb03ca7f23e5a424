"""VGGT model: official state-dict layout, weights, inputs, batching, dtypes, geometry, preprocessing."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from tomeray.models.errors import ConfigError, InputError, WeightsError
from tomeray.models.vggt import VGGT, MergeConfig, VGGTModelConfig, create_vggt, get_arch, list_archs
from tomeray.models.vggt.geometry import (
    confidence_mask,
    extri_intri_to_pose_encoding,
    mat_to_quat,
    pose_encoding_to_extri_intri,
    quat_to_mat,
    unproject_depth_map_to_point_map,
)
from tomeray.models.vggt.preprocess import preprocess_images
from tomeray.models.vggt.weights import load_state_dict_strict

TINY_WEIGHTS = "vggt_tiny_state_dict.safetensors"


def tiny_model(fixtures_dir, **merge) -> VGGT:
    cfg = VGGTModelConfig(
        arch="vggt-tiny",
        pretrained=str(fixtures_dir / TINY_WEIGHTS),
        merge=MergeConfig(**merge) if merge else MergeConfig(enabled=False),
    )
    return create_vggt(cfg)


def random_images(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- architecture


def test_vggt_1b_manifest_state_dict_matches(fixtures_dir):
    """Built on the meta device (no 5 GB allocation): every key, shape and dtype of the official one."""
    manifest = json.loads((fixtures_dir / "vggt_1b_state_dict_manifest.json").read_text())
    with torch.device("meta"):
        model = VGGT(get_arch("vggt-1b"))
    state = model.state_dict()
    expected = {key: (tuple(shape), dtype) for key, shape, dtype in manifest["entries"]}
    assert len(expected) == manifest["num_entries"] == 1797
    assert sorted(state) == sorted(expected)
    for key, tensor in state.items():
        assert (tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")) == expected[key], key
    assert sum(t.numel() for t in state.values()) == manifest["total_numel_state_dict"] == 1_256_537_516
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters_module"]
    for top, info in manifest["per_top_level_module"].items():
        numel = sum(t.numel() for k, t in state.items() if k.startswith(top + "."))
        assert numel == info["numel"], top


def test_vggt_1b_manifest_checkpoint_loads_strictly(fixtures_dir):
    """A checkpoint with exactly the manifest's tensors loads strictly (meta tensors: no memory)."""
    manifest = json.loads((fixtures_dir / "vggt_1b_state_dict_manifest.json").read_text())
    state = {key: torch.empty(shape, device="meta") for key, shape, _ in manifest["entries"]}
    with torch.device("meta"):
        model = VGGT(get_arch("vggt-1b"))
    load_state_dict_strict(model, state, "manifest")
    assert model.track_head is not None
    del state["aggregator.camera_token"]
    with pytest.raises(WeightsError, match="aggregator.camera_token"):
        load_state_dict_strict(model, state, "manifest")


def test_vggt_archs_and_config_errors():
    assert {"vggt-1b", "vggt-tiny"} <= set(list_archs())
    with pytest.raises(ConfigError, match="unknown VGGT arch"):
        create_vggt(VGGTModelConfig(arch="vggt-huge", pretrained="none"))
    with pytest.raises(ConfigError, match="ratio"):
        create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained="none", merge=MergeConfig(ratio=1.5)))
    with pytest.raises(ConfigError, match="start_block"):
        create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained="none", merge=MergeConfig(start_block=4)))


# ----------------------------------------------------------------------------- weights


def test_vggt_random_init_is_seeded_and_labelled():
    a = create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained="none", seed=3))
    b = create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained="none", seed=3))
    c = create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained="none", seed=4))
    assert a.weights_id == "random-init(seed=3)" and not a.training
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert next(a.parameters()).dtype == torch.float32


def test_vggt_weights_from_pt_file_and_errors(fixtures_dir, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(fixtures_dir / TINY_WEIGHTS))
    pt = tmp_path / "tiny.pt"
    torch.save({"model": state}, pt)
    model = create_vggt(
        VGGTModelConfig(arch="vggt-tiny", pretrained=str(pt), merge=MergeConfig(enabled=False))
    )
    assert model.weights_id == str(pt.resolve())
    assert torch.equal(model.state_dict()["aggregator.camera_token"], state["aggregator.camera_token"])

    with pytest.raises(WeightsError, match="not found"):
        create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained=str(tmp_path / "missing.pt")))
    with pytest.raises(WeightsError, match="does not fit"):
        create_vggt(VGGTModelConfig(arch="vggt-1b", pretrained=str(fixtures_dir / TINY_WEIGHTS)))
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained=str(tmp_path / "broken.safetensors")))


def test_vggt_hub_weights_offline_give_instructions(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty cache
    with pytest.raises(WeightsError) as err:
        create_vggt(VGGTModelConfig(arch="vggt-1b", pretrained="facebook/VGGT-1B"))
    message = str(err.value)
    assert "facebook/VGGT-1B" in message and "pretrained=/path/to/file" in message


def test_vggt_hub_weights_from_local_cache(fixtures_dir, tmp_path, monkeypatch):
    """A hub id already in the Hugging Face cache loads without network."""
    import shutil

    import huggingface_hub.constants

    revision = "0" * 40
    repo = tmp_path / "hub" / "models--tomeray--vggt-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    shutil.copy(fixtures_dir / TINY_WEIGHTS, repo / "snapshots" / revision / "model.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained="tomeray/vggt-tiny"))
    assert model.weights_id == "tomeray/vggt-tiny"


def test_vggt_checkpoint_without_track_head_drops_it(fixtures_dir):
    from safetensors.torch import load_file

    arch = dataclasses.replace(get_arch("vggt-tiny"), track_head=True)
    model = VGGT(arch)
    assert model.track_head is not None
    load_state_dict_strict(model, load_file(str(fixtures_dir / TINY_WEIGHTS)), "tiny")
    assert model.track_head is None
    with pytest.raises(InputError, match="no track head"):
        model(random_images(2, 3, 28, 28), query_points=torch.zeros(3, 2))


# ----------------------------------------------------------------------------- inputs


def test_vggt_rejects_bad_inputs(fixtures_dir):
    model = tiny_model(fixtures_dir)
    bad = {
        "5 dims but 4 channels": random_images(1, 2, 4, 28, 28),
        "3 dims": random_images(3, 28, 28),
        "not a multiple of 14": random_images(2, 3, 30, 28),
        "integers": torch.zeros(2, 3, 28, 28, dtype=torch.uint8),
        "no views": random_images(1, 0, 3, 28, 28),
    }
    for why, images in bad.items():
        with pytest.raises(InputError):
            model(images)
        assert why
    with pytest.raises(InputError, match="torch.Tensor"):
        model(np.zeros((2, 3, 28, 28), dtype=np.float32))


def test_vggt_memory_estimate_fails_before_allocating(fixtures_dir):
    model = tiny_model(fixtures_dir)
    model.memory_budget = 1 << 20  # 1 MiB
    with pytest.raises(InputError, match="fewer views"):
        model(random_images(8, 3, 70, 98))
    model.memory_budget = None  # back to the device's free memory: fits
    with torch.no_grad():
        assert model(random_images(2, 3, 28, 28))["depth"].shape == (1, 2, 28, 28, 1)


def test_vggt_single_view_and_odd_grids(fixtures_dir):
    model = tiny_model(fixtures_dir, enabled=True)
    with torch.no_grad():
        one = model(random_images(1, 3, 42, 126))
        assert one["pose_enc"].shape == (1, 1, 9)
        assert one["world_points"].shape == (1, 1, 42, 126, 3)
        tall = model(random_images(3, 3, 126, 42))
    assert tall["depth_conf"].shape == (1, 3, 126, 42)
    assert all(torch.isfinite(v).all() for k, v in tall.items() if k != "pose_enc_list")


def test_vggt_batch_items_are_independent(fixtures_dir):
    """B scenes in one call give what each scene gives alone, merged or not."""
    scenes = random_images(2, 3, 3, 56, 70)
    for merge in ({}, {"enabled": True}):
        model = tiny_model(fixtures_dir, **merge)
        with torch.no_grad():
            together = model(scenes)
            alone = [model(scene) for scene in scenes]
        for b in range(2):
            for key in ("pose_enc", "depth", "world_points", "world_points_conf"):
                torch.testing.assert_close(together[key][b], alone[b][key][0], atol=1e-5, rtol=1e-4)


def test_vggt_bfloat16_model_and_autocast(fixtures_dir):
    images = random_images(3, 3, 56, 70)
    model = tiny_model(fixtures_dir)
    with torch.no_grad():
        ref = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(images)
        half = model.to(torch.bfloat16)(images.to(torch.bfloat16))
    assert auto["depth"].dtype == torch.float32  # heads run in float32 under autocast
    assert half["depth"].dtype == torch.bfloat16
    for out in (auto, half):
        rel = (out["world_points"].float() - ref["world_points"]).norm() / ref["world_points"].norm()
        assert rel < 0.05
        assert torch.isfinite(out["depth"].float()).all()


def test_vggt_track_head_follows_query_points():
    arch = dataclasses.replace(get_arch("vggt-tiny"), track_head=True)
    torch.manual_seed(0)
    model = VGGT(arch).eval()
    queries = torch.tensor([[10.0, 12.0], [40.0, 30.0], [70.0, 50.0]])
    with torch.no_grad():
        out = model(random_images(3, 3, 140, 168), query_points=queries)
    assert out["track"].shape == (1, 3, 3, 2)
    assert out["vis"].shape == out["conf"].shape == (1, 3, 3)
    torch.testing.assert_close(out["track"][0, 0], queries)  # view 0 is the query view
    assert ((out["vis"] >= 0) & (out["vis"] <= 1)).all()
    with pytest.raises(InputError, match="query_points"):
        model(random_images(3, 3, 140, 168), query_points=torch.zeros(2, 2, 3))
    with pytest.raises(InputError, match="at least 128 pixels"):
        model(random_images(3, 3, 56, 84), query_points=queries)


# ----------------------------------------------------------------------------- geometry


def random_rotations(n, seed=0):
    quat = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rot = quat_to_mat(quat)
    # include exact half turns, where naive conversions break down
    rot[0] = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    rot[1] = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
    return rot


def test_vggt_geometry_pose_encoding_round_trip():
    rot = random_rotations(16).view(2, 8, 3, 3)
    t = torch.randn(2, 8, 3, dtype=torch.float64)
    extrinsic = torch.cat((rot, t[..., None]), dim=-1)
    H, W = 392, 518
    intrinsic = torch.zeros(2, 8, 3, 3, dtype=torch.float64)
    intrinsic[..., 0, 0], intrinsic[..., 1, 1] = 500.0, 480.0
    intrinsic[..., 0, 2], intrinsic[..., 1, 2], intrinsic[..., 2, 2] = W / 2, H / 2, 1.0
    enc = extri_intri_to_pose_encoding(extrinsic, intrinsic, (H, W))
    assert enc.shape == (2, 8, 9) and enc.dtype == torch.float32
    assert (enc[..., 6] >= 0).all()  # w >= 0
    ext2, intr2 = pose_encoding_to_extri_intri(enc.double(), (H, W))
    torch.testing.assert_close(ext2, extrinsic, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(intr2, intrinsic, atol=1e-3, rtol=1e-6)
    # a scaled quaternion is the same rotation
    q = mat_to_quat(rot)
    torch.testing.assert_close(quat_to_mat(3.0 * q), rot, atol=1e-9, rtol=0)
    with pytest.raises(InputError):
        pose_encoding_to_extri_intri(enc[..., :8], (H, W))


def test_vggt_geometry_unprojection_reprojects_to_pixels():
    H, W = 6, 8
    rot = random_rotations(3, seed=1)
    extrinsic = torch.cat((rot, torch.randn(3, 3, 1, dtype=torch.float64)), dim=-1)
    _, intrinsic = pose_encoding_to_extri_intri(
        torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1.0, 1.2]] * 3, dtype=torch.float64), (H, W)
    )
    depth = 1 + torch.rand(3, H, W, 1, dtype=torch.float64)
    points = unproject_depth_map_to_point_map(depth, extrinsic, intrinsic)
    assert points.shape == (3, H, W, 3)
    cam = (extrinsic[:, None, None, :, :3] @ points[..., None])[..., 0] + extrinsic[:, None, None, :, 3]
    torch.testing.assert_close(cam[..., 2], depth[..., 0])
    pix = (intrinsic[:, None, None] @ (cam / cam[..., 2:])[..., None])[..., 0]
    v, u = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    torch.testing.assert_close(pix[..., 0], u.double().expand(3, H, W))
    torch.testing.assert_close(pix[..., 1], v.double().expand(3, H, W))
    # NumPy in, NumPy out, same numbers
    as_np = unproject_depth_map_to_point_map(depth.numpy(), extrinsic.numpy(), intrinsic.numpy())
    assert isinstance(as_np, np.ndarray) and as_np.dtype == np.float32
    np.testing.assert_allclose(as_np, points.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError):
        unproject_depth_map_to_point_map(depth, extrinsic[:2], intrinsic)


def test_vggt_geometry_confidence_mask():
    conf = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [4.0, 5.0, 6.0, 7.0]])
    assert confidence_mask(conf).sum() == 7
    assert confidence_mask(conf, threshold=4.5).tolist() == [[False] * 4, [False, True, True, True]]
    finite = conf[torch.isfinite(conf)].numpy()
    cut = np.percentile(finite, 50)
    assert confidence_mask(conf, percentile=50).sum() == int((finite >= cut).sum())
    both = confidence_mask(conf, threshold=6.5, percentile=10)
    assert both.sum() == 1
    with pytest.raises(InputError):
        confidence_mask(conf, percentile=150)


# ----------------------------------------------------------------------------- preprocessing


def test_vggt_preprocess_modes_and_mixed_sizes():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    tall = rng.integers(0, 255, (640, 480, 3), dtype=np.uint8)
    crop = preprocess_images([wide, tall], mode="crop")
    # wide: 518 x 392; tall: 518 wide, 686 tall -> centre crop to 518; batch padded to 518 x 518
    assert crop.shape == (2, 3, 518, 518)
    assert (crop[0, :, :63] == 1.0).all() and (crop[0, :, -63:] == 1.0).all()  # white padding
    pad, info = preprocess_images([wide, tall], mode="pad", return_info=True)
    assert pad.shape == (2, 3, 518, 518)
    assert info[0].resized_hw == (392, 518) and info[0].offset_xy == (0, 63)
    assert info[1].resized_hw == (518, 392) and info[1].offset_xy == (63, 0)
    one = preprocess_images([wide[..., 0]], size=98)  # grayscale, smaller model size
    assert one.shape == (1, 3, 70, 98) and torch.equal(one[0, 0], one[0, 1])
    rgba = np.concatenate([wide, np.zeros((480, 640, 1), np.uint8)], axis=2)
    assert (preprocess_images([rgba]) == 1.0).all()  # fully transparent -> white
    assert all(s % 14 == 0 for s in crop.shape[-2:])


def test_vggt_preprocess_rejects_bad_images():
    ok = np.zeros((40, 60, 3), np.uint8)
    with pytest.raises(InputError, match="at least 1"):
        preprocess_images([])
    with pytest.raises(InputError, match="uint8"):
        preprocess_images([ok.astype(np.float32)])
    with pytest.raises(InputError, match="HxWx3"):
        preprocess_images([np.zeros((40, 60, 5), np.uint8)])
    with pytest.raises(InputError, match="aspect ratio"):
        preprocess_images([np.zeros((10, 4000, 3), np.uint8)])
    with pytest.raises(InputError, match="mode"):
        preprocess_images([ok], mode="stretch")
