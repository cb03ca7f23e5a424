"""TempMe: temporal token merging inside an open_clip ``VisionTransformer`` (training-free, or with
trained LoRA and temporal embeddings).

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
CLS projections, L2-normalised again for retrieval. ``preset="none"`` runs the same weights with no
merging: the CLIP4Clip mean-pooling baseline.

Trainable form (``models.lora``): LoRA on q/k/v in every block, and in each ClipMe block one temporal
embedding per group entering it, added to all of a group's tokens after the concatenation and before
the size-weighted cross-clip merge (whose metric is the block input without it), and only when that
block merges across clips at all (as the reference does). Both start at zero (LoRA B = 0), so an
encoder without an adapter is exactly TempMe's training-free form. ``grad=True`` keeps the autograd
graph: merge decisions are made without gradient, gradients flow through the merged values and
through the LoRA-updated keys into attention; token sizes are constants.

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

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tomeray.models.device import AUTOCAST_DTYPES, autocast
from tomeray.models.errors import ConfigError, InputError
from tomeray.models.lora import LORA_RANK, TowerAdapter, lora_qkv
from tomeray.models.merging import attention_bias, bipartite_soft_matching, merge_wavg
from tomeray.models.tempme.schedule import MergeSchedule, preset_schedule, resolve_schedule
from torch import nn

__all__ = ["TempMeEncoder", "VideoFeatures"]


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
    ``lora_rank``: rank of the trainable LoRA (``tvpt``, next to the tower; the tower is not modified).
    ``adapter``: the trained parts loaded into it (``models.tempme.adapter``), None when untrained.
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
        lora_rank: int = LORA_RANK,
    ):
        super().__init__()
        _check_tower(visual)
        if int(num_frames) != num_frames or num_frames < 1:
            raise ConfigError(f"num_frames must be a positive integer; got {num_frames!r}")
        if precision not in AUTOCAST_DTYPES:
            raise ConfigError(f"unknown precision '{precision}'; valid: {', '.join(AUTOCAST_DTYPES)}")
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
        text_rank = getattr(getattr(text, "tvpt", None), "rank", lora_rank)
        if text_rank != lora_rank:
            raise ConfigError(f"the text encoder's LoRA rank is {text_rank} but lora_rank={lora_rank}; "
                              "build both with the same rank")
        clip_groups = {p.layer: p.groups * p.frames_per_clip for p in self.plan if p.frames_per_clip > 1}
        self.tvpt = TowerAdapter(int(visual.transformer.width), len(blocks), lora_rank, clip_groups).to(
            visual.proj.device)
        # AdapterInfo of the trained parts loaded (load_adapter / load_reference_checkpoint); tensors
        # changed in memory afterwards (training) are not tracked until saved and loaded again
        self.adapter = None
        self.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.visual.proj.device

    def identity(self) -> dict:
        """What makes two encoders' embeddings comparable (indexes are compatible iff equal). With an
        adapter it includes ``"adapter": {"id", "name"}``; without one it is what it always was."""
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
            # only with an adapter, so the identity of the training-free form stays what it always was
            **({"adapter": {"id": self.adapter.id, "name": self.adapter.name}} if self.adapter else {}),
        }

    # ------------------------------------------------------------------------------ trainable

    @property
    def lora_rank(self) -> int:
        return self.tvpt.rank

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters TempMe trains (visual LoRA, temporal embeddings, text LoRA), named as in an
        adapter file (``visual.transformer.resblocks.N.attn.TVPt_LoRA_a``, ``text.transformer...``)."""
        params = {f"visual.{k}": p for k, p in self.tvpt.named_parameters()}
        if self._text_tvpt is not None:
            params.update({f"text.{k}": p for k, p in self._text_tvpt.named_parameters()})
        return params

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """``adapter_parameters`` with requires_grad switched on, for an optimizer; every other weight
        (both towers, the logit scale) stays frozen."""
        params = self.adapter_parameters()
        for p in params.values():
            p.requires_grad_(True)
        return params

    @property
    def _text_tvpt(self) -> nn.Module | None:
        return getattr(self.text, "tvpt", None)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Detached copies of the trainable tensors, named as in ``trainable_parameters``."""
        with torch.no_grad():
            state = {f"visual.{k}": v.detach().clone() for k, v in self.tvpt.state_dict().items()}
            if self._text_tvpt is not None:
                text = self._text_tvpt.state_dict()
                state.update({f"text.{k}": v.detach().clone() for k, v in text.items()})
        return state

    # ----------------------------------------------------------------------------------- video

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor | None = None, *,
                     grad: bool = False) -> torch.Tensor:
        """(B, T, 3, H, W) normalised frames (+ optional (B, T) frame mask) -> (B, D) unit vectors.
        ``grad=True``: keep the autograd graph (training); otherwise inference mode."""
        return F.normalize(self.forward_features(frames, mask, grad=grad).video_embedding, dim=-1)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode_video(frames, mask)

    def forward_features(self, frames: torch.Tensor, mask: torch.Tensor | None = None, *,
                         grad: bool = False) -> VideoFeatures:
        with _grad_mode(grad):
            return self._features(frames, mask)

    def _features(self, frames: torch.Tensor, mask: torch.Tensor | None) -> VideoFeatures:
        frames, weights = self._prepare(frames, mask)
        b, t = frames.shape[:2]
        with autocast(self.device, self.precision):
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
        for block, parts, step in zip(self.visual.transformer.resblocks, self.tvpt.blocks, self.plan):
            g = step.frames_per_clip
            if g > 1:
                if size is None:
                    size = x.new_ones(x.shape[0], x.shape[1], 1)
                # the reference adds the temporal embedding only when the block merges across clips
                temporal = None
                if step.cross_r:
                    temporal = _concat_groups(_group_embedding(parts.temporal, x), g, cls)
                x, size = _concat_groups(x, g, cls), _concat_groups(size, g, cls)
                cls *= g
                if step.cross_r:
                    protected, dst = _merge_masks(x.shape[1], cls, x.device)
                    # decided on the block input without the embedding (matching runs without gradient)
                    merge, _ = bipartite_soft_matching(x, step.cross_r, protected=protected, dst=dst)
                    x, size = merge_wavg(merge, x + temporal.to(x.dtype), size)
            x, size = self._block(block, parts, x, size, step.r, cls)
            shapes.append((x.shape[0], x.shape[1]))
        return x, size, shapes

    def _block(
        self, block: nn.Module, parts: nn.Module, x: torch.Tensor, size: torch.Tensor | None, r: int, cls: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pre-LN residual block with the block's own weights (+ its LoRA): attend, merge r, MLP."""
        b, n, c = x.shape
        q, k, v = lora_qkv(block, parts.attn, block.ln_1(x))
        bias = attention_bias(size, dtype=q.dtype) if self.schedule.prop_attn else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        y = block.attn.out_proj(y.transpose(1, 2).reshape(b, n, c))
        x = x + block.ls_1(y)
        if r:
            protected, dst = _merge_masks(n, cls, x.device)
            merge, _ = bipartite_soft_matching(k.mean(dim=1), r, protected=protected, dst=dst)
            x, size = merge_wavg(merge, x, size)
        return x + block.ls_2(block.mlp(block.ln_2(x))), size

    # ------------------------------------------------------------------------------------ text

    def encode_text(self, texts: list[str] | torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """(N,) strings, or (N, L) token ids from ``tokenize``, -> (N, D) L2-normalised text embeddings
        from the matching text tower (with its LoRA). ``grad=True`` keeps the autograd graph."""
        if self.text is None:
            raise InputError(
                "this encoder has no text tower; build it with create_video_encoder(cfg, with_text=True)"
            )
        if isinstance(texts, str):
            raise InputError("encode_text expects a list of strings, got one string; wrap it in a list")
        if len(texts) == 0:
            return torch.zeros(0, self.embed_dim, device=self.device)
        with _grad_mode(grad), autocast(self.device, self.precision):
            return self.text(texts)

    def tokenize(self, texts: list[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids (N, context_length) for ``encode_text``; shorter contexts truncate long texts."""
        if self.text is None:
            raise InputError("this encoder has no text tower to tokenize for")
        return self.text.tokenize(texts, context_length)


def _grad_mode(grad: bool) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if grad else torch.inference_mode()


def _group_embedding(temporal: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(1, F, 1, C) temporal embedding -> (groups, tokens, C): group j of x (F groups per video, videos
    one after another) gets vector j mod F on every token."""
    groups, n, c = x.shape
    per_group = temporal[0, :, 0][torch.arange(groups, device=x.device) % temporal.shape[1]]
    return per_group[:, None, :].expand(groups, n, c)


def _concat_groups(t: torch.Tensor, g: int, cls: int) -> torch.Tensor:
    """Join g consecutive groups into one: all CLS tokens first, then all patches, in group order."""
    b, n, c = t.shape
    t = t.reshape(b // g, g, n, c)
    return torch.cat([t[:, :, :cls].flatten(1, 2), t[:, :, cls:].flatten(1, 2)], dim=1)


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
