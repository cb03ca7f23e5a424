"""TempMe adapter files (trained parts + what they were trained for) and reference-checkpoint loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tomeray.models.errors import ConfigError, WeightsError
from tomeray.models.tempme import (
    ADAPTER_FORMAT_VERSION,
    TempMeEncoder,
    VideoModelConfig,
    create_video_encoder,
    load_adapter,
    load_reference_checkpoint,
    read_adapter_metadata,
    reference_adapter_tensors,
    save_adapter,
)
from tomeray.models.tempme.adapter import METADATA_KEY

ARCH = "ViT-S-32-alt"  # the smallest built-in open_clip ViT
# ClipMe at half depth, 2 frames per clip: temporal embeddings exist with only 2 frames per video
SCHEDULE = dict(frame_ratio=0.04, clip_layers=[0.5], frames_per_clip=[2], cross_clip_ratio=0.3,
                intra_clip_ratio=0.1)
CFG = dict(arch=ARCH, pretrained="none", preset="custom", schedule=SCHEDULE, num_frames=2)


def randomize(encoder, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in encoder.adapter_parameters().values():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def tiny(tower, **kw) -> TempMeEncoder:
    return TempMeEncoder(tower, kw.pop("preset", "tempme"), arch=kw.pop("arch", "tiny"),
                         weights_id=kw.pop("weights_id", "fixture"), **kw)


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return torch.randn(2, 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def trained_clip(tmp_path_factory):
    """A random-init ViT-S-32-alt encoder with random trained parts, saved as an adapter."""
    encoder = create_video_encoder(VideoModelConfig(**CFG), device="cpu")
    randomize(encoder, 1)
    path = tmp_path_factory.mktemp("adapter") / "demo.safetensors"
    info = save_adapter(encoder, path, extra={"epochs": 5})
    return encoder, path, info


def test_tempme_adapter_file_holds_only_the_trainable_tensors_and_metadata(trained_clip):
    encoder, path, info = trained_clip
    tensors = load_file(str(path))
    assert set(tensors) == set(encoder.adapter_parameters())
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert any(k.startswith("text.transformer.resblocks.") for k in tensors)
    assert "visual.transformer.resblocks.6.TVPt_Video_Positional_embedding" in tensors  # ClipMe at 12 * 0.5
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    assert meta == read_adapter_metadata(path)
    assert meta["format"] == "tomeray-tempme-adapter" and meta["format_version"] == ADAPTER_FORMAT_VERSION
    assert meta["name"] == "demo" and meta["arch"] == ARCH and meta["weights_id"] == "random-init(seed=0)"
    assert meta["preset"] == "custom" and meta["schedule"]["clip_layers"] == [0.5]
    assert meta["num_frames"] == 2 and meta["lora_rank"] == 8 and meta["towers"] == ["visual", "text"]
    assert meta["num_parameters"] == sum(t.numel() for t in tensors.values())
    assert meta["extra"] == {"epochs": 5}
    assert info.id.startswith("adapter:") and len(info.id) == len("adapter:") + 16


def test_tempme_adapter_model_config_loads_it_for_video_and_text(trained_clip, frames):
    encoder, path, info = trained_clip
    loaded = create_video_encoder(VideoModelConfig(**CFG, adapter=str(path)), device="cpu")
    assert torch.equal(loaded.encode_video(frames), encoder.encode_video(frames))
    texts = ["a man walks a dog", "traffic at night"]
    assert torch.equal(loaded.encode_text(texts), encoder.encode_text(texts))
    untrained = create_video_encoder(VideoModelConfig(**CFG), device="cpu")
    assert (untrained.encode_text(texts) - loaded.encode_text(texts)).abs().max() > 1e-3
    assert (untrained.encode_video(frames) - loaded.encode_video(frames)).abs().max() > 1e-3
    # identity: the training-free form has no adapter entry; the adapter adds its id and name
    assert "adapter" not in untrained.identity()
    assert loaded.identity()["adapter"] == {"id": info.id, "name": "demo"}
    assert loaded.identity() != untrained.identity()
    # a video-only encoder (indexing workers) carries the same identity as the query encoder
    video_only = create_video_encoder(VideoModelConfig(**CFG, adapter=str(path)), with_text=False,
                                      device="cpu")
    assert video_only.identity() == loaded.identity()
    assert torch.equal(video_only.encode_video(frames), loaded.encode_video(frames))


def test_tempme_adapter_identity_follows_the_tensors_not_the_path(tempme_tower, tmp_path):
    encoder = tiny(tempme_tower)
    randomize(encoder, 2)
    a = save_adapter(encoder, tmp_path / "one" / "run.safetensors")
    b = save_adapter(encoder, tmp_path / "two" / "run.safetensors")
    assert a.id == b.id and a.path != b.path
    other = tiny(tempme_tower)
    randomize(other, 3)
    c = save_adapter(other, tmp_path / "run.safetensors")
    assert c.id != a.id
    first, second = tiny(tempme_tower), tiny(tempme_tower)
    load_adapter(first, a.path)
    load_adapter(second, c.path)
    assert first.identity() != second.identity()  # an index built with one refuses the other


@pytest.mark.parametrize("change, message", [
    (dict(arch="other"), "arch 'tiny'"),
    (dict(weights_id="open_clip:tiny/laion"), "base weights 'fixture'"),
    (dict(preset="tempme-fast"), "merge schedule of preset 'tempme'.*differs in"),
    (dict(num_frames=24), r"num_frames=12 \(this encoder: 24\)"),
    (dict(lora_rank=4), r"lora_rank=8 \(this encoder: 4\)"),
])
def test_tempme_adapter_refuses_other_settings(tempme_tower, tmp_path, frames, change, message):
    path = save_adapter(tiny(tempme_tower), tmp_path / "a.safetensors").path
    other = tiny(tempme_tower, **change)
    before = {k: v.clone() for k, v in other.adapter_state_dict().items()}
    with pytest.raises(WeightsError, match=message):
        load_adapter(other, path)
    assert all(torch.equal(before[k], v) for k, v in other.adapter_state_dict().items())
    assert other.adapter is None


def test_tempme_adapter_base_checkpoint_may_move(tempme_tower, tmp_path):
    encoder = tiny(tempme_tower, weights_id="file:/data/a/clip.pt#sha256=0123456789abcdef")
    path = save_adapter(encoder, tmp_path / "a.safetensors").path
    load_adapter(tiny(tempme_tower, weights_id="file:/moved/clip.pt#sha256=0123456789abcdef"), path)
    with pytest.raises(WeightsError, match="base weights"):
        load_adapter(tiny(tempme_tower, weights_id="file:/data/a/clip.pt#sha256=fedcba9876543210"), path)


def test_tempme_adapter_bad_files(tempme_tower, tmp_path):
    encoder = tiny(tempme_tower)
    with pytest.raises(WeightsError, match="does not exist"):
        load_adapter(encoder, tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot read adapter"):
        load_adapter(encoder, tmp_path / "junk.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match="not a tomeray adapter.*load_reference_checkpoint"):
        load_adapter(encoder, tmp_path / "plain.safetensors")
    good = save_adapter(encoder, tmp_path / "good.safetensors")
    tensors, meta = load_file(good.path), read_adapter_metadata(good.path)
    save_file(tensors, str(tmp_path / "newer.safetensors"),
              metadata={METADATA_KEY: json.dumps({**meta, "format_version": ADAPTER_FORMAT_VERSION + 1})})
    with pytest.raises(WeightsError, match="upgrade tomeray"):
        load_adapter(encoder, tmp_path / "newer.safetensors")
    key = "visual.transformer.resblocks.8.TVPt_Video_Positional_embedding"
    save_file({**tensors, key: torch.zeros(1, 6, 1, 64)}, str(tmp_path / "shape.safetensors"),
              metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(WeightsError, match=r"1 shape mismatches: .*8.TVPt_Video_Positional_embedding: "
                                           r"\(1, 6, 1, 64\)"):
        load_adapter(encoder, tmp_path / "shape.safetensors")
    missing = {k: v for k, v in tensors.items() if "resblocks.3." not in k}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(WeightsError, match="missing 2 tensors: visual.transformer.resblocks.3.attn.TVPt"):
        load_adapter(encoder, tmp_path / "missing.safetensors")


def test_tempme_adapter_without_text_tensors_is_refused_for_text(trained_clip, tmp_path):
    encoder, _, _ = trained_clip
    video_only = create_video_encoder(VideoModelConfig(**CFG), with_text=False, device="cpu")
    randomize(video_only, 4)
    path = save_adapter(video_only, tmp_path / "video.safetensors").path
    assert read_adapter_metadata(path)["towers"] == ["visual"]
    with pytest.raises(WeightsError, match="no text-tower tensors"):
        load_adapter(create_video_encoder(VideoModelConfig(**CFG), device="cpu"), path)
    load_adapter(create_video_encoder(VideoModelConfig(**CFG), with_text=False, device="cpu"), path)


def test_tempme_adapter_rank_comes_from_the_file(tempme_tower, tmp_path, frames):
    cfg = VideoModelConfig(**CFG)
    rank4 = create_video_encoder(cfg, device="cpu")
    rank4 = TempMeEncoder(rank4.visual, "custom", schedule=rank4.schedule, num_frames=2, arch=ARCH,
                          weights_id=rank4.weights_id, lora_rank=4)
    randomize(rank4, 5)
    path = save_adapter(rank4, tmp_path / "r4.safetensors").path
    loaded = create_video_encoder(VideoModelConfig(**CFG, adapter=path), with_text=False, device="cpu")
    assert loaded.lora_rank == 4
    assert torch.equal(loaded.encode_video(frames), rank4.encode_video(frames))
    with pytest.raises(ConfigError, match="LoRA rank"):
        TempMeEncoder(tempme_tower, lora_rank=0)


# ------------------------------------------------------------------------- reference checkpoints

def reference_state(encoder, prefix: str) -> dict:
    """Our tensors under the reference's whole-model keys (VTRModel: clip.visual.*, clip.transformer.*)."""
    out = {}
    for name, tensor in encoder.adapter_state_dict().items():
        tower, rest = name.split(".", 1)
        out[f"{prefix}{'visual.' if tower == 'visual' else ''}{rest}"] = tensor
    return out


