"""TempMe encoder on real decoded videos: shapes, masks, determinism, batch independence, errors."""

from __future__ import annotations

import dataclasses
import json

import decord
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from tomeray.models.errors import ConfigError, InputError
from tomeray.models.frames import preprocess_frames, sample_frame_indices
from tomeray.models.tempme import PRESETS, MergeSchedule, TempMeEncoder, preset_schedule, resolve_schedule

VIDEOS = ("vtest.avi", "Megamind.avi", "tree.avi")
TOL = dict(atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def tower(tempme_tower) -> VisionTransformer:
    return tempme_tower


def decode(path, sample_fps=None, num_frames=12) -> torch.Tensor:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    idx = sample_frame_indices(len(reader), reader.get_avg_fps(), num_frames, sample_fps)
    return preprocess_frames(reader.get_batch(list(idx)).asnumpy(), 224)


@pytest.fixture(scope="module")
def videos(opencv_data) -> torch.Tensor:
    """(3, 12, 3, 224, 224): vtest, Megamind, tree, sampled as at indexing time."""
    return torch.stack([decode(opencv_data / name) for name in VIDEOS])


@pytest.fixture(scope="module")
def short_tree(opencv_data) -> torch.Tensor:
    """tree.avi at 1 fps: only 5 real frames (fewer than T = 12)."""
    frames = decode(opencv_data / "tree.avi", sample_fps=1.0)
    assert frames.shape[0] == 5
    return frames


def pad(frames: torch.Tensor, t: int, fill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = fill.clone()
    out[: len(frames)] = frames
    mask = torch.zeros(t, dtype=torch.bool)
    mask[: len(frames)] = True
    return out, mask


@pytest.mark.parametrize("preset", PRESETS)
def test_tempme_encoder_real_videos_shapes_unit_norm_distinct(tower, videos, preset):
    encoder = TempMeEncoder(tower, preset)
    emb = encoder.encode_video(videos)
    assert emb.shape == (3, 32) and emb.dtype == torch.float32 and not emb.requires_grad
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    cos = emb @ emb.T
    assert cos[0, 1] < 0.999 and cos[0, 2] < 0.999 and cos[1, 2] < 0.999
    out = encoder.forward_features(videos)
    assert out.frame_embeddings.shape == (3, 12, 32) and out.cls_tokens.shape == (3, 12, 64)
    last = encoder.plan[-1]
    assert out.tokens.shape == (3 * last.groups, last.tokens, 64)
    if out.sizes is not None:  # merged tokens still account for every original token
        assert out.sizes.sum().item() == pytest.approx(3 * 12 * 50)


def test_tempme_encoder_deterministic(tower, videos):
    a = TempMeEncoder(tower, "tempme").encode_video(videos)
    b = TempMeEncoder(tower, "tempme").encode_video(videos)
    assert torch.equal(a, b)


@pytest.mark.parametrize("preset", ["tempme", "tempme-fast"])
def test_tempme_encoder_batch_items_independent(tower, videos, preset):
    encoder = TempMeEncoder(tower, preset)
    together = encoder.encode_video(videos)
    for i in range(len(videos)):
        torch.testing.assert_close(encoder.encode_video(videos[i : i + 1])[0], together[i], **TOL)
    # reversing the batch only reverses the outputs
    torch.testing.assert_close(encoder.encode_video(videos.flip(0)), together.flip(0), **TOL)


def test_tempme_encoder_full_mask_equals_no_mask(tower, videos):
    encoder = TempMeEncoder(tower, "tempme")
    ones = torch.ones(3, 12, dtype=torch.long)
    assert torch.equal(encoder.encode_video(videos, ones), encoder.encode_video(videos))


def test_tempme_encoder_short_video_ignores_padding(tower, videos, short_tree):
    encoder = TempMeEncoder(tower, "tempme")
    zeros, mask = pad(short_tree, 12, torch.zeros_like(videos[0]))
    noise, _ = pad(short_tree, 12, torch.randn(videos[0].shape, generator=torch.Generator().manual_seed(0)))
    other, _ = pad(short_tree, 12, videos[0])  # padding with another video's frames
    emb = [encoder.encode_video(x[None], mask[None])[0] for x in (zeros, noise, other)]
    assert torch.equal(emb[0], emb[1]) and torch.equal(emb[0], emb[2])
    # padding values matter when unmasked: the mask is what removes them
    assert not torch.allclose(encoder.encode_video(zeros[None])[0], emb[0], atol=1e-3)
    # inside a batch with full-length videos the short video's embedding is unchanged
    batch = torch.stack([videos[0], zeros, videos[1]])
    batch_mask = torch.stack([torch.ones(12, dtype=torch.bool), mask, torch.ones(12, dtype=torch.bool)])
    together = encoder.encode_video(batch, batch_mask)
    torch.testing.assert_close(together[1], emb[0], **TOL)
    torch.testing.assert_close(together[0], encoder.encode_video(videos[:1])[0], **TOL)


def test_tempme_encoder_short_video_pools_each_real_frame_once(tower, short_tree):
    """With no merging (preset none) the masked video embedding is exactly CLIP4Clip's mean over the
    5 real frames, although 12 slots were computed."""
    encoder = TempMeEncoder(tower, "none")
    padded, mask = pad(short_tree, 12, torch.zeros(12, 3, 224, 224))
    got = encoder.encode_video(padded[None], mask[None])[0]
    with torch.no_grad():
        per_frame = F.normalize(tower(short_tree), dim=-1)
    expected = F.normalize(per_frame.mean(dim=0), dim=-1)
    torch.testing.assert_close(got, expected, **TOL)


def test_tempme_encoder_mask_may_be_sparse(tower, videos):
    """Valid frames need not be a prefix: the refill keeps their temporal order."""
    encoder = TempMeEncoder(tower, "tempme")
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[1, 4, 5, 9]] = True
    prefix = torch.zeros_like(videos[0])
    prefix[:4] = videos[0][mask]
    prefix_mask = torch.arange(12) < 4
    a = encoder.encode_video(videos[:1], mask[None])
    b = encoder.encode_video(prefix[None], prefix_mask[None])
    assert torch.equal(a, b)


def test_tempme_encoder_bad_inputs(tower, videos):
    encoder = TempMeEncoder(tower, "tempme")
    with pytest.raises(InputError, match="normalize_frames"):
        encoder.encode_video((videos * 50).clamp(0, 255).to(torch.uint8))
    with pytest.raises(InputError, match=r"\(B, 12, 3, 224, 224\)"):
        encoder.encode_video(videos[:, :8])
    with pytest.raises(InputError, match="shape"):
        encoder.encode_video(videos[0])
    with pytest.raises(InputError, match="shape"):
        encoder.encode_video(F.interpolate(videos[0], size=(112, 112))[None])
    with pytest.raises(InputError, match="torch.Tensor"):
        encoder.encode_video(videos.numpy())
    with pytest.raises(InputError, match="mask must have shape"):
        encoder.encode_video(videos, torch.ones(3, 8))
    empty = torch.ones(3, 12, dtype=torch.bool)
    empty[1] = False
    with pytest.raises(InputError, match=r"videos \[1\]"):
        encoder.encode_video(videos, empty)
    with pytest.raises(InputError, match="text tower"):
        encoder.encode_text(["a street"])


def test_tempme_encoder_config_errors_name_value_and_choices(tower):
    with pytest.raises(ConfigError, match="'fastest'.*none, tempme, tempme-fast"):
        TempMeEncoder(tower, "fastest")
    with pytest.raises(ConfigError, match="num_frames=8.*divisible by 12"):
        TempMeEncoder(tower, "tempme", num_frames=8)
    assert TempMeEncoder(tower, "none", num_frames=8).plan[-1].groups == 8  # no grouping, any T
    assert TempMeEncoder(tower, "tempme", num_frames=24).plan[-1].groups == 2
    with pytest.raises(ConfigError, match="cross_clip_ratio=1.5"):
        TempMeEncoder(tower, schedule=dataclasses.replace(preset_schedule("tempme"), cross_clip_ratio=1.5))
    with pytest.raises(ConfigError, match="pooling"):
        TempMeEncoder(tower, schedule=MergeSchedule(pooling="max"))
    with pytest.raises(ConfigError, match="same length"):
        TempMeEncoder(tower, schedule=MergeSchedule(frames_per_clip=[2, 2]))
    with pytest.raises(ConfigError, match="precision"):
        TempMeEncoder(tower, "tempme", precision="int8")


def test_tempme_schedule_resolves_from_the_tower_not_constants():
    tempme = preset_schedule("tempme")
    # ViT-L/14 at 224 px: 24 layers, 257 tokens -> ClipMe at 16, 18, 20 and r = 10 before them
    plan = resolve_schedule(tempme, depth=24, tokens_per_frame=257, num_frames=12)
    assert [p.layer for p in plan if p.frames_per_clip > 1] == [16, 18, 20]
    assert [p.frames_per_clip for p in plan if p.frames_per_clip > 1] == [2, 2, 3]
    assert all(p.r == 10 for p in plan[:16]) and plan[15].tokens == 257 - 160
    assert plan[-1].groups == 1 and plan[-1].cls == 12 and plan[-1].tokens > 12
    # ViT-B/16: 197 tokens -> r = 8
    assert resolve_schedule(tempme, 12, 197, 12)[0].r == 8
    # every plan is internally consistent: tokens only shrink inside a group, CLS always survive
    for depth, tokens, frames in [(12, 50, 12), (24, 257, 12), (12, 197, 24), (8, 17, 12)]:
        for name in PRESETS:
            for p in resolve_schedule(preset_schedule(name), depth, tokens, frames):
                assert p.tokens > p.cls >= 1 and p.groups * p.cls == frames
    with pytest.raises(ConfigError, match="increasing"):
        resolve_schedule(tempme, depth=4, tokens_per_frame=50, num_frames=12)


def test_tempme_encoder_runs_any_vision_transformer(opencv_data):
    """A different tower (8 layers, patch 16, 64 px, GELU): the plan follows its shape."""
    torch.manual_seed(0)
    tower = VisionTransformer(image_size=64, patch_size=16, width=32, layers=8, heads=2, mlp_ratio=2.0,
                              output_dim=16).eval()
    frames = decode(opencv_data / "Megamind.avi")
    frames = F.interpolate(frames, size=(64, 64), mode="bilinear", antialias=True)[None]
    encoder = TempMeEncoder(tower, "tempme")
    out = encoder.forward_features(frames)
    assert [p.layer for p in encoder.plan if p.frames_per_clip > 1] == [5, 6, 7]
    assert out.token_shapes == [(p.groups, p.tokens) for p in encoder.plan]
    assert encoder.encode_video(frames).shape == (1, 16)


def test_tempme_identity_is_json_and_tells_encoders_apart(tower):
    a = TempMeEncoder(tower, "tempme", arch="tiny", weights_id="fixture")
    ident = a.identity()
    assert json.loads(json.dumps(ident)) == ident
    assert ident["preset"] == "tempme" and ident["weights_id"] == "fixture" and ident["embed_dim"] == 32
    assert ident["image_size"] == 224 and ident["num_frames"] == 12 and len(ident["plan"]) == 12
    assert TempMeEncoder(tower, "tempme", arch="tiny", weights_id="fixture").identity() == ident
    assert TempMeEncoder(tower, "tempme-fast", arch="tiny", weights_id="fixture").identity() != ident
    assert TempMeEncoder(tower, "tempme", arch="tiny", weights_id="other").identity() != ident


def test_tempme_fast_preset_merges_more(tower):
    fast, ref = TempMeEncoder(tower, "tempme-fast").plan, TempMeEncoder(tower, "tempme").plan
    tokens = [p.groups * p.tokens for p in fast]
    assert sum(tokens) < sum(p.groups * p.tokens for p in ref) and np.all(np.diff(tokens) <= 0)


@pytest.mark.parametrize("preset", PRESETS)
def test_tempme_encoder_bf16_autocast_close_to_fp32(tower, videos, preset):
    """The GPU default (bf16 autocast) exercised on CPU: same merging path, embeddings nearly equal."""
    fp32 = TempMeEncoder(tower, preset).encode_video(videos[:2])
    bf16 = TempMeEncoder(tower, preset, precision="bf16").encode_video(videos[:2])
    assert bf16.dtype == torch.float32
    assert (fp32 * bf16).sum(-1).min() > 0.999
