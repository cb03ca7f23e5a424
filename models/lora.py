"""TempMe's trainable parts, kept next to an open_clip tower instead of inside it.

TempMe trains ~0.5M parameters on top of frozen CLIP ("TVPt" in the reference's parameter names):

* LoRA on q, k and v in every attention block: with h = ln_1(x) the in-projection becomes
  ``h @ W.T + b + (h @ A.T) @ B.T`` (A: rank x C, kaiming-uniform; B: 3C x rank, zeros), with no
  scaling and no dropout. The 3C outputs split into q, k, v as the in-projection does.
* temporal embeddings, in the vision tower's clip-merging blocks only: one C-vector per group (frame
  or clip) entering the block, shape (1, groups, 1, C).

``TowerAdapter`` mirrors the tower's module paths, so its state-dict keys are the reference's
tower-relative keys (``transformer.resblocks.N.attn.TVPt_LoRA_a``, ``...N.TVPt_Video_Positional_embedding``)
and the open_clip tower itself is never modified (towers can be shared, and their state dicts stay
standard). B starts at zero, so an untrained adapter changes no output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from tomeray.models.errors import ConfigError
from torch import nn

__all__ = ["LORA_RANK", "AttentionLoRA", "BlockAdapter", "FoldedQKV", "TowerAdapter", "lora_qkv"]

LORA_RANK = 8  # TempMe's lora_dim


class AttentionLoRA(nn.Module):
    """The low-rank update of one block's q/k/v in-projection."""

    def __init__(self, width: int, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        self.TVPt_LoRA_a = nn.Parameter(torch.empty(rank, width))
        nn.init.kaiming_uniform_(self.TVPt_LoRA_a, a=math.sqrt(5), generator=generator)
        self.TVPt_LoRA_b = nn.Parameter(torch.zeros(3 * width, rank))

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., 3C): the term added to the in-projection's output."""
        return F.linear(F.linear(h, self.TVPt_LoRA_a), self.TVPt_LoRA_b)


class FoldedQKV(nn.Module):
    """A block's in-projection with its LoRA update folded in, ``W + B @ A``, as one ``nn.Linear``
    (for inference: one matrix product instead of three, and a layer quantisation can convert).
    Stands in for the block's :class:`AttentionLoRA` in :func:`lora_qkv`."""

    def __init__(self, attn: nn.MultiheadAttention, lora: AttentionLoRA):
        super().__init__()
        width = attn.embed_dim
        self.qkv = nn.Linear(width, 3 * width, bias=attn.in_proj_bias is not None)
        with torch.no_grad():
            self.qkv.weight.copy_(attn.in_proj_weight + lora.TVPt_LoRA_b @ lora.TVPt_LoRA_a)
            if attn.in_proj_bias is not None:
                self.qkv.bias.copy_(attn.in_proj_bias)


class BlockAdapter(nn.Module):
    """One residual block's parts: ``attn`` (LoRA) and, in a clip-merging block, the temporal embedding."""

    def __init__(self, width: int, rank: int, groups: int = 0, generator: torch.Generator | None = None):
        super().__init__()
        self.attn = AttentionLoRA(width, rank, generator)
        if groups:
            self.TVPt_Video_Positional_embedding = nn.Parameter(torch.zeros(1, groups, 1, width))

    @property
    def temporal(self) -> torch.Tensor | None:
        return getattr(self, "TVPt_Video_Positional_embedding", None)


class TowerAdapter(nn.Module):
    """The trainable parts of one tower (``transformer.resblocks[i]`` mirrors the tower's blocks).

    width, layers: the tower's transformer width and depth.
    rank:          LoRA rank.
    groups:        {block index: groups entering the block} for the blocks with a temporal embedding.
    seed:          A's kaiming-uniform init is drawn from a private generator with this seed, so every
                   encoder (every training worker) starts from the same values and the caller's RNG
                   state is untouched.
    """

    def __init__(self, width: int, layers: int, rank: int = LORA_RANK,
                 groups: Mapping[int, int] | None = None, seed: int = 0):
        super().__init__()
        if int(rank) != rank or rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer; got {rank!r}")
        groups = dict(groups or {})
        generator = torch.Generator().manual_seed(seed)
        self.width, self.rank = int(width), int(rank)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            BlockAdapter(width, rank, groups.get(i, 0), generator) for i in range(layers)
        )

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.resblocks


def lora_qkv(block: nn.Module, lora: AttentionLoRA | FoldedQKV, h: torch.Tensor, *,
             sequence_first: bool = False) -> tuple[torch.Tensor, ...]:
    """q, k, v of an open_clip ``ResidualAttentionBlock`` (``nn.MultiheadAttention`` weights) for the
    normalised input h (B, N, C), with the LoRA update: each (B, heads, N, C // heads), q unscaled.

    ``sequence_first``: run the projections on the (N, B, C) view of h, the layout in which
    ``nn.MultiheadAttention`` computes them for batch-first input; the matrix product then rounds
    exactly as open_clip's own forward does (the batch-first layout differs in the last bits)."""
    attn = block.attn
    b, n, c = h.shape
    if sequence_first:
        h = h.transpose(0, 1)
    if isinstance(lora, FoldedQKV):
        qkv = lora.qkv(h)
    else:
        qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias) + lora.delta(h)
    if sequence_first:
        qkv = qkv.transpose(0, 1)
    q, k, v = qkv.reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    return q, k, v
