"""``create_video_encoder``: an open_clip model with explicit weights + a TempMe merge schedule
(+ optionally a trained adapter)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from tomeray.models.clip import load_clip
from tomeray.models.device import resolve_device, resolve_precision
from tomeray.models.errors import ConfigError
from tomeray.models.lora import LORA_RANK
from tomeray.models.tempme.adapter import load_adapter, read_adapter_metadata
from tomeray.models.tempme.encoder import TempMeEncoder
from tomeray.models.tempme.schedule import CUSTOM, MergeSchedule, preset_schedule

__all__ = ["VideoModelConfig", "absolute_path", "create_video_encoder"]


def absolute_path(path: str | None) -> str | None:
    """A file named on the command line, absolute: Ray workers may run in another working directory."""
    return os.path.abspath(os.path.expanduser(path)) if path else path


@dataclass
class VideoModelConfig:
    arch: str = "ViT-B-32"  # open_clip model name
    pretrained: str = "openai"  # open_clip tag | local checkpoint path | "none" (random init)
    preset: str = "tempme"  # see PRESETS
    num_frames: int = 12
    seed: int = 0  # random init seed (pretrained=none)
    schedule: MergeSchedule | None = None  # with preset="custom": the merge schedule to use
    adapter: str | None = None  # path of a trained adapter (adapter.safetensors); None: training-free

    def __post_init__(self):
        self.adapter = absolute_path(self.adapter)


def _config_schedule(cfg: VideoModelConfig) -> MergeSchedule:
    if cfg.preset == CUSTOM:
        if cfg.schedule is None:
            raise ConfigError(
                "preset=custom needs a schedule (schedule.frame_ratio=..., schedule.clip_layers=..., ...)"
            )
        if isinstance(cfg.schedule, Mapping):  # e.g. a config passed on as dataclasses.asdict(...)
            names = {f.name for f in dataclasses.fields(MergeSchedule)}
            unknown = sorted(set(cfg.schedule) - names)
            if unknown:
                raise ConfigError(f"unknown schedule keys {unknown}; valid: {', '.join(sorted(names))}")
            return MergeSchedule(**cfg.schedule)
        return cfg.schedule
    if cfg.schedule is not None:
        raise ConfigError(
            f"a schedule is given but preset={cfg.preset!r}; set preset=custom to use the schedule"
        )
    return preset_schedule(cfg.preset)


def create_video_encoder(cfg: VideoModelConfig, *, with_text: bool = True, device: str = "auto",
                         precision: str = "auto") -> TempMeEncoder:
    """Build the encoder: open_clip model + weights (``models.clip``), preset schedule, on ``device``
    in ``precision`` (``models.device``'s rule), with ``cfg.adapter`` loaded when given (refused if it
    was trained for other settings). ``with_text=False`` drops the text tower (video-only workers save
    its memory)."""
    schedule = _config_schedule(cfg)  # fail on a bad preset before loading weights
    where = resolve_device(device)
    precision = resolve_precision(precision, where)
    # the adapter sizes the LoRA; its header is read first: a missing or foreign file fails before any weights
    rank = int(read_adapter_metadata(cfg.adapter).get("lora_rank", LORA_RANK)) if cfg.adapter else LORA_RANK
    clip = load_clip(cfg.arch, cfg.pretrained, seed=cfg.seed, lora_rank=rank, text=with_text)
    encoder = TempMeEncoder(
        clip.visual,
        cfg.preset,
        schedule=schedule,
        num_frames=cfg.num_frames,
        text=clip.text,
        arch=cfg.arch,
        weights_id=clip.weights_id,
        mean=clip.mean,
        std=clip.std,
        precision=precision,
        lora_rank=rank,
    )
    if cfg.adapter:
        load_adapter(encoder, cfg.adapter)
    return encoder.to(where)
