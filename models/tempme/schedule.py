"""TempMe's merge schedule: declarative (relative to the tower), resolved once per encoder into a
per-layer ``LayerPlan`` from the tower's depth, tokens per frame and frame count."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from tomeray.models.errors import ConfigError

__all__ = ["CUSTOM", "POOLINGS", "PRESETS", "LayerPlan", "MergeSchedule", "preset_schedule",
           "resolve_schedule"]

POOLINGS = ("mean_normalized", "mean")


@dataclass
class MergeSchedule:
    """Where and how much to merge, relative to the tower (resolved by ``resolve_schedule``).

    frame_ratio:       tokens merged per frame after attention in every layer before the first
                       ClipMe layer, as a fraction of the tokens per frame (r = round(ratio * N);
                       0.04 gives ToMe's r=2 on ViT-B/32's 50 tokens, 8 on ViT-B/16's 197).
    clip_layers:       ClipMe layers as fractions of the depth (layer = floor(fraction * depth + 0.5)).
    frames_per_clip:   groups concatenated at each ClipMe layer (12 frames -> 6 -> 3 -> 1 clips).
    cross_clip_ratio:  fraction of a new clip's tokens merged across its frames before attention.
    intra_clip_ratio:  fraction of a clip's tokens merged after attention, at and after the first
                       ClipMe layer.
    prop_attn:         proportional attention (log token size added to the attention logits).
    pooling:           "mean_normalized" (mean of L2-normalised frame embeddings, TempMe/CLIP4Clip)
                       or "mean" (mean of raw frame embeddings); the result is L2-normalised.
    """

    frame_ratio: float = 0.04
    clip_layers: list[float] = field(default_factory=lambda: [8 / 12, 9 / 12, 10 / 12])
    frames_per_clip: list[int] = field(default_factory=lambda: [2, 2, 3])
    cross_clip_ratio: float = 0.3
    intra_clip_ratio: float = 0.1
    prop_attn: bool = True
    pooling: str = "mean_normalized"


_PRESETS: dict[str, MergeSchedule] = {
    # CLIP4Clip mean pooling: per-frame CLIP, no merging.
    "none": MergeSchedule(frame_ratio=0.0, clip_layers=[], frames_per_clip=[], cross_clip_ratio=0.0,
                          intra_clip_ratio=0.0),
    # TempMe's defaults: r=2 in layers 0-7, ClipMe at 8, 9, 10 (2, 2, 3 frames per clip), 30 % cross-
    # and 10 % intra-clip merging (ViT-B/32, 12 layers; the same fractions on other towers).
    "tempme": MergeSchedule(),
    # Faster: 10 % of a frame's tokens merged per layer (r=5 on ViT-B/32) and ClipMe at 1/4, 1/2 and
    # 3/4 of the depth with 40 % cross-clip merging, so most layers run on a few merged clips.
    "tempme-fast": MergeSchedule(frame_ratio=0.1, clip_layers=[0.25, 0.5, 0.75], frames_per_clip=[2, 2, 3],
                                 cross_clip_ratio=0.4, intra_clip_ratio=0.1),
}
PRESETS: tuple[str, ...] = tuple(_PRESETS)
CUSTOM = "custom"  # VideoModelConfig.preset for a schedule given in the config itself


def preset_schedule(name: str) -> MergeSchedule:
    """A fresh copy of a named preset's schedule."""
    if name not in _PRESETS:
        raise ConfigError(
            f"unknown preset '{name}'; valid presets: {', '.join(PRESETS)} (or {CUSTOM} with a schedule)"
        )
    return dataclasses.replace(_PRESETS[name], clip_layers=list(_PRESETS[name].clip_layers),
                               frames_per_clip=list(_PRESETS[name].frames_per_clip))


@dataclass(frozen=True)
class LayerPlan:
    """What one block does, resolved for a tower and a frame count (counts are per video)."""

    layer: int
    frames_per_clip: int  # groups concatenated before attention (1: none)
    cross_r: int  # tokens merged across the concatenated groups before attention
    r: int  # tokens merged per group after attention
    groups: int  # groups per video after the block (frames, then clips)
    tokens: int  # tokens per group after the block, CLS tokens included
    cls: int  # CLS tokens per group after the block


def _check_ratio(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ConfigError(f"merge schedule {name}={value!r} must be a fraction in [0, 1)")


def resolve_schedule(
    schedule: MergeSchedule, depth: int, tokens_per_frame: int, num_frames: int
) -> tuple[LayerPlan, ...]:
    """Per-layer merge plan for a tower of ``depth`` blocks, ``tokens_per_frame`` tokens (CLS
    included) and ``num_frames`` frames per video. Amounts round down, as TempMe's do, and are
    capped at what bipartite matching can merge (half the non-CLS tokens)."""
    for name in ("frame_ratio", "cross_clip_ratio", "intra_clip_ratio"):
        _check_ratio(name, getattr(schedule, name))
    if schedule.pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling '{schedule.pooling}'; valid: {', '.join(POOLINGS)}")
    if len(schedule.clip_layers) != len(schedule.frames_per_clip):
        raise ConfigError(
            f"clip_layers {list(schedule.clip_layers)} and frames_per_clip {list(schedule.frames_per_clip)} "
            "must have the same length"
        )
    for fraction in schedule.clip_layers:
        if not 0.0 <= fraction < 1.0:
            raise ConfigError(f"clip_layers entries are fractions of the depth in [0, 1); got {fraction!r}")
    clip_layers = [math.floor(f * depth + 0.5) for f in schedule.clip_layers]
    if any(b <= a for a, b in zip(clip_layers, clip_layers[1:])) or any(x >= depth for x in clip_layers):
        raise ConfigError(
            f"clip_layers {list(schedule.clip_layers)} give layers {clip_layers} for depth {depth}: "
            f"they must be increasing, distinct and below {depth}"
        )
    groups = num_frames
    for g in schedule.frames_per_clip:
        if int(g) != g or g < 2:
            raise ConfigError(
                f"frames_per_clip entries must be integers >= 2; got {list(schedule.frames_per_clip)}"
            )
        if groups % g:
            raise ConfigError(
                f"num_frames={num_frames} cannot be grouped by frames_per_clip "
                f"{list(schedule.frames_per_clip)}: {groups} groups are not divisible by {g}; "
                f"use a num_frames divisible by {math.prod(schedule.frames_per_clip)}"
            )
        groups //= g

    frame_r = int(round(schedule.frame_ratio * tokens_per_frame))
    clip_at = dict(zip(clip_layers, (int(g) for g in schedule.frames_per_clip)))
    first_clip = clip_layers[0] if clip_layers else depth
    plan = []
    n, cls, groups = tokens_per_frame, 1, num_frames
    for layer in range(depth):
        g, cross_r = clip_at.get(layer, 1), 0
        if g > 1:
            total = n * g
            cross_r = min(int(total * schedule.cross_clip_ratio), (n - cls) * g // 2)
            n, cls, groups = total - cross_r, cls * g, groups // g
        if layer < first_clip:
            r = min(frame_r, (n - cls) // 2)
        else:
            r = min(int(n * schedule.intra_clip_ratio), (n - cls) // 2)
        n -= r
        plan.append(LayerPlan(layer, g, cross_r, r, groups, n, cls))
    return tuple(plan)
