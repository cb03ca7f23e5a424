"""TempMe's training objective: symmetric InfoNCE over the global batch, logit scale fixed at 100.

Each of B (video, caption) pairs is the positive of its own row and column of the caption x video
similarity matrix; every other entry of the *global* batch (all workers' pairs) is a negative. The
loss is the mean of the text-to-video and video-to-text cross-entropies of ``100 * t @ v.T``, as in
the reference (CLIP's logit scale is frozen there, at its pretrained value 100).

Data-parallel training gathers the features of all workers before the loss (``all_gather_with_grad``).
Its backward sums every worker's gradient for the local shard, so after DDP averages the parameter
gradients over W workers they equal the gradient of the global-batch loss on one worker: the same
recipe behaves the same on any number of workers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tomeray.models.errors import InputError
from torch import nn

__all__ = ["LOGIT_SCALE", "VideoTextModel", "all_gather_with_grad", "contrastive_loss"]

LOGIT_SCALE = 100.0

Gather = Callable[[torch.Tensor], torch.Tensor]


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, *, gather: Gather | None = None,
                     logit_scale: float = LOGIT_SCALE) -> torch.Tensor:
    """Symmetric InfoNCE of paired features: row i of ``video`` (B, D) goes with row i of ``text``.

    Features are L2-normalised here (in float32). ``gather`` maps a local (B, D) tensor to the global
    (N, D) batch, every worker's rows in rank order, with gradient to the local rows
    (``all_gather_with_grad``); None: the local batch is the whole batch. Returns the scalar loss over
    the global batch (the same value on every worker)."""
    if video.shape != text.shape or video.dim() != 2:
        raise InputError(f"video and text features must both be (B, D); got {tuple(video.shape)} and "
                         f"{tuple(text.shape)}")
    v = F.normalize(video.float(), dim=-1)
    t = F.normalize(text.float(), dim=-1)
    if gather is not None:
        v, t = gather(v), gather(t)
    logits = logit_scale * t @ v.T  # (captions, videos)
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class _GatherWithGrad(torch.autograd.Function):
    """all_gather of (b_r, D) shards of possibly different sizes; backward: the summed gradient of
    every worker, sliced to this worker's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        sizes = [int(s.item()) for s in sizes]
        padded = x.new_zeros(max(sizes), *x.shape[1:])
        padded[: x.shape[0]] = x
        shards = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(shards, padded.contiguous())
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return torch.cat([s[:n] for s, n in zip(shards, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every worker's loss depends on this worker's rows
        return grad[ctx.start : ctx.stop]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every worker's (b_r, D) tensor in rank order (``torch.distributed`` must be
    initialised; shards may differ in size), keeping the gradient to the local rows; identity when
    ``torch.distributed`` is not initialised or has one worker."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


class VideoTextModel(nn.Module):
    """Both towers of a ``TempMeEncoder`` as one module for training (and for wrapping in
    ``DistributedDataParallel``): ``forward(frames, mask, tokens)`` returns the (B, D) unit video and
    text embeddings with gradient. Only ``encoder.trainable_parameters()`` should be optimised."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None,
                tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        video = self.encoder.encode_video(frames, mask, grad=True)
        text = self.encoder.encode_text(tokens, grad=True)
        return video, text
