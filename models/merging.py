"""Token merging: bipartite soft matching (ToMe) as a few pure functions.

The matching is computed once from a similarity metric and returned as a :class:`TokenMatch`
whose ``merge`` folds source tokens into their most similar destination tokens and whose
``unmerge`` spreads merged values back to every original position. TempMe (merging inside frames
and across clips) and FastVGGT (merge -> attend -> unmerge in global attention, whose destination
sets ``models.vggt.fast`` chooses) both build on it.

A matching is three steps, each usable alone: unit-normalise the metric (:func:`unit`), score
every source against its candidate destinations (:func:`best_destinations`, or
:func:`best_destinations_grouped` when each source group only looks at shared destinations and
its own), and merge the r best-scoring sources (:func:`select_merges`). :func:`match_tokens`
chains them for the common case.

Conventions
- Tokens are (B, N, C) (or (B, ..., N, C) when merged). The same partition applies to every batch
  item; the matching itself is per item, so batch items never influence each other.
- Destinations: by default ToMe's alternate split (odd positions), or an explicit bool mask.
- Protected tokens (CLS, camera, register) are never merged away. With ``protect="removed"`` they
  are not merged into either and come out bit-for-bit unchanged; with ``protect="duplicated"``
  (FastVGGT's reference) a protected destination still receives sources and also keeps an
  unmerged copy of itself in an extra slot, which is what it reads back on unmerge.
- Output order: surviving source tokens in their original order, then destination tokens in their
  original order, then the unmerged copies. This is ToMe's order with a protected class token, so
  repeated merging with the alternate split sees the same even/odd partition as the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tomeray.models.errors import InputError

__all__ = [
    "PROTECT_MODES",
    "Merge",
    "TokenMatch",
    "Unmerge",
    "attention_bias",
    "best_destinations",
    "best_destinations_grouped",
    "bipartite_soft_matching",
    "match_tokens",
    "merge_wavg",
    "row_max",
    "select_merges",
    "token_mask",
    "unit",
]

Merge = Callable[..., torch.Tensor]
Unmerge = Callable[[torch.Tensor], torch.Tensor]
PROTECT_MODES = ("removed", "duplicated")


class TokenMatch:
    """The outcome of a matching: ``slot[b, i]`` is the merge slot of token i of item b.

    Survivors occupy the first slots, destinations the next ones; a merged source shares its
    destination's slot. ``copies`` (D,) are tokens that also keep an unmerged copy of themselves
    in the last D slots and read that copy back on unmerge. Dims between batch and tokens (e.g.
    attention heads) share the matching.
    """

    def __init__(self, slot: torch.Tensor, num_merged: int, copies: torch.Tensor | None = None) -> None:
        b, n = slot.shape
        self.slot = slot
        self.copies = copies if copies is not None and copies.numel() else None
        n_copies = 0 if self.copies is None else self.copies.numel()
        self.num_merged = num_merged
        self.num_slots = num_merged + n_copies
        self.identity = num_merged == n and n_copies == 0
        ones = torch.ones(b, n, device=slot.device)
        merged_counts = ones if num_merged == n else ones.new_zeros(b, num_merged).scatter_add_(1, slot, ones)
        self.counts = torch.cat((merged_counts, ones.new_ones(b, n_copies)), dim=1)  # tokens per slot
        self.read_slot = slot
        if self.copies is not None:
            self.read_slot = slot.clone()
            self.read_slot[:, self.copies] = num_merged + torch.arange(n_copies, device=slot.device)
        # Row indices into (B * slots) for the token-major (B, N, C) fast paths.
        offsets = torch.arange(b, device=slot.device)[:, None]
        self._merge_rows = (slot + offsets * num_merged).flatten()
        self._read_rows = (self.read_slot + offsets * self.num_slots).flatten()

    def _index(self, x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        b, n = slot.shape
        return slot.view(b, *([1] * (x.dim() - 3)), n, 1).expand(*x.shape[:-2], n, x.shape[-1])

    def merge(self, x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        """(B, ..., N, C) -> (B, ..., num_slots, C): the sum, mean or max of every slot's tokens,
        then the unmerged copies."""
        b, n = self.slot.shape
        if x.dim() < 3 or x.shape[0] != b or x.shape[-2] != n:
            raise InputError(f"merge expects tokens (B={b}, ..., N={n}, C); got shape {tuple(x.shape)}")
        if self.identity:
            return x
        c = x.shape[-1]
        if x.dim() == 3 and mode in ("sum", "mean"):  # token-major: one row add per token
            out = x.new_zeros(b * self.num_merged, c).index_add_(0, self._merge_rows, x.reshape(b * n, c))
            out = out.view(b, self.num_merged, c)
        else:
            out = x.new_zeros(*x.shape[:-2], self.num_merged, c)
            index = self._index(x, self.slot)
            if mode in ("sum", "mean"):
                out.scatter_add_(-2, index, x)
            else:
                out = out.scatter_reduce(-2, index, x, reduce=mode, include_self=False)
        if mode == "mean":
            counts = self.counts[:, : self.num_merged]
            out = out / counts.view(b, *([1] * (x.dim() - 3)), self.num_merged, 1).to(x.dtype)
        if self.copies is not None:
            out = torch.cat((out, x[..., self.copies, :]), dim=-2)
        return out

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, ..., num_slots, C) -> (B, ..., N, C): every token takes its slot's value (a copied
        token its copy's)."""
        b, n = self.slot.shape
        if y.dim() < 3 or y.shape[0] != b or y.shape[-2] != self.num_slots:
            raise InputError(
                f"unmerge expects tokens (B={b}, ..., N={self.num_slots}, C); got shape {tuple(y.shape)}"
            )
        if self.identity:
            return y
        if y.dim() == 3:
            c = y.shape[-1]
            return y.reshape(b * self.num_slots, c).index_select(0, self._read_rows).view(b, n, c)
        return y.gather(-2, self._index(y, self.read_slot))


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


