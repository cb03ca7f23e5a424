"""TempMe's trainable set: its size on ViT-B, what is frozen, and LoRA checked against open_clip's own
forward with the low-rank update folded into the in-projection weights (W + B @ A)."""

from __future__ import annotations

import copy
import dataclasses

import decord
import open_clip
import pytest
import torch
import torch.nn.functional as F
from tomeray.models.clip import ClipTextEncoder, load_clip
from tomeray.models.frames import preprocess_frames, sample_frame_indices
from tomeray.models.tempme import MergeSchedule, TempMeEncoder, preset_schedule
from torch import nn

TOL = dict(atol=1e-5, rtol=1e-4)


def randomize(params: dict, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def decode(path, num_frames: int) -> torch.Tensor:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    idx = sample_frame_indices(len(reader), reader.get_avg_fps(), num_frames)
    return preprocess_frames(reader.get_batch(list(idx)).asnumpy(), 224)


def fold_lora(blocks, adapter) -> None:
    """open_clip blocks whose in-projection carries the LoRA update: (h A^T) B^T = h (B A)^T."""
    with torch.no_grad():
        for block, parts in zip(blocks, adapter.blocks):
            block.attn.in_proj_weight += parts.attn.TVPt_LoRA_b @ parts.attn.TVPt_LoRA_a


@pytest.fixture(scope="module")
def small_clip():
    return load_clip("ViT-S-32-alt", "none")


@pytest.mark.parametrize("arch", ["ViT-B-32", "ViT-B-16"])
def test_tempme_trainable_parameter_count_is_the_papers(arch):
    """507,648 = 12 x (8 x 768 + 2304 x 8) visual LoRA + (12 + 6 + 3) x 768 temporal + 12 x (8 x 512 +
    1536 x 8) text LoRA, for ViT-B/32 and ViT-B/16 (built on the meta device: no weights needed)."""
    model = open_clip.create_model(arch, pretrained=None, device="meta")
    visual, model.visual = model.visual, nn.Identity()
    encoder = TempMeEncoder(visual, "tempme", text=ClipTextEncoder(model, open_clip.get_tokenizer(arch)))
    params = encoder.trainable_parameters()
    count = lambda pred: sum(p.numel() for k, p in params.items() if pred(k))
    assert count(lambda k: True) == 507_648
    assert count(lambda k: k.startswith("visual.") and "LoRA" in k) == 294_912
    assert count(lambda k: k.endswith("TVPt_Video_Positional_embedding")) == 16_128
    assert count(lambda k: k.startswith("text.")) == 196_608
    temporal = {k: tuple(p.shape) for k, p in params.items() if "Positional" in k}
    assert temporal == {f"visual.transformer.resblocks.{i}.TVPt_Video_Positional_embedding": (1, f, 1, 768)
                        for i, f in [(8, 12), (9, 6), (10, 3)]}
    # everything else, the logit scale included, stays frozen
    trainable = {id(p) for p in encoder.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params.values()} and all("TVPt_" in k for k in params)
    assert not model.logit_scale.requires_grad


def test_tempme_trainable_untrained_lora_is_exact_and_init_is_fixed(small_clip, tempme_tower):
    """B = 0: text embeddings are open_clip's encode_text (to float rounding: the padding after the
    last end-of-text token is not computed); A comes from a fixed seed."""
    texts = ["a person walking on a street", "two cats", "a very long caption " * 12]
    tokens = small_clip.text.tokenize(texts)
    with torch.inference_mode():
        padded = small_clip.text.model.encode_text(tokens, normalize=True)
        torch.testing.assert_close(small_clip.text(texts), padded, atol=1e-6, rtol=0)
    a, b = TempMeEncoder(tempme_tower, "tempme"), TempMeEncoder(tempme_tower, "tempme")
    assert all(torch.equal(a.adapter_state_dict()[k], v) for k, v in b.adapter_state_dict().items())
    assert a.tvpt.blocks[0].attn.TVPt_LoRA_a.abs().max() <= 64 ** -0.5  # kaiming-uniform bound 1/sqrt(C)
    assert all(not p.any() for k, p in a.adapter_parameters().items() if not k.endswith("LoRA_a"))


def test_tempme_trainable_text_lora_matches_folded_weights(small_clip):
    text = copy.deepcopy(small_clip.text)
    randomize({k: p for k, p in text.tvpt.named_parameters()}, 0)
    folded = copy.deepcopy(text.model)
    fold_lora(folded.transformer.resblocks, text.tvpt)
    texts = ["a dog runs on the beach", "night traffic", "a cooking show in a small kitchen"]
    with torch.no_grad():
        ours = text(texts)
        reference = folded.encode_text(text.tokenize(texts), normalize=True)
        untrained = small_clip.text(texts)
    torch.testing.assert_close(ours, reference, **TOL)
    assert (ours - untrained).abs().max() > 1e-2
    # a shorter context (the training recipe's 32 tokens) gives the same embedding for short captions
    with torch.no_grad():
        assert torch.equal(text(text.tokenize(texts, context_length=32)), ours)


def test_tempme_trainable_visual_lora_matches_folded_weights(tempme_tower, opencv_data):
    """No merging (preset none): our tower with LoRA is open_clip's tower with folded weights."""
    frames = decode(opencv_data / "vtest.avi", 4)
    encoder = TempMeEncoder(tempme_tower, "none", num_frames=4)
    randomize(encoder.adapter_parameters(), 1)
    folded = copy.deepcopy(tempme_tower)
    fold_lora(folded.transformer.resblocks, encoder.tvpt)
    with torch.no_grad():
        expected = F.normalize(F.normalize(folded(frames), dim=-1).mean(dim=0), dim=-1)
        untrained = TempMeEncoder(tempme_tower, "none", num_frames=4).encode_video(frames[None])[0]
    got = encoder.encode_video(frames[None])[0]
    torch.testing.assert_close(got, expected, **TOL)
    assert (got - untrained).abs().max() > 1e-2


def test_tempme_trainable_temporal_embedding_only_where_clips_merge(tempme_tower, opencv_data):
    """The reference adds a ClipMe block's temporal embedding only when that block merges across clips."""
    frames = decode(opencv_data / "Megamind.avi", 12)[None]
    for schedule, moves in [(preset_schedule("tempme"), True),
                            (dataclasses.replace(preset_schedule("tempme"), cross_clip_ratio=0.0), False)]:
        plain = TempMeEncoder(tempme_tower, "custom", schedule=schedule)
        shifted = TempMeEncoder(tempme_tower, "custom", schedule=schedule)
        randomize({k: p for k, p in shifted.adapter_parameters().items() if "Positional" in k}, 2, 0.5)
        change = (plain.encode_video(frames) - shifted.encode_video(frames)).abs().max()
        assert (change > 1e-3) if moves else (change == 0), (schedule, change)


def test_tempme_trainable_gradients_reach_every_trained_tensor(small_clip):
    """One contrastive-style step through both towers: B gets a gradient everywhere; A only once B
    is nonzero (LoRA's zero-init); frozen weights get none."""
    visual = copy.deepcopy(small_clip.visual)
    text = copy.deepcopy(small_clip.text)
    schedule = MergeSchedule(clip_layers=[0.5], frames_per_clip=[2])
    encoder = TempMeEncoder(visual, "custom", schedule=schedule, num_frames=2, text=text)
    params = encoder.trainable_parameters()
    frames = torch.randn(2, 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    video = encoder.encode_video(frames, grad=True)
    captions = encoder.encode_text(["a red car", "a green tree"], grad=True)
    (video * captions).sum().backward()
    for name, p in params.items():
        assert p.grad is not None, name
        if name.endswith("LoRA_a"):
            assert not p.grad.any(), name  # B = 0 blocks A's gradient at the first step
        else:
            assert p.grad.abs().max() > 0, name
    assert all(p.grad is None for p in encoder.visual.parameters())
    assert all(p.grad is None for p in encoder.text.model.parameters())
