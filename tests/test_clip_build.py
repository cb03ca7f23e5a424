"""Model construction without wasted random init (models/clip.py): weights that get loaded are
not drawn first, and a video-only model draws the same vision tower as the whole model."""

from __future__ import annotations

import torch
from safetensors.torch import save_file
from tomeray.models.clip import load_clip, skip_weight_init
from torch import nn

ARCH = "ViT-S-32"


def test_skip_weight_init_draws_no_random_values_and_only_inside():
    state = torch.get_rng_state()
    with skip_weight_init():
        layer = nn.Linear(64, 64)
        torch.nn.init.xavier_uniform_(layer.weight)
        torch.nn.init.trunc_normal_(torch.empty(8))
        filled = torch.zeros(4).normal_()
    assert torch.equal(torch.get_rng_state(), state)  # nothing was drawn
    assert torch.equal(filled, torch.zeros(4))
    assert not torch.equal(torch.zeros(4).normal_(), torch.zeros(4))  # outside: drawn as usual
    assert torch.equal(nn.LayerNorm(3).weight, torch.ones(3))  # deterministic fills still run


def test_video_only_random_init_has_the_whole_models_vision_tower():
    whole = load_clip(ARCH, "none", seed=3)
    video_only = load_clip(ARCH, "none", seed=3, text=False)
    assert video_only.text is None and whole.text is not None
    a, b = whole.visual.state_dict(), video_only.visual.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("image_size", "mean", "std"):
        assert getattr(video_only, name) == getattr(whole, name)
    other_seed = load_clip(ARCH, "none", seed=4, text=False).visual.state_dict()
    assert not torch.equal(other_seed["conv1.weight"], b["conv1.weight"])


def test_loaded_weights_are_exact_without_the_random_init(tmp_path):
    """A checkpoint loads into the uninitialised model with every value from the file."""
    import open_clip

    source = open_clip.create_model(ARCH, pretrained=None)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = load_clip(ARCH, str(path))
    expected = {k[len("visual."):]: v for k, v in source.state_dict().items() if k.startswith("visual.")}
    got = loaded.visual.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    text, reference = loaded.text.model.state_dict(), source.state_dict()
    assert all(torch.equal(text[k], reference[k]) for k in ("token_embedding.weight", "text_projection"))
