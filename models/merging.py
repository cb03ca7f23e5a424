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
from tomeray.models.errors import InputError

__all__ = [
    "Merge",
    "TokenMatch",
    "Unmerge",
    "attention_bias",
    "bipartite_soft_matching",
    "frame_dst_mask",
    "match_tokens",
    "merge_wavg",
    "token_mask",
]

Merge = Callable[..., torch.Tensor]
Unmerge = Callable[[torch.Tensor], torch.Tensor]


class TokenMatch:
    """The outcome of a matching: ``slot[b, i]`` is the output position of token i of item b.

    Survivors occupy the first slots, destinations the last ones; a merged source shares its
    destination's slot. Dims between batch and tokens (e.g. attention heads) share the matching.
    """

    def __init__(self, slot: torch.Tensor, num_slots: int) -> None:
        self.slot = slot
        self.num_slots = num_slots
        b, n = slot.shape
        self.identity = num_slots == n
        self.counts = torch.ones(b, n, device=slot.device)  # tokens per slot
        if not self.identity:
            self.counts = self.counts.new_zeros(b, num_slots).scatter_add_(1, slot, self.counts)

    def _index(self, x: torch.Tensor) -> torch.Tensor:
        b, n = self.slot.shape
        return self.slot.view(b, *([1] * (x.dim() - 3)), n, 1).expand(*x.shape[:-2], n, x.shape[-1])

    def merge(self, x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        """(B, ..., N, C) -> (B, ..., num_slots, C): the sum, mean or max of every slot's tokens."""
        b, n = self.slot.shape
        if x.dim() < 3 or x.shape[0] != b or x.shape[-2] != n:
            raise InputError(f"merge expects tokens (B={b}, ..., N={n}, C); got shape {tuple(x.shape)}")
        if self.identity:
            return x
        out = x.new_zeros(*x.shape[:-2], self.num_slots, x.shape[-1])
        if mode not in ("sum", "mean"):
            return out.scatter_reduce(-2, self._index(x), x, reduce=mode, include_self=False)
        out.scatter_add_(-2, self._index(x), x)
        if mode == "mean":
            out = out / self.counts.view(b, *([1] * (x.dim() - 3)), self.num_slots, 1).to(x.dtype)
        return out

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, ..., num_slots, C) -> (B, ..., N, C): every token takes its slot's value."""
        b, n = self.slot.shape
        if y.dim() < 3 or y.shape[0] != b or y.shape[-2] != self.num_slots:
            raise InputError(
                f"unmerge expects tokens (B={b}, ..., N={self.num_slots}, C); got shape {tuple(y.shape)}"
            )
        return y if self.identity else y.gather(-2, self._index(y))


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
    """ToMe's interface to :func:`match_tokens`: the ``merge`` and ``unmerge`` closures."""
    match = match_tokens(metric, r, protected=protected, dst=dst)
    return match.merge, match.unmerge


def match_tokens(
    metric: torch.Tensor,
    r: int,
    *,
    protected: torch.Tensor | Sequence[int] | None = None,
    dst: torch.Tensor | Sequence[int] | None = None,
) -> TokenMatch:
    """Match r source tokens to their most similar destination tokens (cosine similarity of ``metric``).

    metric:    (B, N, C) features that decide similarity (e.g. attention keys).
    r:         tokens to remove per batch item; clamped to the number of mergeable sources.
    protected: bool mask (N,) / (B, N) or indices of tokens never merged away nor merged into.
    dst:       bool mask (N,) or indices of the destination set; default: odd positions (ToMe).

    Returns a :class:`TokenMatch` whose ``merge(x, mode="sum"|"mean"|"amax")`` maps
    (B, ..., N, C') -> (B, ..., N - r, C') and whose ``unmerge(y)`` maps (B, ..., N - r, C') ->
    (B, ..., N, C'), every source token taking the value of the destination it was merged into.
    Dims between batch and tokens (e.g. attention heads) share the matching, so q, k and v can be
    merged in (B, heads, N, D) layout.
    """
    if metric.dim() != 3:
        raise InputError(f"metric must be (B, N, C); got shape {tuple(metric.shape)}")
    b, n, _ = metric.shape
    if r < 0:
        raise InputError(f"r must be >= 0; got {r}")
    identity = TokenMatch(torch.arange(n, device=metric.device).expand(b, n), n)
    if r == 0:
        return identity
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
        return identity

    with torch.no_grad():
        m = metric.float() if metric.dtype in (torch.float16, torch.bfloat16) else metric
        m = m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        node_max, node_idx = _best_destinations(m[:, src_idx], m[:, dst_idx], src_protected, dst_protected)
        order = node_max.argsort(dim=-1, descending=True)
        merged = order[:, :r]  # positions within the source set
        kept = order[:, r:].sort(dim=-1).values  # survivors in original order
        target = node_idx.gather(1, merged)  # destination (within the dst set) of each merged source

        # Every token's output slot: survivors 0..n_kept-1, destinations after them.
        n_kept = n_src - r
        src_slot = torch.empty(b, n_src, dtype=torch.long, device=device)
        src_slot.scatter_(1, kept, torch.arange(n_kept, device=device).expand(b, n_kept))
        src_slot.scatter_(1, merged, n_kept + target)
        slot = torch.empty(b, n, dtype=torch.long, device=device)
        slot[:, src_idx] = src_slot
        slot[:, dst_idx] = n_kept + torch.arange(n_dst, device=device)
    return TokenMatch(slot, n - r)


# Elements of one chunk of the (sources x destinations) score matrix: bounds the matching's memory
# for long sequences (FastVGGT's global attention sees S views x P patches) without changing results.
# On CPU 4 MiB of float32 scores stay in cache (measured faster than larger chunks); accelerators
# want few, large launches.
SCORE_CHUNK_ELEMENTS = {"cpu": 1 << 20, "other": 1 << 28}


def score_chunk_elements(device_type: str) -> int:
    return SCORE_CHUNK_ELEMENTS.get(device_type, SCORE_CHUNK_ELEMENTS["other"])


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
    rows = max(1, score_chunk_elements(src.device.type) // max(1, b * dst.shape[1]))
    best = src.new_empty(b, n_src)
    which = torch.empty(b, n_src, dtype=torch.long, device=src.device)
    for start in range(0, n_src, rows):
        scores = src[:, start : start + rows] @ dst_t
        if dst_protected is not None:
            scores.masked_fill_(dst_protected[:, None, :], -math.inf)
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
