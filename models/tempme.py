"""TempMe: training-free temporal token merging inside an open_clip ``VisionTransformer``.

A video of T frames runs through the tower's own weights (conv1, ln_pre, every residual block,
ln_post, proj) with a block forward that merges tokens (``models.merging``):

* intra-frame merging (ToMe): in the early layers every frame loses r tokens after attention;
* ClipMe layers: ``frames_per_clip`` neighbouring groups (frames, later clips) are concatenated
  into one sequence (all their CLS tokens first, then their patches, both in frame order), a
  fraction of the tokens is merged across them before attention (metric: the block input), and a
  fraction within the new clip after attention (metric: the attention keys averaged over heads);
* intra-clip merging: later layers keep merging within each clip.

CLS tokens are never merged away nor merged into, so every frame keeps its own CLS token to the
end. Merged tokens are size-weighted means and, with ``prop_attn``, attend with a ``log(size)``
bias (proportional attention). The video embedding is the mean of the L2-normalised per-frame
CLS projections, L2-normalised again for retrieval. TempMe's LoRA and temporal position
embeddings are zero when it is untrained, so pretrained CLIP + this merging *is* its training-free
form. ``preset="none"`` runs the same weights with no merging: the CLIP4Clip mean-pooling baseline.

The merge schedule is declarative (``MergeSchedule``, relative to depth and token count) and is
resolved once per encoder into a per-layer ``LayerPlan`` from the tower's actual depth, tokens per
frame and frame count; ``forward`` only follows the plan.

Short videos (frame mask): every masked slot is refilled with one of the video's own frames,
spread evenly in time (slot i takes valid frame ``int(linspace(0, k-1, T)[i])``, the reference
loader's rule for videos shorter than T). Padding values therefore never enter the computation,
the fixed schedule still applies, and each batch item is computed independently of the others.
Pooling weights every real frame once: a frame copied into c slots gives each copy weight 1/c.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.errors import ConfigError, InputError
from models.merging import attention_bias, bipartite_soft_matching, merge_wavg

__all__ = [
    "CUSTOM",
    "POOLINGS",
    "PRESETS",
    "LayerPlan",
    "MergeSchedule",
    "TempMeEncoder",
    "VideoFeatures",
    "VideoModelConfig",
    "create_video_encoder",
    "preset_schedule",
    "resolve_schedule",
]

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


@dataclass
class VideoFeatures:
    """Everything ``TempMeEncoder.forward_features`` computes for a batch of B videos."""

    cls_tokens: torch.Tensor  # (B, T, width): each frame's CLS token before ln_post, frame order
    frame_embeddings: torch.Tensor  # (B, T, D): ln_post(CLS) @ proj
    video_embedding: torch.Tensor  # (B, D): pooled, not yet L2-normalised
    tokens: torch.Tensor  # (B * groups, tokens, width): output of the last block
    sizes: torch.Tensor | None  # (B * groups, tokens, 1): original tokens behind each token
    token_shapes: list[tuple[int, int]]  # (batch dim, tokens) after every block, as observed


def _merge_masks(n: int, cls: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS tokens (the first ``cls``) are protected; destinations are the other odd positions.

    Keeping the protected tokens out of the destination set puts them first in ``merge``'s output
    (surviving sources come first, in order), so the CLS tokens always lead the sequence, and the
    even/odd split of the patches is the one TempMe uses for any number of CLS tokens."""
    position = torch.arange(n, device=device)
    protected = position < cls
    return protected, (position % 2 == 1) & ~protected


