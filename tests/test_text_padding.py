"""The text tower drops the padding after a batch's last end-of-text token: CLIP's text transformer is
causal and pools at that token, so the embeddings equal the padded computation (open_clip's own
``encode_text`` over all 77 positions), for any batch mix and with a trained text LoRA too."""

from __future__ import annotations

import pytest
import torch
from tomeray.models.clip import _trim_padding, load_clip

TEXTS = ["people", "a man walking a dog in the park at night", "", "tree " * 100, "ñandú 視頻 🎬"]


@pytest.fixture(scope="module")
def text():
    return load_clip("ViT-S-32", "none", seed=3).text


def test_embeddings_equal_the_padded_computation(text):
    tokens = text.tokenize(TEXTS)
    assert tokens.shape[1] == 77
    padded = text.model.encode_text(tokens, normalize=True).float()  # open_clip, all 77 positions
    with torch.inference_mode():
        trimmed = text(TEXTS)
    torch.testing.assert_close(trimmed, padded, atol=2e-6, rtol=0)
    one = text.tokenize(["people"])
    assert _trim_padding(text._tower, text._tower_attr, one).shape[1] == 3  # start, "people", end


def test_padding_length_does_not_change_an_embedding_with_a_trained_lora():
    """With a nonzero text LoRA, a short query alone (trimmed to 3 positions) and in a batch with a
    long one (trimmed to 77) gives the same embedding."""
    text = load_clip("ViT-S-32", "none", seed=4).text
    with torch.no_grad():
        for name, p in text.tvpt.named_parameters():
            if name.endswith("TVPt_LoRA_b"):
                p.copy_(torch.randn_like(p) * 0.05)
    with torch.inference_mode():
        alone = text(["people"])
        mixed = text(["people", "tree " * 100])
        padded = text.encode_tokens(text.tokenize(["people"]))
    torch.testing.assert_close(alone[0], mixed[0], atol=2e-6, rtol=0)
    torch.testing.assert_close(alone, padded, atol=0, rtol=0)  # the same computation
    assert (alone - text.model.encode_text(text.tokenize(["people"]), normalize=True)).abs().max() > 1e-3
