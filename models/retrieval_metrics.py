"""Text-video retrieval metrics from a caption x video similarity matrix (MSR-VTT protocol).

* text-to-video (t2v): every caption ranks all videos; its rank is that of its own video.
* video-to-text (v2t): every video ranks all captions; with several captions per video its rank is
  that of the best-ranked of its own captions (videos without a caption have no v2t rank).

A rank is 1 + the number of candidates scored strictly higher (ties count in the item's favour).
R@K is the percentage of queries with rank <= K; MdR and MnR are the median and mean rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tomeray.models.errors import InputError

__all__ = ["RECALL_AT", "rank_metrics", "retrieval_metrics", "retrieval_ranks"]

RECALL_AT = (1, 5, 10, 50)
_CHUNK = 1 << 24  # comparisons per step: bounds memory for many captions


def _inputs(sim, caption_video) -> tuple[torch.Tensor, torch.Tensor]:
    sim = torch.as_tensor(sim)
    if sim.dim() != 2 or sim.shape[0] == 0 or sim.shape[1] == 0:
        raise InputError(f"similarity must be a non-empty (captions, videos) matrix; got {tuple(sim.shape)}")
    if not sim.is_floating_point():
        sim = sim.double()
    if caption_video is None:
        if sim.shape[0] != sim.shape[1]:
            raise InputError(f"a {tuple(sim.shape)} similarity needs caption_video "
                             "(the video of each caption)")
        caption_video = torch.arange(sim.shape[0])
    caption_video = torch.as_tensor(caption_video, dtype=torch.long).flatten().to(sim.device)
    if caption_video.numel() != sim.shape[0]:
        raise InputError(f"caption_video has {caption_video.numel()} entries for {sim.shape[0]} captions")
    if caption_video.numel() and (caption_video.min() < 0 or caption_video.max() >= sim.shape[1]):
        raise InputError(f"caption_video entries must index the {sim.shape[1]} videos")
    return sim, caption_video


def retrieval_ranks(sim, caption_video: Sequence[int] | torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based t2v ranks (one per caption) and v2t ranks (one per video that has a caption, in video
    order). ``sim[i, j]``: caption i vs video j; ``caption_video[i]``: the video of caption i
    (default: caption i belongs to video i)."""
    sim, caption_video = _inputs(sim, caption_video)
    n_captions, n_videos = sim.shape
    own = sim[torch.arange(n_captions, device=sim.device), caption_video]  # each caption vs its video
    t2v = torch.empty(n_captions, dtype=torch.long, device=sim.device)
    step = max(1, _CHUNK // n_videos)
    for i in range(0, n_captions, step):
        t2v[i : i + step] = 1 + (sim[i : i + step] > own[i : i + step, None]).sum(dim=1)
    # caption c in the column of its own video: 1 + captions scored higher for that video
    caption_rank = torch.empty(n_captions, dtype=torch.long, device=sim.device)
    step = max(1, _CHUNK // n_captions)
    for i in range(0, n_captions, step):
        column = sim[:, caption_video[i : i + step]]  # (captions, chunk)
        caption_rank[i : i + step] = 1 + (column > own[None, i : i + step]).sum(dim=0)
    best = torch.full((n_videos,), n_captions + 1, dtype=torch.long, device=sim.device)
    best = best.scatter_reduce(0, caption_video, caption_rank, reduce="amin")
    has_caption = torch.zeros(n_videos, dtype=torch.bool, device=sim.device)
    has_caption[caption_video] = True
    return t2v.cpu(), best[has_caption].cpu()


def rank_metrics(ranks: torch.Tensor | Sequence[int], recall_at: Sequence[int] = RECALL_AT) -> dict:
    """{"R@K": percentage with rank <= K, ..., "MdR": median rank, "MnR": mean rank}."""
    r = np.asarray(torch.as_tensor(ranks).cpu(), dtype=np.float64)
    if r.size == 0:
        raise InputError("no ranks to summarise")
    out = {f"R@{k}": float(100.0 * np.mean(r <= k)) for k in recall_at}
    out["MdR"] = float(np.median(r))
    out["MnR"] = float(np.mean(r))
    return out


def retrieval_metrics(sim, caption_video: Sequence[int] | torch.Tensor | None = None,
                      recall_at: Sequence[int] = RECALL_AT) -> dict:
    """{"t2v": {...}, "v2t": {...}, "n_captions", "n_videos"} from a (captions, videos) similarity
    (see ``retrieval_ranks`` and ``rank_metrics``)."""
    t2v, v2t = retrieval_ranks(sim, caption_video)
    return {"t2v": rank_metrics(t2v, recall_at), "v2t": rank_metrics(v2t, recall_at),
            "n_captions": int(t2v.numel()), "n_videos": int(torch.as_tensor(sim).shape[1])}
