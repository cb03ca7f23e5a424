"""Parity of TempMe's trainable form (LoRA + temporal embeddings) with the official code
(LunarShen/TempMe @ e62493037bc6) on Fixture 3: forward outputs, two ablations and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tomeray.models.frames import CLIP_MEAN, CLIP_STD, normalize_frames
from tomeray.models.tempme import TempMeEncoder, load_adapter, load_reference_checkpoint, save_adapter

TOL = dict(atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def io(fixtures_dir):
    return load_file(fixtures_dir / "tempme_tiny_trained_io.safetensors")


@pytest.fixture(scope="module")
def untrained_io(fixtures_dir):
    return load_file(fixtures_dir / "tempme_tiny_io.safetensors")


@pytest.fixture(scope="module")
def frames(untrained_io):
    return normalize_frames(untrained_io["input_frames_uint8_hwc"], CLIP_MEAN, CLIP_STD)[None]


def trained_encoder(tower, state: dict) -> TempMeEncoder:
    encoder = TempMeEncoder(tower, "tempme", arch="tiny", weights_id="fixture")
    load_reference_checkpoint(encoder, state, tower="visual")
    return encoder


def test_tempme_trained_parity_outputs(tempme_tower, tempme_trained_state, frames, io, untrained_io):
    encoder = trained_encoder(tempme_tower, tempme_trained_state)
    out = encoder.forward_features(frames, untrained_io["video_mask"])
    torch.testing.assert_close(out.video_embedding[0], io["video_embedding"], **TOL)
    torch.testing.assert_close(encoder.encode_video(frames)[0], io["video_embedding_l2"], **TOL)
    torch.testing.assert_close(out.frame_embeddings[0], io["frame_embeddings"], **TOL)
    torch.testing.assert_close(out.cls_tokens[0], io["cls_tokens_pre_ln_post"], **TOL)
    torch.testing.assert_close(out.tokens[0], io["final_tokens"], **TOL)
    assert torch.equal(out.sizes[0, :, 0], io["final_token_sizes"])  # whole numbers: exact
    assert [s[0] for s in out.token_shapes] == io["groups_after_layer"].tolist()
    assert [s[1] for s in out.token_shapes] == io["tokens_per_group_after_layer"].tolist()
    assert [p.tokens for p in encoder.plan] == io["token_num_after_layer"].tolist()
    assert [p.cls for p in encoder.plan] == io["cls_num_after_layer"].tolist()
    # the trained parts matter: the embedding moved ~8e-2 from the training-free one, and other
    # tokens were merged
    moved = (io["video_embedding_l2"] - untrained_io["tempme.video_embedding_l2"]).norm()
    assert moved > 1e-2
    assert not torch.equal(out.sizes[0, :, 0], untrained_io["tempme.final_token_sizes"])


@pytest.mark.parametrize("ablation, zeroed", [("ablation_lora_only", "TVPt_Video_Positional_embedding"),
                                              ("ablation_pos_only", "TVPt_LoRA_b")])
def test_tempme_trained_parity_ablations(tempme_tower, tempme_trained_state, frames, io, ablation, zeroed):
    state = {k: (torch.zeros_like(v) if k.endswith(zeroed) else v) for k, v in tempme_trained_state.items()}
    out = trained_encoder(tempme_tower, state).forward_features(frames)
    torch.testing.assert_close(out.video_embedding[0], io[f"{ablation}.video_embedding"], **TOL)
    unit = F.normalize(out.video_embedding, dim=-1)[0]
    torch.testing.assert_close(unit, io[f"{ablation}.video_embedding_l2"], **TOL)
    torch.testing.assert_close(out.frame_embeddings[0], io[f"{ablation}.frame_embeddings"], **TOL)
    # each mechanism on its own moves the embedding away from the full trained one
    assert (io[f"{ablation}.video_embedding_l2"] - io["video_embedding_l2"]).abs().max() > 1e-3


def test_tempme_trained_parity_gradients(tempme_tower, tempme_trained_state, frames, io):
    """loss = normalised video embedding . u; d loss / d every visual TVPt_* tensor (27 of them)."""
    encoder = trained_encoder(tempme_tower, tempme_trained_state)
    params = encoder.trainable_parameters()
    out = encoder.forward_features(frames, grad=True)
    video = out.video_embedding[0]
    loss = (video / video.norm()) @ io["u"]
    torch.testing.assert_close(loss.detach().reshape(1), io["loss"], **TOL)
    loss.backward()
    reference = {k.removeprefix("grad."): v for k, v in io.items() if k.startswith("grad.")}
    assert len(reference) == 27
    for name, grad in reference.items():
        param = params[f"visual.{name}"]
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, grad, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    # the text tower is not part of this loss, and nothing outside the adapter gets a gradient
    assert all(p.grad is None for k, p in params.items() if k.startswith("text."))
    assert all(p.grad is None for n, p in encoder.visual.named_parameters())


def test_tempme_trained_parity_grad_pass_equals_inference_pass(tempme_tower, tempme_trained_state, frames):
    encoder = trained_encoder(tempme_tower, tempme_trained_state)
    encoder.trainable_parameters()
    with_grad = encoder.forward_features(frames, grad=True)
    assert with_grad.video_embedding.requires_grad
    inference = encoder.forward_features(frames)
    assert not inference.video_embedding.requires_grad
    assert torch.equal(with_grad.tokens.detach(), inference.tokens)
    assert torch.equal(with_grad.video_embedding.detach(), inference.video_embedding)


def test_tempme_trained_parity_through_an_adapter_file(tempme_tower, tempme_trained_state, frames, io,
                                                       tmp_path):
    """Reference tensors -> our adapter file -> a fresh encoder: the same embedding, and the identity
    names the adapter."""
    source = trained_encoder(tempme_tower, tempme_trained_state)
    saved = save_adapter(source, tmp_path / "fixture3.safetensors")
    fresh = TempMeEncoder(tempme_tower, "tempme", arch="tiny", weights_id="fixture")
    untrained_identity = fresh.identity()
    info = load_adapter(fresh, saved.path)
    assert info.id == saved.id and info.name == "fixture3"
    assert torch.equal(fresh.encode_video(frames), source.encode_video(frames))
    torch.testing.assert_close(fresh.encode_video(frames)[0], io["video_embedding_l2"], **TOL)
    assert fresh.identity()["adapter"] == {"id": saved.id, "name": "fixture3"}
    assert {k: v for k, v in fresh.identity().items() if k != "adapter"} == untrained_identity
