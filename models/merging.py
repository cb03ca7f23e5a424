"""Token merging: bipartite soft matching (ToMe) as a few pure functions.

The matching is computed once from a similarity metric and returned as two closures:
``merge`` folds r source tokens into their most similar destination tokens and ``unmerge``
spreads merged values back to every original position. TempMe (merging inside frames and
across clips) and FastVGGT (merge -> attend -> unmerge in global attention) both build on it.

Conventions
- Tokens are (B, N, C) (or (B, ..., N, C) when merged). The same partition applies to every batch
  item; the matching itself is per item, so batch items never influence each other.
- Destinations: by default ToMe's alternate split (odd positions), or an explicit bool mask.
- Protected tokens (CLS, camera, register) are neither merged away nor merged into; they come out
  bit-for-bit unchanged.
- Output order: surviving source tokens in their original order, then destination tokens in their
  original order. This is ToMe's order with a protected class token, so repeated merging with the
  alternate split sees the same even/odd partition as the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from models.errors import InputError

__all__ = [
    "Merge",
    "Unmerge",
    "attention_bias",
    "bipartite_soft_matching",
    "frame_dst_mask",
    "merge_wavg",
    "token_mask",
]

Merge = Callable[..., torch.Tensor]
Unmerge = Callable[[torch.Tensor], torch.Tensor]


def _identity_merge(x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
    return x


def _identity_unmerge(x: torch.Tensor) -> torch.Tensor:
    return x


def token_mask(
    spec: torch.Tensor | Sequence[int] | None, n: int, *, name: str, device: torch.device | None = None
) -> torch.Tensor | None:
    """A bool mask of shape (N,) or (B, N) from a mask or a list of token indices (negative allowed)."""
    if spec is None:
        return None
    if isinstance(spec, torch.Tensor) and spec.dtype == torch.bool:
        if spec.shape[-1] != n or spec.dim() not in (1, 2):
            raise InputError(f"{name} mask has shape {tuple(spec.shape)}; expected ({n},) or (B, {n})")
        return spec.to(device) if device is not None else spec
    idx = torch.as_tensor(spec, dtype=torch.long).flatten()
    if idx.numel() and (idx.min() < -n or idx.max() >= n):
        raise InputError(f"{name} indices {idx.tolist()} out of range for {n} tokens")
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[idx % n if idx.numel() else idx] = True
    return mask


def bipartite_soft_matching(
    metric: torch.Tensor,
    r: int,
    *,
    protected: torch.Tensor | Sequence[int] | None = None,
    dst: torch.Tensor | Sequence[int] | None = None,
) -> tuple[Merge, Unmerge]:
    """Match r source tokens to their most similar destination tokens (cosine similarity of ``metric``).

    metric:    (B, N, C) features that decide similarity (e.g. attention keys).
    r:         tokens to remove per batch item; clamped to the number of mergeable sources.
    protected: bool mask (N,) / (B, N) or indices of tokens never merged away nor merged into.
    dst:       bool mask (N,) or indices of the destination set; default: odd positions (ToMe).

    Returns ``merge(x, mode="sum"|"mean"|"amax")`` mapping (B, ..., N, C') -> (B, ..., N - r, C') and
    ``unmerge(y)`` mapping (B, ..., N - r, C') -> (B, ..., N, C'), where every source token takes the
    value of the destination it was merged into. Dims between batch and tokens (e.g. attention
    heads) share the matching, so q, k and v can be merged in (B, heads, N, D) layout.
    """
    if metric.dim() != 3:
        raise InputError(f"metric must be (B, N, C); got shape {tuple(metric.shape)}")
    b, n, _ = metric.shape
    if r < 0:
        raise InputError(f"r must be >= 0; got {r}")
    if r == 0:
        return _identity_merge, _identity_unmerge
    if n < 2:
        raise InputError(f"merging needs at least 2 tokens; metric has shape {tuple(metric.shape)}")
    device = metric.device

    dst_mask = token_mask(dst, n, name="dst", device=device)
    if dst_mask is None:
        dst_mask = torch.zeros(n, dtype=torch.bool, device=device)
        dst_mask[1::2] = True
    if dst_mask.dim() != 1:
        raise InputError(f"dst mask must be shared by the batch, shape ({n},); got {tuple(dst_mask.shape)}")
    src_idx = (~dst_mask).nonzero().squeeze(1)
    dst_idx = dst_mask.nonzero().squeeze(1)
    n_src, n_dst = src_idx.numel(), dst_idx.numel()

    prot = token_mask(protected, n, name="protected", device=device)
    if prot is not None:
        prot = prot.expand(b, n)
        src_protected, dst_protected = prot[:, src_idx], prot[:, dst_idx]
        mergeable = n_src - int(src_protected.sum(dim=1).max())
        if n_dst == 0 or bool(dst_protected.all(dim=1).any()):
            mergeable = 0
    else:
        src_protected = dst_protected = None
        mergeable = n_src if n_dst > 0 else 0
    r = min(r, mergeable)
    if r <= 0:
        return _identity_merge, _identity_unmerge

    with torch.no_grad():
        m = metric.float() if metric.dtype in (torch.float16, torch.bfloat16) else metric
        m = m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        node_max, node_idx = _best_destinations(m[:, src_idx], m[:, dst_idx], src_protected, dst_protected)
        order = node_max.argsort(dim=-1, descending=True)
        merged = order[:, :r]  # positions within the source set
        kept = order[:, r:].sort(dim=-1).values  # survivors in original order
        target = node_idx.gather(1, merged)  # destination (within the dst set) of each merged source

    n_kept = n_src - r

    def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Per-item token index (B, k) broadcast over the dims between batch and tokens."""
        view = idx.view(b, *([1] * (x.dim() - 3)), idx.shape[1], 1)
        return view.expand(*x.shape[:-2], idx.shape[1], x.shape[-1])

    def merge(x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        if x.dim() < 3 or x.shape[0] != b or x.shape[-2] != n:
            raise InputError(f"merge expects tokens (B={b}, ..., N={n}, C); got shape {tuple(x.shape)}")
        src, dst_tokens = x.index_select(-2, src_idx), x.index_select(-2, dst_idx)
        survivors = src.gather(-2, take(x, kept))
        moving = src.gather(-2, take(x, merged))
        dst_tokens = dst_tokens.scatter_reduce(-2, take(x, target), moving, reduce=mode)
        return torch.cat([survivors, dst_tokens], dim=-2)

    def unmerge(y: torch.Tensor) -> torch.Tensor:
        if y.dim() < 3 or y.shape[0] != b or y.shape[-2] != n - r:
            raise InputError(f"unmerge expects tokens (B={b}, ..., N={n - r}, C); got shape {tuple(y.shape)}")
        survivors, dst_tokens = y[..., :n_kept, :], y[..., n_kept:, :]
        moved = dst_tokens.gather(-2, take(y, target))
        src = y.new_empty(*y.shape[:-2], n_src, y.shape[-1])
        src.scatter_(-2, take(y, kept), survivors)
        src.scatter_(-2, take(y, merged), moved)
        out = y.new_empty(*y.shape[:-2], n, y.shape[-1])
        out[..., src_idx, :] = src
        out[..., dst_idx, :] = dst_tokens
        return out

    return merge, unmerge


# Elements of one chunk of the (sources x destinations) score matrix: bounds the matching's memory
# for long sequences (FastVGGT's global attention sees S views x P patches) without changing results.
SCORE_CHUNK_ELEMENTS = 1 << 24


def _best_destinations(
    src: torch.Tensor,
    dst: torch.Tensor,
    src_protected: torch.Tensor | None,
    dst_protected: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per source token: the highest similarity to an unprotected destination, and which one.
    Protected sources score -inf so they are merged last (never, after clamping r)."""
    b, n_src, _ = src.shape
    dst_t = dst.transpose(1, 2)
    rows = max(1, SCORE_CHUNK_ELEMENTS // max(1, b * dst.shape[1]))
    best = src.new_empty(b, n_src)
    which = torch.empty(b, n_src, dtype=torch.long, device=src.device)
    for start in range(0, n_src, rows):
        scores = src[:, start : start + rows] @ dst_t
        if dst_protected is not None:
            scores = scores.masked_fill(dst_protected[:, None, :], -math.inf)
        best[:, start : start + rows], which[:, start : start + rows] = scores.max(dim=-1)
    if src_protected is not None:
        best = best.masked_fill(src_protected, -math.inf)
    return best, which


def merge_wavg(
    merge: Merge, x: torch.Tensor, size: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge. ``size`` (B, N, 1) counts the original tokens each token stands
    for (ones when None); returns the merged tokens and their new sizes (which sum to the same total)."""
    if size is None:
        size = torch.ones_like(x[..., :1])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


def attention_bias(size: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """Proportional attention: log(size) added to every query's logits for each key, shaped (B, 1, 1, N)
    to broadcast over heads and queries as ``attn_mask`` of ``F.scaled_dot_product_attention``.

    A key standing for s identical tokens then weighs exactly as much as those s tokens would.
    """
    if size is None:
        return None
    bias = size[..., 0].log()[:, None, None, :]
    return bias.to(dtype) if dtype is not None else bias


def frame_dst_mask(
    num_frames: int,
    tokens_per_frame: int,
    num_special: int,
    grid_hw: tuple[int, int],
    *,
    region: int = 2,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Destination set for merging over several frames' tokens laid out frame after frame
    (each frame: ``num_special`` special tokens, then an H x W patch grid):

    - every token of frame 0 (the reference frame),
    - every frame's special tokens (camera, register),
    - in every other frame, one patch per ``region x region`` cell, at a random position inside the
      cell drawn from ``generator`` (so a seed fixes it); partial cells at the border count too.
    Returns a bool mask of shape (num_frames * tokens_per_frame,).
    """
    h, w = grid_hw
    if num_special + h * w != tokens_per_frame:
        raise InputError(
            f"tokens_per_frame={tokens_per_frame} != num_special={num_special} + grid {h}x{w}"
        )
    if region < 1:
        raise InputError(f"region must be >= 1; got {region}")
    mask = torch.zeros(num_frames, tokens_per_frame, dtype=torch.bool)
    mask[0] = True
    mask[:, :num_special] = True
    if num_frames > 1:
        cells_h, cells_w = math.ceil(h / region), math.ceil(w / region)
        off = torch.randint(0, region * region, (num_frames - 1, cells_h, cells_w), generator=generator)
        rows = torch.arange(cells_h)[:, None] * region + off // region
        cols = torch.arange(cells_w)[None, :] * region + off % region
        inside = (rows < h) & (cols < w)
        # a draw that fell outside a partial border cell snaps to the cell's first patch
        rows = torch.where(inside, rows, torch.arange(cells_h)[:, None] * region)
        cols = torch.where(inside, cols, torch.arange(cells_w)[None, :] * region)
        flat = (rows * w + cols).flatten(1)  # (F-1, cells)
        patches = mask[1:, num_special:]
        patches.scatter_(1, flat, True)
    return mask.flatten().to(device)
