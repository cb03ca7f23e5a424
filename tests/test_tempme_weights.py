"""Weights for the TempMe encoder (models/clip.py): tags, local checkpoints, random init, offline errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import decord
import pytest
import torch
from safetensors.torch import save_file
from tomeray.models.clip import load_clip
from tomeray.models.errors import ConfigError, InputError, WeightsError
from tomeray.models.frames import preprocess_frames, sample_frame_indices
from tomeray.models.tempme import VideoModelConfig, create_video_encoder

ARCH = "ViT-S-32-alt"  # the smallest built-in open_clip ViT: keeps these tests quick
FAST = dict(arch=ARCH, preset="none", num_frames=2)  # weights, not merging, are tested here
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip_frames(opencv_data) -> torch.Tensor:
    reader = decord.VideoReader(str(opencv_data / "Megamind.avi"), ctx=decord.cpu(0))
    idx = sample_frame_indices(len(reader), reader.get_avg_fps(), 12)
    return preprocess_frames(reader.get_batch(list(idx[::6])).asnumpy(), 224)[None]  # 2 frames


@pytest.fixture(scope="module")
def random_encoder():
    return create_video_encoder(VideoModelConfig(pretrained="none", **FAST))


@pytest.mark.timeout(120)
def test_tempme_weights_offline_tag_fails_fast_with_instructions(tmp_path):
    """No network, nothing cached: a WeightsError that says how to provide weights."""
    code = textwrap.dedent(
        """
        from tomeray.models.clip import load_clip
        from tomeray.models.errors import WeightsError
        try:
            load_clip("ViT-B-32", "openai")
        except WeightsError as e:
            print("WEIGHTS_ERROR:", e)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=100)
    message = done.stdout
    assert "WEIGHTS_ERROR:" in message, done.stderr[-2000:]
    assert "'openai'" in message and "ViT-B-32" in message and "HF_HUB_OFFLINE" in message
    assert "pretrained=/path/to/checkpoint" in message and "pretrained=none" in message


def test_tempme_weights_unknown_tag_or_arch_is_config_error():
    with pytest.raises(ConfigError, match=r"unknown pretrained 'opneai' for ViT-B-32; valid tags: openai, "):
        load_clip("ViT-B-32", "opneai")
    with pytest.raises(ConfigError, match="unknown open_clip arch 'ViT-B-33'"):
        load_clip("ViT-B-33", "none")
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        create_video_encoder(VideoModelConfig(arch=ARCH, pretrained="none", preset="fast"))
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        create_video_encoder(VideoModelConfig(arch=ARCH, pretrained="none"), device="gpu0")
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        create_video_encoder(VideoModelConfig(arch=ARCH, pretrained="none"), device="cpu", precision="fp8")


def test_tempme_weights_missing_checkpoint_is_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_clip(ARCH, str(tmp_path / "missing.safetensors"))
    bad = tmp_path / "bad.safetensors"
    save_file({"not_a_clip_key": torch.zeros(2)}, str(bad))
    with pytest.raises(WeightsError, match=f"cannot load checkpoint '{bad}'"):
        load_clip(ARCH, str(bad))


def test_tempme_weights_random_init_is_labelled_and_seeded(random_encoder, clip_frames):
    enc = random_encoder
    assert enc.weights_id == "random-init(seed=0)" and enc.identity()["weights_id"] == "random-init(seed=0)"
    assert enc.identity()["arch"] == ARCH and enc.device == torch.device("cpu") and enc.precision == "fp32"
    state = torch.random.get_rng_state()
    again = create_video_encoder(VideoModelConfig(pretrained="none", **FAST), with_text=False)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    assert torch.equal(again.encode_video(clip_frames), enc.encode_video(clip_frames))
    assert again.identity() == enc.identity()  # a video-only encoder is the same model for an index
    with pytest.raises(ValueError, match="no text tower"):
        again.encode_text(["a query"])
    other = create_video_encoder(VideoModelConfig(pretrained="none", seed=1, **FAST))
    assert other.weights_id == "random-init(seed=1)"
    assert not torch.allclose(other.encode_video(clip_frames), enc.encode_video(clip_frames))


def test_tempme_weights_video_and_text_embeddings(random_encoder, clip_frames):
    enc = random_encoder
    assert (enc.image_size, enc.embed_dim) == (224, 256)
    video = enc.encode_video(clip_frames)
    text = enc.encode_text(["an animated character", "a street with pedestrians"])
    assert video.shape == (1, 256) and text.shape == (2, 256)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(text[0], text[1])
    assert (video @ text.T).shape == (1, 2)
    assert enc.encode_text([]).shape == (0, 256)
    with pytest.raises(InputError, match="list of strings"):
        enc.encode_text("a dog")


def test_tempme_weights_local_checkpoint_round_trip(tmp_path, random_encoder, clip_frames):
    # the full open_clip state dict of the random encoder: its text model plus the vision tower
    state = dict(random_encoder.text.model.state_dict())
    state.update({f"visual.{k}": v for k, v in random_encoder.visual.state_dict().items()})
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    enc = create_video_encoder(VideoModelConfig(pretrained=str(path), **FAST))
    assert enc.weights_id.startswith(f"file:{path.resolve()}#sha256=")
    assert len(enc.weights_id.split("=")[-1]) == 16
    torch.testing.assert_close(enc.encode_video(clip_frames), random_encoder.encode_video(clip_frames))
    torch.testing.assert_close(enc.encode_text(["a dog"]), random_encoder.encode_text(["a dog"]))
    assert enc.identity() != random_encoder.identity()  # the weights id tells them apart


def test_tempme_weights_custom_schedule_from_config():
    from tomeray.pipeline.core.config import load_config

    base = ["arch=" + ARCH, "pretrained=none"]
    cfg = load_config(VideoModelConfig, None, [*base, "preset=custom", "schedule.cross_clip_ratio=0.4"])
    enc = create_video_encoder(cfg)
    assert enc.identity()["preset"] == "custom" and enc.identity()["schedule"]["cross_clip_ratio"] == 0.4
    assert enc.plan[8].cross_r == int(34 * 2 * 0.4)  # tempme's other settings, 40 % across clips
    with pytest.raises(ConfigError, match="preset=custom needs a schedule"):
        create_video_encoder(load_config(VideoModelConfig, None, [*base, "preset=custom"]))
    with pytest.raises(ConfigError, match="set preset=custom"):
        create_video_encoder(load_config(VideoModelConfig, None, [*base, "schedule.frame_ratio=0.1"]))
    # a config passed on as a plain dict (dataclasses.asdict, e.g. to a Ray actor) works the same
    again = create_video_encoder(VideoModelConfig(**dataclasses.asdict(cfg)))
    assert again.identity() == enc.identity()