def unit(metric: torch.Tensor) -> torch.Tensor:
    """Unit-length token vectors (float32 for half inputs), so dot products are cosines."""
    m = metric.float() if metric.dtype in (torch.float16, torch.bfloat16) else metric
    return m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def match_tokens(
    metric: torch.Tensor,
    r: int,
    *,
    protected: torch.Tensor | Sequence[int] | None = None,
    dst: torch.Tensor | Sequence[int] | None = None,
    protect: str = "removed",
    score_dtype: torch.dtype | None = None,
) -> TokenMatch:
    """Match r source tokens to their most similar destination tokens (cosine similarity of ``metric``).

    metric:    (B, N, C) features that decide similarity (e.g. attention keys).
    r:         tokens to remove per batch item; clamped to the number of mergeable sources.
    protected: bool mask (N,) / (B, N) or indices of tokens never merged away.
    dst:       bool mask (N,) or indices of the destination set; default: odd positions (ToMe).
    protect:   "removed": protected tokens are not merged into either; "duplicated": a protected
               destination receives sources and keeps an unmerged copy (needs a (N,) mask).
    score_dtype: dtype of the score matmul (default float32; bfloat16 rounds like FastVGGT).

    Returns a :class:`TokenMatch` whose ``merge(x, mode="sum"|"mean"|"amax")`` maps
    (B, ..., N, C') -> (B, ..., N - r + copies, C') and whose ``unmerge(y)`` maps it back to
    (B, ..., N, C'), every source token taking the value of the destination it was merged into.
    Dims between batch and tokens (e.g. attention heads) share the matching, so q, k and v can be
    merged in (B, heads, N, D) layout.
    """
    if metric.dim() != 3:
        raise InputError(f"metric must be (B, N, C); got shape {tuple(metric.shape)}")
    if protect not in PROTECT_MODES:
        raise InputError(f"protect must be one of {PROTECT_MODES}; got {protect!r}")
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
    copies = None
    src_protected = dst_protected = None
    if prot is not None:
        if protect == "duplicated":
            if prot.dim() != 1:
                raise InputError(f"protect='duplicated' needs a protected mask shared by the batch, ({n},)")
            copies = dst_idx[prot[dst_idx]]
        else:
            dst_protected = prot[..., dst_idx]
        src_protected = prot.expand(b, n)[:, src_idx]
        mergeable = n_src - int(src_protected.sum(dim=1).max())
    else:
        mergeable = n_src
    if n_dst == 0 or (dst_protected is not None and bool(dst_protected.all(dim=-1).any())):
        mergeable = 0
    r = min(r, mergeable)
    if r <= 0:
        return identity

    with torch.no_grad():
        m = unit(metric)
        best, which = best_destinations(
            m[:, src_idx], m[:, dst_idx], src_excluded=src_protected, dst_excluded=dst_protected,
            score_dtype=score_dtype,
        )
        return select_merges(best, which, r, src_idx, dst_idx, n, copies=copies)