@pytest.mark.parametrize("prefix", ["clip.", "module.clip.", ""])
def test_tempme_reference_checkpoint_whole_model_loads_both_towers(trained_clip, frames, prefix, tmp_path):
    encoder, _, saved = trained_clip
    state = {**reference_state(encoder, prefix), f"{prefix}logit_scale": torch.tensor(4.6052),
             f"{prefix}visual.conv1.weight": torch.zeros(3)}  # frozen CLIP weights are ignored
    fresh = create_video_encoder(VideoModelConfig(**CFG), device="cpu")
    torch.save(state, tmp_path / "best.pth")
    info = load_reference_checkpoint(fresh, tmp_path / "best.pth")
    assert info.id == saved.id and info.name == "reference:best.pth"
    assert torch.equal(fresh.encode_video(frames), encoder.encode_video(frames))
    assert torch.equal(fresh.encode_text(["a dog"]), encoder.encode_text(["a dog"]))


def test_tempme_reference_checkpoint_errors(trained_clip, tempme_tower, tempme_trained_state):
    encoder, _, _ = trained_clip
    state = reference_state(encoder, "clip.")
    fresh = create_video_encoder(VideoModelConfig(**CFG), device="cpu")
    with pytest.raises(WeightsError, match="no TVPt_"):
        load_reference_checkpoint(fresh, {"clip.logit_scale": torch.tensor(1.0)})
    with pytest.raises(WeightsError, match="missing 2 tensors: text.transformer.resblocks.0.attn"):
        load_reference_checkpoint(fresh, {k: v for k, v in state.items()
                                          if not k.startswith("clip.transformer.resblocks.0.")})
    variant = "clip.visual.transformer.resblocks.0.attn.TVPt_LoRA_st_a"
    with pytest.raises(WeightsError, match=f"does not know: '{variant}'"):
        load_reference_checkpoint(fresh, {**state, variant: torch.zeros(1)})
    lora_a = "visual.transformer.resblocks.0.attn.TVPt_LoRA_a"
    with pytest.raises(WeightsError, match="mixes key prefixes"):
        load_reference_checkpoint(fresh, {**state, f"module.clip.{lora_a}": state[f"clip.{lora_a}"]})
    text_only = {k.removeprefix("clip."): v for k, v in state.items() if k.startswith("clip.transformer.")}
    with pytest.raises(WeightsError, match="tower='visual' or tower='text'"):
        reference_adapter_tensors(text_only)
    assert set(reference_adapter_tensors(text_only, tower="text")) == {
        k for k in encoder.adapter_parameters() if k.startswith("text.")}
    # Fixture 3 (12 frames) into an encoder for 24 frames: the temporal embeddings do not fit
    with pytest.raises(WeightsError, match=r"shape mismatches: .*\(1, 12, 1, 64\) \(expected \(1, 24, 1, 64"):
        load_reference_checkpoint(tiny(tempme_tower, num_frames=24), tempme_trained_state)
    with pytest.raises(ConfigError, match="tower must be one of"):
        reference_adapter_tensors(state, tower="vision")