class TempMeEncoder(nn.Module):
    """Video (and text) encoder over an open_clip ``VisionTransformer`` with a merge schedule.

    ``visual``: an open_clip ``VisionTransformer`` (class-token pooling, standard residual blocks).
    ``text``: optional text encoder (``models.clip.ClipTextEncoder``) for ``encode_text``.
    """

    def __init__(
        self,
        visual: nn.Module,
        preset: str = "tempme",
        *,
        schedule: MergeSchedule | None = None,
        num_frames: int = 12,
        text: nn.Module | None = None,
        arch: str = "custom",
        weights_id: str = "unspecified",
        mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
        std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
        precision: str = "fp32",
    ):
        super().__init__()
        _check_tower(visual)
        if int(num_frames) != num_frames or num_frames < 1:
            raise ConfigError(f"num_frames must be a positive integer; got {num_frames!r}")
        if precision not in _AUTOCAST:
            raise ConfigError(f"unknown precision '{precision}'; valid: {', '.join(_AUTOCAST)}")
        self.visual = visual.eval()
        self.text = text.eval() if text is not None else None
        self.preset = preset
        self.schedule = schedule if schedule is not None else preset_schedule(preset)
        self.num_frames = int(num_frames)
        self.arch = arch
        self.weights_id = weights_id
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.precision = precision
        self.image_size = int(_pair(visual.image_size)[0])
        self.embed_dim = int(visual.proj.shape[1])
        self.tokens_per_frame = int(visual.positional_embedding.shape[0])
        blocks = visual.transformer.resblocks
        self.plan = resolve_schedule(self.schedule, len(blocks), self.tokens_per_frame, self.num_frames)
        self.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.visual.proj.device

    def identity(self) -> dict:
        """What makes two encoders' embeddings comparable (indexes are compatible iff equal)."""
        return {
            "arch": self.arch,
            "weights_id": self.weights_id,
            "preset": self.preset,
            "schedule": dataclasses.asdict(self.schedule),
            "plan": [dataclasses.asdict(p) for p in self.plan],
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "num_frames": self.num_frames,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    # ----------------------------------------------------------------------------------- video

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, 3, H, W) normalised frames (+ optional (B, T) frame mask) -> (B, D) unit vectors."""
        return F.normalize(self.forward_features(frames, mask).video_embedding, dim=-1)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode_video(frames, mask)

    @torch.inference_mode()
    def forward_features(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> VideoFeatures:
        frames, weights = self._prepare(frames, mask)
        b, t = frames.shape[:2]
        with _autocast(self.device, self.precision):
            x, size, shapes = self._run_blocks(self._embed(frames.flatten(0, 1)))
            final_cls = self.plan[-1].cls if self.plan else 1
            # CLS tokens lead every group and are in frame order: (B * groups, cls) -> (B, T)
            cls_tokens = x[:, :final_cls].reshape(b, t, -1)
            frame_emb = self.visual.ln_post(cls_tokens) @ self.visual.proj
        frame_emb = frame_emb.float()
        pooled = F.normalize(frame_emb, dim=-1) if self.schedule.pooling == "mean_normalized" else frame_emb
        video = (pooled * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)
        return VideoFeatures(cls_tokens.float(), frame_emb, video, x, size, shapes)

    def _prepare(self, frames: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the input, refill masked slots, and return per-slot pooling weights (B, T)."""
        expect = f"(B, {self.num_frames}, 3, {self.image_size}, {self.image_size})"
        if not isinstance(frames, torch.Tensor):
            raise InputError(f"frames must be a torch.Tensor {expect}; got {type(frames).__name__}")
        if not frames.is_floating_point():
            raise InputError(
                f"frames must be normalised floating-point frames {expect}, got dtype {frames.dtype}; "
                "convert uint8 frames with models.frames.normalize_frames"
            )
        size = self.image_size
        if frames.dim() != 5 or tuple(frames.shape[1:]) != (self.num_frames, 3, size, size):
            raise InputError(f"frames must have shape {expect}; got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        frames = frames.to(self.device, torch.float32, non_blocking=True)
        if mask is None:
            return frames, torch.ones(b, t, device=self.device)
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != (b, t):
            raise InputError(f"mask must have shape (B, T) = ({b}, {t}); got {tuple(mask.shape)}")
        valid = mask.detach().cpu().bool()
        if not bool(valid.all()):
            empty = (~valid.any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise InputError(f"videos {empty} of the batch have no valid frame in the mask")
        source = torch.empty(b, t, dtype=torch.long)
        weights = torch.empty(b, t)
        for i in range(b):
            kept = valid[i].nonzero().flatten()
            pick = kept[torch.from_numpy(np.linspace(0, len(kept) - 1, num=t, dtype=int))]
            source[i] = pick
            copies = torch.bincount(pick, minlength=t).float()
            weights[i] = 1.0 / copies[pick]
        if bool(valid.all()):
            return frames, weights.to(self.device)
        rows = torch.arange(b)[:, None].expand(b, t)
        return frames[rows.to(self.device), source.to(self.device)], weights.to(self.device)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch + class + position embeddings and ln_pre: (N, 3, H, W) -> (N, tokens, width)."""
        v = self.visual
        x = v.conv1(images).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(x)

    def _run_blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, list[tuple[int, int]]]:
        size: torch.Tensor | None = None
        cls = 1
        shapes = []
        for block, step in zip(self.visual.transformer.resblocks, self.plan):
            if step.frames_per_clip > 1:
                x, size = _concat_groups(x, size, step.frames_per_clip, cls)
                cls *= step.frames_per_clip
                if step.cross_r:
                    protected, dst = _merge_masks(x.shape[1], cls, x.device)
                    merge, _ = bipartite_soft_matching(x, step.cross_r, protected=protected, dst=dst)
                    x, size = merge_wavg(merge, x, size)
            x, size = self._block(block, x, size, step.r, cls)
            shapes.append((x.shape[0], x.shape[1]))
        return x, size, shapes

    def _block(
        self, block: nn.Module, x: torch.Tensor, size: torch.Tensor | None, r: int, cls: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pre-LN residual block with the block's own weights: attend, merge r, MLP."""
        attn = block.attn
        b, n, c = x.shape
        heads = attn.num_heads
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        bias = attention_bias(size, dtype=q.dtype) if self.schedule.prop_attn else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        y = attn.out_proj(y.transpose(1, 2).reshape(b, n, c))
        x = x + block.ls_1(y)
        if r:
            protected, dst = _merge_masks(n, cls, x.device)
            merge, _ = bipartite_soft_matching(k.mean(dim=1), r, protected=protected, dst=dst)
            x, size = merge_wavg(merge, x, size)
        return x + block.ls_2(block.mlp(block.ln_2(x))), size

    # ------------------------------------------------------------------------------------ text

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(N,) strings -> (N, D) L2-normalised text embeddings from the matching text tower."""
        if self.text is None:
            raise InputError(
                "this encoder has no text tower; build it with create_video_encoder(cfg, with_text=True)"
            )
        if isinstance(texts, str):
            raise InputError("encode_text expects a list of strings, got one string; wrap it in a list")
        if len(texts) == 0:
            return torch.zeros(0, self.embed_dim, device=self.device)
        with _autocast(self.device, self.precision):
            return self.text(texts)


def _concat_groups(
    x: torch.Tensor, size: torch.Tensor | None, g: int, cls: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Join g consecutive groups into one: all CLS tokens first, then all patches, in group order."""
    b, n, c = x.shape
    if size is None:
        size = x.new_ones(b, n, 1)

    def join(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(b // g, g, n, t.shape[-1])
        return torch.cat([t[:, :, :cls].flatten(1, 2), t[:, :, cls:].flatten(1, 2)], dim=1)

    return join(x), join(size)


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _check_tower(visual: nn.Module) -> None:
    """Fail early, naming what is missing, for towers this block forward cannot run."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ConfigError(
            f"TempMe needs an open_clip VisionTransformer tower; got {type(visual).__name__} "
            "(timm / ResNet towers are not supported)"
        )
    unsupported = []
    if getattr(visual, "attn_pool", None) is not None:
        unsupported.append("attentional pooling")
    if getattr(visual, "pool_type", "tok") != "tok":
        unsupported.append(f"pool_type={visual.pool_type!r}")
    if getattr(visual, "final_ln_after_pool", False):
        unsupported.append("final_ln_after_pool")
    if visual.proj is None:
        unsupported.append("no output projection")
    if not isinstance(visual.patch_dropout, nn.Identity) and visual.patch_dropout.prob > 0:
        unsupported.append("patch dropout")
    if not getattr(visual.transformer, "batch_first", True):
        unsupported.append("sequence-first transformer")
    for block in visual.transformer.resblocks:
        if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention) or hasattr(block, "ln_1_kv"):
            unsupported.append(f"residual block type {type(block).__name__}")
            break
    if unsupported:
        raise ConfigError(f"unsupported open_clip VisionTransformer features: {', '.join(unsupported)}")


# ---------------------------------------------------------------------------------- factory

_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _autocast(device: torch.device, precision: str):
    dtype = _AUTOCAST[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@dataclass
class VideoModelConfig:
    arch: str = "ViT-B-32"  # open_clip model name
    pretrained: str = "openai"  # open_clip tag | local checkpoint path | "none" (random init)
    preset: str = "tempme"  # see PRESETS
    num_frames: int = 12
    device: str = "auto"  # auto = cuda when present
    precision: str = "auto"  # fp32 on CPU, bf16 autocast on GPU
    seed: int = 0  # random init seed (pretrained=none)
    schedule: MergeSchedule | None = None  # with preset="custom": the merge schedule to use


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use device=cpu or auto")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in _AUTOCAST:
        raise ConfigError(f"unknown precision '{name}'; valid: auto, {', '.join(_AUTOCAST)}")
    return name


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


def create_video_encoder(cfg: VideoModelConfig, *, with_text: bool = True) -> TempMeEncoder:
    """Build the encoder: open_clip model + weights (``models.clip``), preset schedule, device.
    ``with_text=False`` drops the text tower (video-only workers save its memory)."""
    from models.clip import load_clip

    schedule = _config_schedule(cfg)  # fail on a bad preset before loading weights
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    clip = load_clip(cfg.arch, cfg.pretrained, seed=cfg.seed)
    encoder = TempMeEncoder(
        clip.visual,
        cfg.preset,
        schedule=schedule,
        num_frames=cfg.num_frames,
        text=clip.text if with_text else None,
        arch=cfg.arch,
        weights_id=clip.weights_id,
        mean=clip.mean,
        std=clip.std,
        precision=precision,
    )
    return encoder.to(device)
