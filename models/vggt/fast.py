"""FastVGGT: token merging inside VGGT's global attention (merge -> attend -> unmerge).

Global attention over S views costs O((S*P)^2); neighbouring patches and the same surface seen
from several views give near-identical tokens, so most of them can share one attention slot.
Per forward pass a ``GlobalMergePlan`` fixes, from the scene layout alone:

- destinations: every token of view 0 (the reference frame), every view's camera and register
  tokens, and one seeded random patch per ``region x region`` cell of every other view
  (``frame_dst_mask``, aligned or FastVGGT's sheared layout);
- protected tokens: an evenly spaced ``protect_ratio`` of all tokens (FastVGGT's rule), never
  merged away; "removed" from the matching, or "duplicated" as FastVGGT does (they still receive
  merges and also attend as an unmerged copy of themselves);
- r = ``ratio`` * tokens to remove (capped by the mergeable sources).

Inside each merging global block the plan scores every source token against its candidate
destinations (cosine similarity of the block's attention input: all destinations, or only
view 0's and its own view's), merges the r best-scoring sources into their best destination,
and the attention merges q, k and v by plain means (after RoPE, so each token carries its own
position into the merge), attends with an optional log(size) bias, projects, and copies each
slot's result back to all the tokens it stands for. With ``rematch_every`` = k a matching is
reused by the next k - 1 merging blocks.

The preset ``reference`` reproduces FastVGGT (mystorm16/FastVGGT) as its code computes for one
scene, with float32 scores; ``similarity=bfloat16`` adds its bf16 score rounding. Departures that
are not options: any batch size (FastVGGT applies item 0's matching to every item; here every
scene matches on its own), any patch grid and special-token count (FastVGGT asserts 37x28 and 5),
the CPU generator for the destination draws (FastVGGT draws on the tokens' device, so a GPU run
of it draws other destinations), and one destination set per forward pass (FastVGGT reseeds its
generator in every block, which gives the same set).
"""

from __future__ import annotations

import math

import torch
from tomeray.models.errors import ConfigError, InputError
from tomeray.models.merging import (
    TokenMatch,
    attention_bias,
    best_destinations,
    best_destinations_grouped,
    select_merges,
    unit,
)
from tomeray.models.vggt.config import MergeConfig
from torch import Tensor
from torch.profiler import record_function


def validate_merge_config(cfg: MergeConfig, depth: int) -> MergeConfig:
    """The resolved config (preset filled in), or ConfigError naming the bad key."""
    cfg = cfg.resolved()
    if not 0.0 <= cfg.ratio <= 1.0:
        raise ConfigError(f"merge.ratio must be in [0, 1]; got {cfg.ratio}")
    if not 0.0 <= cfg.protect_ratio < 1.0:
        raise ConfigError(f"merge.protect_ratio must be in [0, 1); got {cfg.protect_ratio}")
    if cfg.region < 1:
        raise ConfigError(f"merge.region must be >= 1; got {cfg.region}")
    if cfg.rematch_every < 1:
        raise ConfigError(f"merge.rematch_every must be >= 1; got {cfg.rematch_every}")
    if not 0 <= cfg.start_block < depth:
        raise ConfigError(f"merge.start_block must be in [0, {depth}) for this arch; got {cfg.start_block}")
    return cfg


REGION_LAYOUTS = ("aligned", "reference")


