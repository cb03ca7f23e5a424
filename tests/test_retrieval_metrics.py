"""Retrieval metrics (MSR-VTT protocol) against hand-worked examples and a brute-force computation."""

from __future__ import annotations

import statistics

import pytest
import torch
from tomeray.models import retrieval_metrics as rm
from tomeray.models.errors import InputError
from tomeray.models.retrieval_metrics import rank_metrics, retrieval_metrics, retrieval_ranks


def brute_force(sim: list[list[float]], caption_video: list[int]) -> dict:
    """The protocol spelled out with loops: t2v ranks each caption's video among all videos; v2t ranks,
    for each video, all captions and keeps the best rank among its own captions."""
    n_captions, n_videos = len(sim), len(sim[0])
    t2v = []
    for c in range(n_captions):
        own = sim[c][caption_video[c]]
        t2v.append(1 + sum(1 for v in range(n_videos) if sim[c][v] > own))
    v2t = []
    for v in range(n_videos):
        mine = [c for c in range(n_captions) if caption_video[c] == v]
        if not mine:
            continue
        column = [sim[c][v] for c in range(n_captions)]
        v2t.append(min(1 + sum(1 for x in column if x > column[c]) for c in mine))

    def summary(ranks):
        out = {f"R@{k}": 100.0 * sum(r <= k for r in ranks) / len(ranks) for k in (1, 5, 10, 50)}
        return {**out, "MdR": float(statistics.median(ranks)), "MnR": sum(ranks) / len(ranks)}

    return {"t2v": summary(t2v), "v2t": summary(v2t), "t2v_ranks": t2v, "v2t_ranks": v2t}


def test_retrieval_metrics_hand_worked_example():
    sim = [[0.9, 0.1, 0.0],
           [0.8, 0.7, 0.1],
           [0.2, 0.3, 0.1]]
    t2v, v2t = retrieval_ranks(sim)
    assert t2v.tolist() == [1, 2, 3]  # caption 1 loses to video 0, caption 2 to videos 0 and 1
    assert v2t.tolist() == [1, 1, 1]  # caption 2's 0.1 ties caption 1 for video 2: ties count in its favour
    m = retrieval_metrics(sim)
    assert m["t2v"] == {"R@1": pytest.approx(100 / 3), "R@5": 100.0, "R@10": 100.0, "R@50": 100.0,
                        "MdR": 2.0, "MnR": 2.0}
    assert m["v2t"]["R@1"] == 100.0 and m["n_captions"] == 3 and m["n_videos"] == 3


def test_retrieval_metrics_several_captions_per_video():
    # videos 0, 1; captions 0, 1 -> video 0, captions 2, 3 -> video 1
    sim = [[0.5, 0.9],   # caption 0 prefers video 1: t2v rank 2
           [0.8, 0.1],   # caption 1: rank 1
           [0.7, 0.6],   # caption 2 prefers video 0: rank 2
           [0.2, 0.3]]   # caption 3: rank 1
    t2v, v2t = retrieval_ranks(sim, [0, 0, 1, 1])
    assert t2v.tolist() == [2, 1, 2, 1]
    # video 0's column: 0.8 (own caption 1) is the best -> 1; video 1's column: 0.9 (caption 0, not its
    # own) beats its captions 0.6 and 0.3 -> best own caption ranks 2
    assert v2t.tolist() == [1, 2]
    m = retrieval_metrics(sim, [0, 0, 1, 1])
    assert m["t2v"]["R@1"] == 50.0 and m["t2v"]["MdR"] == 1.5 and m["v2t"]["MnR"] == 1.5


@pytest.mark.parametrize("ties", [False, True])
def test_retrieval_metrics_match_brute_force(ties):
    g = torch.Generator().manual_seed(3)
    n_videos = 60
    per_video = torch.randint(1, 4, (n_videos - 1,), generator=g)  # 1-3 captions; video 59 has none
    caption_video = torch.arange(n_videos - 1).repeat_interleave(per_video)
    caption_video = caption_video[torch.randperm(len(caption_video), generator=g)]
    sim = torch.randn(len(caption_video), n_videos, generator=g)
    sim[torch.arange(len(caption_video)), caption_video] += 1.5  # better than chance, not perfect
    if ties:
        sim = (sim * 2).round() / 2  # many equal scores
    expected = brute_force(sim.tolist(), caption_video.tolist())
    t2v, v2t = retrieval_ranks(sim, caption_video)
    assert t2v.tolist() == expected["t2v_ranks"] and v2t.tolist() == expected["v2t_ranks"]
    got = retrieval_metrics(sim, caption_video)
    for side in ("t2v", "v2t"):
        assert got[side] == pytest.approx(expected[side])
    assert 0 < got["t2v"]["R@1"] < 100 and got["t2v"]["R@50"] > got["t2v"]["R@1"]
    assert len(v2t) == n_videos - 1


def test_retrieval_metrics_chunking_does_not_change_ranks(monkeypatch):
    g = torch.Generator().manual_seed(4)
    sim = torch.randn(37, 11, generator=g)
    caption_video = torch.randint(0, 11, (37,), generator=g)
    whole = retrieval_ranks(sim, caption_video)
    monkeypatch.setattr(rm, "_CHUNK", 50)  # a few rows per step
    chunked = retrieval_ranks(sim, caption_video)
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked))


def test_retrieval_metrics_bad_inputs():
    with pytest.raises(InputError, match="caption_video"):
        retrieval_ranks(torch.zeros(3, 2))
    with pytest.raises(InputError, match="2 entries for 3 captions"):
        retrieval_ranks(torch.zeros(3, 2), [0, 1])
    with pytest.raises(InputError, match="index the 2 videos"):
        retrieval_ranks(torch.zeros(3, 2), [0, 1, 2])
    with pytest.raises(InputError, match="non-empty"):
        retrieval_ranks(torch.zeros(0, 2))
    with pytest.raises(InputError, match="no ranks"):
        rank_metrics([])
