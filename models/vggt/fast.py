"""FastVGGT: token merging inside VGGT's global attention (merge -> attend -> unmerge).

Global attention over S views costs O((S*P)^2); neighbouring patches and the same surface seen
from several views give near-identical tokens, so most of them can share one attention slot.
Per forward pass a ``GlobalMergePlan`` fixes, from the scene layout alone:

- destinations: every token of view 0 (the reference frame), every view's camera and register
  tokens, and one seeded random patch per ``region x region`` cell of every other view
  (``models.merging.frame_dst_mask``);
- protected tokens: an evenly spaced ``protect_ratio`` of all tokens (FastVGGT's rule), which are
  neither merged away nor merged into and so keep their own attention slot;
- r = ``ratio`` * tokens to remove (capped by the mergeable sources).

Inside each merging global block, the plan matches every source token to its most similar
destination (cosine similarity of the block's attention input), merges q, k and v (size-
weighted means; RoPE was already applied, so each token carries its own position into the
merge), runs attention on the merged tokens with an optional log(size) bias, projects, and
copies each merged result back to all the tokens it stands for.

Differences from the FastVGGT reference, on purpose: any batch size (the matching is per scene),
any patch grid (derived from the input, never a fixed 37x28), protected tokens are removed from
both sides instead of being duplicated in attention, the similarity is computed in chunks (in
float32) so long sequences fit in memory, and proportional attention is available (on by default).
The matching itself is ``models.merging.match_tokens``; this module only decides the destination
and protected sets and adapts the result to attention's (B, heads, N, D) layout.
"""

from __future__ import annotations

import torch
from tomeray.models.errors import ConfigError
from tomeray.models.merging import TokenMatch, attention_bias, frame_dst_mask, match_tokens
from tomeray.models.vggt.config import MergeConfig
from torch import Tensor


def validate_merge_config(cfg: MergeConfig, depth: int) -> None:
    if not 0.0 <= cfg.ratio <= 1.0:
        raise ConfigError(f"merge.ratio must be in [0, 1]; got {cfg.ratio}")
    if not 0.0 <= cfg.protect_ratio < 1.0:
        raise ConfigError(f"merge.protect_ratio must be in [0, 1); got {cfg.protect_ratio}")
    if cfg.region < 1:
        raise ConfigError(f"merge.region must be >= 1; got {cfg.region}")
    if not 0 <= cfg.start_block < depth:
        raise ConfigError(f"merge.start_block must be in [0, {depth}) for this arch; got {cfg.start_block}")


def protected_tokens(num_tokens: int, fraction: float, device: torch.device | None = None) -> Tensor:
    """FastVGGT's protected set: int(N * fraction) tokens, every (N // count)-th from token 0."""
    mask = torch.zeros(num_tokens, dtype=torch.bool, device=device)
    count = int(num_tokens * fraction)
    if count > 0:
        step = max(1, num_tokens // count)
        mask[torch.arange(0, num_tokens, step, device=device)[:count]] = True
    return mask


class TokenMatching:
    """One block's merge of N tokens onto M slots, in the shape attention needs: q, k and v are
    merged in (B, heads, N, D) layout, ``attn_bias`` (B, 1, 1, M) = log(slot size) when proportional
    attention is on, and the attention output is unmerged back to N tokens."""

    def __init__(self, match: TokenMatch, proportional: bool) -> None:
        self.match = match
        self.assign = match.slot  # (B, N): each token's slot
        self.sizes = match.counts[..., None]
        self.attn_bias = attention_bias(self.sizes) if proportional else None

    @property
    def num_slots(self) -> int:
        return self.match.num_slots

    def merge(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (B, M, C) slot means."""
        return self.match.merge(x, mode="mean")

    def merge_heads(self, t: Tensor) -> Tensor:
        """(B, heads, N, D) -> (B, heads, M, D) slot means."""
        return self.match.merge(t, mode="mean")

    def unmerge(self, y: Tensor) -> Tensor:
        return self.match.unmerge(y)


class GlobalMergePlan:
    """Destination/protected sets and r for one scene layout; called with a block's attention
    input (B, N, C) it matches tokens with ``models.merging.match_tokens`` and returns that
    block's ``TokenMatching``."""

    def __init__(self, dst: Tensor, protected: Tensor, r: int, proportional: bool) -> None:
        self.num_tokens = dst.numel()
        self.dst, self.protected = dst, protected
        self.src_idx = (~dst).nonzero().squeeze(1)
        self.dst_idx = dst.nonzero().squeeze(1)
        self.src_protected = protected[self.src_idx]
        self.dst_protected = protected[self.dst_idx]
        mergeable = self.src_idx.numel() - int(self.src_protected.sum())
        if self.dst_idx.numel() == 0 or bool(self.dst_protected.all()):
            mergeable = 0
        self.r = max(0, min(r, mergeable))
        self.proportional = proportional

    @property
    def merged_tokens(self) -> int:
        """Tokens attention runs on after merging."""
        return self.num_tokens - self.r

    def __call__(self, metric: Tensor) -> TokenMatching:
        if metric.dim() != 3 or metric.shape[1] != self.num_tokens:
            raise ValueError(f"merge plan is for {self.num_tokens} tokens, got shape {tuple(metric.shape)}")
        match = match_tokens(metric, self.r, protected=self.protected, dst=self.dst)
        return TokenMatching(match, self.proportional)


def plan_global_merge(
    cfg: MergeConfig, *, views: int, grid_hw: tuple[int, int], num_special: int, device: torch.device
) -> GlobalMergePlan | None:
    """The merge plan for S views of a grid_hw patch grid, or None when nothing would merge."""
    if not cfg.enabled or views < 2 or cfg.ratio <= 0:
        return None
    tokens_per_frame = num_special + grid_hw[0] * grid_hw[1]
    generator = torch.Generator().manual_seed(cfg.seed)
    dst = frame_dst_mask(
        views, tokens_per_frame, num_special, grid_hw, region=cfg.region, generator=generator, device=device
    )
    protected = protected_tokens(dst.numel(), cfg.protect_ratio, device)
    plan = GlobalMergePlan(dst, protected, int(cfg.ratio * dst.numel()), cfg.proportional_attention)
    return plan if plan.r > 0 else None
