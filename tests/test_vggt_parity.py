"""Parity of the VGGT port with the official code, on the tiny reference fixture (float32, CPU)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tomeray.models.vggt import MergeConfig, VGGTModelConfig, create_vggt
from tomeray.models.vggt.geometry import pose_encoding_to_extri_intri
from tomeray.models.vggt.preprocess import preprocess_images

ATOL, RTOL = 1e-5, 1e-4
FIXTURE_FILES = ["left01.jpg", "right01.jpg", "left02.jpg", "right02.jpg"]


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    return load_file(str(fixtures_dir / "vggt_tiny_io.safetensors"))


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    cfg = VGGTModelConfig(
        arch="vggt-tiny",
        pretrained=str(fixtures_dir / "vggt_tiny_state_dict.safetensors"),
        merge=MergeConfig(enabled=False),
    )
    return create_vggt(cfg)


def assert_close(name, actual, expected):
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")


def test_vggt_parity_outputs(tiny, reference):
    assert tiny.weights_id.endswith("vggt_tiny_state_dict.safetensors")
    with torch.no_grad():
        out = tiny(reference["images"])  # 4-D input: the model adds B=1 like the official one
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert_close(key, out[key], reference[key])
    assert len(out["pose_enc_list"]) == 4
    for i, pose in enumerate(out["pose_enc_list"]):
        assert_close(f"pose_enc_list.{i}", pose, reference[f"pose_enc_list.{i}"])
    extrinsic, _ = pose_encoding_to_extri_intri(out["pose_enc"], (70, 98))
    assert_close("extrinsic_from_pose_enc", extrinsic, reference["extrinsic_from_pose_enc"])


def test_vggt_parity_intermediate_tokens(tiny, reference):
    images = reference["images"][None]
    with torch.no_grad():
        patch_tokens = tiny.aggregator.embed(images)
        layers, patch_start_idx = tiny.aggregate(images)
    assert patch_start_idx == 5
    assert_close("patch_embed_x_norm_patchtokens", patch_tokens, reference["patch_embed_x_norm_patchtokens"])
    assert sorted(layers) == [0, 1, 2, 3]
    for i in range(4):
        assert_close(f"aggregated_tokens.{i}", layers[i], reference[f"aggregated_tokens.{i}"])


def test_vggt_parity_merging_without_removals_is_exact(fixtures_dir, reference):
    """Merging switched on but with nothing to remove must take the plain attention path."""
    cfg = VGGTModelConfig(
        arch="vggt-tiny",
        pretrained=str(fixtures_dir / "vggt_tiny_state_dict.safetensors"),
        merge=MergeConfig(enabled=True, ratio=0.0),
    )
    with torch.no_grad():
        out = create_vggt(cfg)(reference["images"])
    assert_close("depth", out["depth"], reference["depth"])
    assert_close("world_points", out["world_points"], reference["world_points"])


def test_vggt_parity_preprocessing(opencv_data, fixtures_dir, reference):
    """The official loader's crop-mode tensor, bit for bit (sha256 of the float32 bytes)."""
    import json

    meta = json.loads((fixtures_dir / "vggt_tiny_config.json").read_text())["input"]
    images = [np.asarray(Image.open(opencv_data / name).convert("RGB")) for name in FIXTURE_FILES]
    x = preprocess_images(images, mode="crop")
    assert tuple(x.shape) == (4, 3, 392, 518) == tuple(meta["official_preprocess_shape"])
    assert x.dtype == torch.float32
    assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == meta["official_preprocess_sha256_float32_bytes"]
    assert x.double().sum().item() == pytest.approx(meta["official_preprocess_sum"], abs=1e-6)
    # ... and the fixture's model input is its antialiased resize to the tiny image size
    tiny_input = torch.nn.functional.interpolate(
        x, size=(70, 98), mode="bilinear", align_corners=False, antialias=True
    )
    torch.testing.assert_close(tiny_input, reference["images"], atol=0, rtol=0)