# Elements of one chunk of the (sources x destinations) score matrix: bounds the matching's memory
# for long sequences (FastVGGT's global attention sees S views x P patches) without changing results.
# On CPU 1 MiB of float32 scores stays in cache while the row maximum reads it twice (measured
# 1.4-1.7x faster than 4 MiB chunks at 7620 x 3260 scores); accelerators want few, large launches.
SCORE_CHUNK_ELEMENTS = {"cpu": 1 << 18, "other": 1 << 28}


def score_chunk_elements(device_type: str) -> int:
    return SCORE_CHUNK_ELEMENTS.get(device_type, SCORE_CHUNK_ELEMENTS["other"])


# Column block of the two-level row maximum: a vectorised max over blocks, then one block per row.
_ROW_MAX_BLOCK = 64


def row_max(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores.max(dim=-1)`` (values, first index of the maximum), computed as a block maximum
    then the winning block's argmax: the same result, 2-3x faster on CPU for wide float32 rows
    (``max`` with indices is not vectorised there, ``amax`` is)."""
    d = scores.shape[-1]
    if d < 4 * _ROW_MAX_BLOCK or scores.dtype not in (torch.float32, torch.float64):
        return scores.max(dim=-1)
    blocks = d // _ROW_MAX_BLOCK
    head = scores[..., : blocks * _ROW_MAX_BLOCK].unflatten(-1, (blocks, _ROW_MAX_BLOCK))
    best, block = head.amax(dim=-1).max(dim=-1)  # the first block holding the maximum
    winner = head.gather(-2, block[..., None, None].expand(*block.shape, 1, _ROW_MAX_BLOCK)).squeeze(-2)
    which = block * _ROW_MAX_BLOCK + winner.argmax(dim=-1)
    if blocks * _ROW_MAX_BLOCK < d:  # the ragged tail wins only when strictly larger (first index)
        tail_best, tail_which = scores[..., blocks * _ROW_MAX_BLOCK :].max(dim=-1)
        better = tail_best > best
        best = torch.where(better, tail_best, best)
        which = torch.where(better, tail_which + blocks * _ROW_MAX_BLOCK, which)
    return best, which


def best_destinations(
    src: torch.Tensor,
    dst: torch.Tensor,
    *,
    src_excluded: torch.Tensor | None = None,
    dst_excluded: torch.Tensor | None = None,
    score_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per source token: the highest score ``src @ dst.T`` over the allowed destinations, and which.

    src (B, n_src, C) and dst (B, n_dst, C), unit vectors. ``dst_excluded`` (n_dst,) or (B, n_dst):
    destinations never chosen (a shared mask drops their columns, cheaper than masking scores);
    ``src_excluded`` (B, n_src): sources scored -inf, so they rank last. Ties go to the first
    destination in ``dst``'s order. Scores are computed in chunks of source rows, in the inputs'
    dtype (autocast does not apply) or in ``score_dtype`` (operands and products rounded to it).
    """
    b, n_src, _ = src.shape
    columns = None
    if dst_excluded is not None and dst_excluded.dim() == 1:
        columns = (~dst_excluded).nonzero().squeeze(1)
        dst, dst_excluded = dst[:, columns], None
    if score_dtype is not None:
        src, dst = src.to(score_dtype), dst.to(score_dtype)
    dst_t = dst.transpose(1, 2)
    rows = max(1, score_chunk_elements(src.device.type) // max(1, b * dst.shape[1]))
    best = torch.empty(b, n_src, dtype=src.dtype, device=src.device)
    which = torch.empty(b, n_src, dtype=torch.long, device=src.device)
    for start in range(0, n_src, rows):
        with torch.autocast(src.device.type, enabled=False):
            scores = src[:, start : start + rows] @ dst_t
        if dst_excluded is not None:
            scores.masked_fill_(dst_excluded[:, None, :], -math.inf)
        best[:, start : start + rows], which[:, start : start + rows] = row_max(scores)
    best = best.float()
    if columns is not None:
        which = columns[which]
    if src_excluded is not None:
        best = best.masked_fill(src_excluded, -math.inf)
    return best, which


def best_destinations_grouped(
    src: torch.Tensor,
    shared: torch.Tensor,
    own: torch.Tensor,
    *,
    shared_excluded: torch.Tensor | None = None,
    own_excluded: torch.Tensor | None = None,
    score_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`best_destinations`, but every source of group g only compares against the
    ``shared`` destinations and its own group's destinations ``own[:, g]``.

    src (B, G, k, C), shared (B, Ds, C), own (B, G, d, C), unit vectors; ``shared_excluded`` (Ds,)
    and ``own_excluded`` (G, d) mark destinations never chosen. Returns the best score and the
    choice (B, G, k), the choice in [0, Ds + d): a shared destination, else Ds + its index in
    ``own[:, g]``. Ties go to the shared destination, then to the first in order.
    """
    b, g, k, c = src.shape
    d = own.shape[2]
    best, which = best_destinations(
        src.reshape(b, g * k, c), shared, dst_excluded=shared_excluded, score_dtype=score_dtype
    )
    best, which = best.view(b, g, k), which.view(b, g, k)
    if score_dtype is not None:
        src, own = src.to(score_dtype), own.to(score_dtype)
    own_t = own.transpose(2, 3)
    groups = max(1, score_chunk_elements(src.device.type) // max(1, b * k * d))
    for start in range(0, g, groups):
        stop = min(g, start + groups)
        with torch.autocast(src.device.type, enabled=False):
            scores = src[:, start:stop] @ own_t[:, start:stop]  # (B, groups, k, d)
        if own_excluded is not None:
            scores.masked_fill_(own_excluded[start:stop, None, :], -math.inf)
        own_best, own_which = row_max(scores)
        own_best = own_best.float()
        better = own_best > best[:, start:stop]
        best[:, start:stop] = torch.where(better, own_best, best[:, start:stop])
        which[:, start:stop] = torch.where(better, own_which + shared.shape[1], which[:, start:stop])
    return best, which


def select_merges(
    best: torch.Tensor,
    which: torch.Tensor,
    r: int,
    src_idx: torch.Tensor,
    dst_idx: torch.Tensor,
    n: int,
    *,
    copies: torch.Tensor | None = None,
) -> TokenMatch:
    """Merge the r sources with the highest ``best`` score into their destination ``which``.

    best, which (B, n_src): per source (token ``src_idx[j]``) its best score and the position (in
    ``dst_idx``) of that destination; r must not exceed the sources with a finite score. Returns
    the :class:`TokenMatch` over all n tokens (``copies``: tokens that also keep an unmerged copy).
    """
    b, n_src = best.shape
    n_dst = dst_idx.numel()
    device = best.device
    order = best.argsort(dim=-1, descending=True)
    merged = order[:, :r]  # positions within the source set
    kept = order[:, r:].sort(dim=-1).values  # survivors in original order
    target = which.gather(1, merged)  # destination (within the dst set) of each merged source

    # Every token's slot: survivors 0..n_kept-1, destinations after them.
    n_kept = n_src - r
    src_slot = torch.empty(b, n_src, dtype=torch.long, device=device)
    src_slot.scatter_(1, kept, torch.arange(n_kept, device=device).expand(b, n_kept))
    src_slot.scatter_(1, merged, n_kept + target)
    slot = torch.empty(b, n, dtype=torch.long, device=device)
    slot[:, src_idx] = src_slot
    slot[:, dst_idx] = n_kept + torch.arange(n_dst, device=device)
    return TokenMatch(slot, n - r, copies)


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
