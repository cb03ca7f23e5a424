"""Parity with the official TempMe code (LunarShen/TempMe @ e62493037bc6) on the tiny fixture tower."""

from __future__ import annotations

import decord
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tomeray.models.frames import (
    CLIP_MEAN,
    CLIP_STD,
    center_crop,
    normalize_frames,
    resize_shorter_side,
    sample_frame_indices,
)
from tomeray.models.tempme import TempMeEncoder

TOL = dict(atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def io(fixtures_dir):
    return load_file(fixtures_dir / "tempme_tiny_io.safetensors")


@pytest.fixture(scope="module")
def frames(io):
    return normalize_frames(io["input_frames_uint8_hwc"], CLIP_MEAN, CLIP_STD)[None]  # (1, 12, 3, 224, 224)


@pytest.fixture(scope="module")
def tower(tempme_tower):
    return tempme_tower


def test_tempme_parity_embeddings_and_tokens(tower, frames, io):
    encoder = TempMeEncoder(tower, "tempme")
    out = encoder.forward_features(frames, io["video_mask"])
    torch.testing.assert_close(out.cls_tokens[0], io["tempme.cls_tokens_pre_ln_post"], **TOL)
    torch.testing.assert_close(out.frame_embeddings[0], io["tempme.frame_embeddings"], **TOL)
    torch.testing.assert_close(out.video_embedding[0], io["tempme.video_embedding"], **TOL)
    torch.testing.assert_close(encoder.encode_video(frames)[0], io["tempme.video_embedding_l2"], **TOL)
    torch.testing.assert_close(out.tokens[0], io["tempme.final_tokens"], **TOL)
    torch.testing.assert_close(out.sizes[0, :, 0], io["tempme.final_token_sizes"], **TOL)
    # TempMe's and the baseline's frame embeddings differ by up to 0.2: the merging path is exercised
    assert (out.frame_embeddings[0] - io["baseline.frame_embeddings"]).abs().max() > 0.05


def test_tempme_parity_per_layer_schedule(tower, frames, io):
    encoder = TempMeEncoder(tower, "tempme")
    out = encoder.forward_features(frames)
    plan_tokens = [p.tokens for p in encoder.plan]
    assert plan_tokens == io["tempme.token_num_after_layer"].tolist()
    assert [p.groups for p in encoder.plan] == io["tempme.groups_after_layer"].tolist()
    assert [p.cls for p in encoder.plan] == io["tempme.cls_num_after_layer"].tolist()
    # the observed block outputs follow the plan
    assert [s[0] for s in out.token_shapes] == io["tempme.groups_after_layer"].tolist()
    assert [s[1] for s in out.token_shapes] == io["tempme.tokens_per_group_after_layer"].tolist()
    # merge amounts as the README describes them: 20 + 4, 26 + 6, 50 + 11, then 10
    assert [(p.cross_r, p.r) for p in encoder.plan[8:]] == [(20, 4), (26, 6), (50, 11), (0, 10)]
    assert all(p.r == 2 and p.frames_per_clip == 1 for p in encoder.plan[:8])


def test_tempme_parity_baseline_with_none_preset(tower, frames, io):
    encoder = TempMeEncoder(tower, "none")
    out = encoder.forward_features(frames, io["video_mask"])
    torch.testing.assert_close(out.cls_tokens[0], io["baseline.cls_tokens_pre_ln_post"], **TOL)
    torch.testing.assert_close(out.frame_embeddings[0], io["baseline.frame_embeddings"], **TOL)
    torch.testing.assert_close(out.video_embedding[0], io["baseline.video_embedding"], **TOL)
    torch.testing.assert_close(encoder.encode_video(frames)[0], io["baseline.video_embedding_l2"], **TOL)
    assert [s for s in out.token_shapes] == [(12, 50)] * 12
    # and open_clip's own forward of the tower agrees
    with torch.no_grad():
        torch.testing.assert_close(tower(frames[0]), io["baseline.frame_embeddings"], **TOL)


def test_tempme_parity_decoded_frames_of_vtest(opencv_data, io):
    reader = decord.VideoReader(str(opencv_data / "vtest.avi"), ctx=decord.cpu(0))
    idx = sample_frame_indices(len(reader), reader.get_avg_fps(), 12)
    np.testing.assert_array_equal(idx, io["sampled_frame_indices"].numpy())
    crops = center_crop(resize_shorter_side(reader.get_batch(list(idx)).asnumpy(), 224), 224)
    np.testing.assert_array_equal(crops, io["input_frames_uint8_hwc"].numpy())


def test_tempme_parity_dropped_parameters_are_zero(fixtures_dir):
    state = load_file(fixtures_dir / "tempme_tiny_visual_state_dict.safetensors")
    extra = {k: v for k, v in state.items() if "TVPt_" in k}
    assert len(extra) == 12 * 2 + 3  # LoRA a/b per block + temporal position embeddings at 8, 9, 10
    assert all(v.abs().max() == 0 for k, v in extra.items() if not k.endswith("TVPt_LoRA_a"))