def frame_dst_mask(
    num_frames: int,
    tokens_per_frame: int,
    num_special: int,
    grid_hw: tuple[int, int],
    *,
    region: int = 2,
    layout: str = "aligned",
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Destination set for merging over several frames' tokens laid out frame after frame
    (each frame: ``num_special`` special tokens, then an H x W patch grid):

    - every token of frame 0 (the reference frame),
    - every frame's special tokens (camera, register),
    - in every other frame, one patch per ``region x region`` cell, at a random position inside the
      cell drawn from ``generator`` (so a seed fixes it; one draw per cell, frame by frame, row by row).

    ``layout="aligned"``: the cells tile the real patch grid, partial cells at the border count too
    (a draw falling outside one takes the cell's first patch). ``layout="reference"``: FastVGGT's
    layout: only the floor(H/region) x floor(W/region) whole cells are drawn, on a virtual grid of
    W' = region * floor(W/region) columns flattened row by row onto the first patches of the frame;
    when W' < W the cells are sheared (each virtual row starts further left) and the last patches
    of every frame are never destinations.
    Returns a bool mask of shape (num_frames * tokens_per_frame,).
    """
    h, w = grid_hw
    if num_special + h * w != tokens_per_frame:
        raise InputError(
            f"tokens_per_frame={tokens_per_frame} != num_special={num_special} + grid {h}x{w}"
        )
    if region < 1:
        raise InputError(f"region must be >= 1; got {region}")
    if layout not in REGION_LAYOUTS:
        raise InputError(f"layout must be one of {REGION_LAYOUTS}; got {layout!r}")
    mask = torch.zeros(num_frames, tokens_per_frame, dtype=torch.bool)
    mask[0] = True
    mask[:, :num_special] = True
    if num_frames > 1:
        if layout == "reference":
            cells_h, cells_w = h // region, w // region
        else:
            cells_h, cells_w = math.ceil(h / region), math.ceil(w / region)
        off = torch.randint(0, region * region, (num_frames - 1, cells_h, cells_w), generator=generator)
        rows = torch.arange(cells_h)[:, None] * region + off // region
        cols = torch.arange(cells_w)[None, :] * region + off % region
        if layout == "reference":
            flat = rows * (cells_w * region) + cols  # row length W', not W
        else:
            inside = (rows < h) & (cols < w)
            # a draw that fell outside a partial border cell snaps to the cell's first patch
            rows = torch.where(inside, rows, torch.arange(cells_h)[:, None] * region)
            cols = torch.where(inside, cols, torch.arange(cells_w)[None, :] * region)
            flat = rows * w + cols
        patches = mask[1:, num_special:]
        patches.scatter_(1, flat.flatten(1), True)
    return mask.flatten().to(device)


def protected_tokens(num_tokens: int, fraction: float, device: torch.device | None = None) -> Tensor:
    """FastVGGT's protected set: int(N * fraction) tokens, every (N // count)-th from token 0."""
    mask = torch.zeros(num_tokens, dtype=torch.bool, device=device)
    count = int(num_tokens * fraction)
    if count > 0:
        step = max(1, num_tokens // count)
        mask[torch.arange(0, num_tokens, step, device=device)[:count]] = True
    return mask


def reference_dst_order(dst: Tensor) -> Tensor:
    """The destinations in the order FastVGGT's similarity sees them: its (unstable) argsort of a
    -1 (destination) / 0 (source) buffer. Only bf16 score ties depend on it."""
    return (-dst.long()).reshape(1, -1, 1).argsort(dim=1)[0, : int(dst.sum()), 0]


class TokenMatching:
    """One block's merge of N tokens onto M slots in the layout attention uses: (B, N, C) tokens
    (q, k and v packed on channels) -> (B, M, C) slot means; ``attn_bias`` (B, 1, 1, M) =
    log(slot size) when proportional attention is on; ``unmerge`` maps (B, M, C) back to N tokens."""

    def __init__(self, match: TokenMatch, proportional: bool, dst_idx: Tensor) -> None:
        self.match = match
        self.assign = match.slot  # (B, N): each token's merge slot
        self.sizes = match.counts[..., None]
        self.attn_bias = attention_bias(self.sizes) if proportional else None
        self.dst_idx = dst_idx

    @property
    def num_slots(self) -> int:
        return self.match.num_slots

    def merge(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (B, M, C) slot means (and the unmerged copies of protected destinations)."""
        return self.match.merge(x, mode="mean")

    def unmerge(self, y: Tensor) -> Tensor:
        return self.match.unmerge(y)

    def merged_into(self) -> Tensor:
        """(B, N): the destination token each merged source went into; -1 for every other token."""
        b, n = self.assign.shape
        n_dst = self.dst_idx.numel()
        owner = torch.full((b, self.match.num_merged), -1, dtype=torch.long, device=self.assign.device)
        owner[:, self.match.num_merged - n_dst :] = self.dst_idx
        into = owner.gather(1, self.assign)
        into[:, self.dst_idx] = -1
        return into


class GlobalMergePlan:
    """Destination/protected sets and r for one scene layout; called with a block's attention
    input (B, N, C) it scores, selects and returns that block's ``TokenMatching``.

    ``views`` is needed for ``candidates="local"`` (sources grouped by view)."""

    def __init__(
        self,
        dst: Tensor,
        protected: Tensor,
        r: int,
        proportional: bool,
        *,
        protect: str = "removed",
        similarity: str = "float32",
        candidates: str = "all",
        views: int | None = None,
        rematch_every: int = 1,
    ) -> None:
        self.num_tokens = dst.numel()
        self.dst, self.protected = dst, protected
        self.proportional, self.rematch_every = proportional, rematch_every
        self.score_dtype = torch.bfloat16 if similarity == "bfloat16" else None
        self.src_idx = (~dst).nonzero().squeeze(1)
        self.dst_idx = dst.nonzero().squeeze(1)
        self.src_protected = protected[self.src_idx]
        removed = protected if protect == "removed" else torch.zeros_like(protected)
        self.dst_protected = removed[self.dst_idx]  # destinations never chosen
        self.copies = self.dst_idx[protected[self.dst_idx]] if protect == "duplicated" else None
        mergeable = self.src_idx.numel() - int(self.src_protected.sum())
        if self.dst_idx.numel() == 0 or bool(self.dst_protected.all()):
            mergeable = 0
        self.r = max(0, min(r, mergeable))
        self.candidates = candidates
        # Score columns: the allowed destinations, in FastVGGT's order for bf16 (its ties).
        allowed = dst & ~removed
        order = reference_dst_order(dst) if self.score_dtype is not None else self.dst_idx
        self.columns_token = order[allowed[order]]
        position = torch.full((self.num_tokens,), -1, dtype=torch.long, device=dst.device)
        position[self.dst_idx] = torch.arange(self.dst_idx.numel(), device=dst.device)
        self.position = position  # token -> its position in dst_idx
        self.columns_position = position[self.columns_token]
        if candidates == "local":
            self._group_by_view(views, allowed)

    def _group_by_view(self, views: int | None, allowed: Tensor) -> None:
        """Sources of view v >= 1 score view 0's tokens (shared) and view v's destinations."""
        n = self.num_tokens
        if not views or n % views or bool((~self.dst[: n // views]).any()):
            raise ValueError("candidates='local' needs the views and every token of view 0 as destinations")
        per_view = n // views
        view_of = torch.arange(n, device=self.dst.device) // per_view
        src_view, dst_view = view_of[self.src_idx], view_of[self.dst_idx]
        counts_src = torch.bincount(src_view, minlength=views)[1:]
        counts_dst = torch.bincount(dst_view, minlength=views)[1:]
        if bool((counts_src != counts_src[0]).any()) or bool((counts_dst != counts_dst[0]).any()):
            raise ValueError("candidates='local' needs the same number of sources and destinations per view")
        g, k, d = views - 1, int(counts_src[0]), int(counts_dst[0])
        self.groups = (g, k)  # sources in view order: group j holds view j + 1's k sources
        self.shared_token = self.dst_idx[dst_view == 0]
        self.own_token = self.dst_idx[dst_view > 0].view(g, d)
        self.shared_excluded = ~allowed[self.shared_token]
        self.own_excluded = ~allowed[self.own_token]
        # local choice (shared column, or Ds + own column) -> position in dst_idx, per group
        lookup = torch.cat((self.shared_token.expand(g, -1), self.own_token), dim=1)
        self.local_position = self.position[lookup]  # (G, Ds + d)

    @property
    def merged_tokens(self) -> int:
        """Tokens attention runs on after merging."""
        return self.num_tokens - self.r + (0 if self.copies is None else self.copies.numel())

    def merger(self):
        """The merger for one forward pass: matches every ``rematch_every`` merging blocks."""
        return self if self.rematch_every == 1 else _Reusing(self)

    def __call__(self, metric: Tensor) -> TokenMatching:
        if metric.dim() != 3 or metric.shape[1] != self.num_tokens:
            raise ValueError(f"merge plan is for {self.num_tokens} tokens, got shape {tuple(metric.shape)}")
        b = metric.shape[0]
        with torch.no_grad():
            with record_function("merge.similarity"):
                m = unit(metric)
                src_excluded = self.src_protected.expand(b, -1)
                if self.candidates == "local":
                    g, k = self.groups
                    best, local = best_destinations_grouped(
                        m[:, self.src_idx].view(b, g, k, -1),
                        m[:, self.shared_token],
                        m[:, self.own_token],
                        shared_excluded=self.shared_excluded,
                        own_excluded=self.own_excluded,
                        score_dtype=self.score_dtype,
                    )
                    which = self.local_position.expand(b, -1, -1).gather(2, local).view(b, g * k)
                    best = best.view(b, g * k).masked_fill(src_excluded, float("-inf"))
                else:
                    best, column = best_destinations(
                        m[:, self.src_idx],
                        m[:, self.columns_token],
                        src_excluded=src_excluded,
                        score_dtype=self.score_dtype,
                    )
                    which = self.columns_position[column]
            with record_function("merge.select"):
                match = select_merges(
                    best, which, self.r, self.src_idx, self.dst_idx, self.num_tokens, copies=self.copies
                )
                return TokenMatching(match, self.proportional, self.dst_idx)


class _Reusing:
    """A plan's merger for one forward pass that reuses each matching for ``rematch_every`` blocks."""

    def __init__(self, plan: GlobalMergePlan) -> None:
        self.plan, self.calls, self.current = plan, 0, None

    def __call__(self, metric: Tensor) -> TokenMatching:
        if self.calls % self.plan.rematch_every == 0:
            self.current = self.plan(metric)
        self.calls += 1
        return self.current


def plan_global_merge(
    cfg: MergeConfig, *, views: int, grid_hw: tuple[int, int], num_special: int, device: torch.device
) -> GlobalMergePlan | None:
    """The merge plan for S views of a grid_hw patch grid, or None when nothing would merge."""
    cfg = cfg.resolved()
    if not cfg.enabled or views < 2 or cfg.ratio <= 0:
        return None
    tokens_per_frame = num_special + grid_hw[0] * grid_hw[1]
    generator = torch.Generator().manual_seed(cfg.seed)  # CPU: the same draws on every device
    dst = frame_dst_mask(
        views, tokens_per_frame, num_special, grid_hw, region=cfg.region, layout=cfg.region_layout,
        generator=generator, device=device,
    )
    protected = protected_tokens(dst.numel(), cfg.protect_ratio, device)
    plan = GlobalMergePlan(
        dst,
        protected,
        int(cfg.ratio * dst.numel()),
        cfg.proportional_attention,
        protect=cfg.protected,
        similarity=cfg.similarity,
        candidates=cfg.candidates,
        views=views,
        rematch_every=cfg.rematch_every,
    )
    return plan if plan.r > 0 else None
