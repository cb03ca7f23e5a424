"""Comparing two rankings without depending on how exact or near ties are broken.

Two search paths (NumPy and FAISS, one index and several, one server and another) add the same
products in different orders, so rows whose scores are equal, or equal within float error, may come
in either order. A ranking matches another when every position holds the same score (within
``atol``), its ids are distinct, and every run of equal scores holds the same ids. The last run may
be cut by ``k`` (``cut=True``): which of its tied ids made the cut is then left unchecked."""

from __future__ import annotations

import numpy as np


def assert_same_ranking(got, want, atol: float = 1e-5, cut: bool = True) -> None:
    """``got`` and ``want``: sequences of (id, score), best first; ``cut=False`` when both hold every
    row (nothing tied to their last run lies beyond them)."""
    got, want = [(int(i), float(s)) for i, s in got], [(int(i), float(s)) for i, s in want]
    assert len(got) == len(want), f"{len(got)} hits, expected {len(want)}"
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=atol)
    assert len({i for i, _ in got}) == len(got), f"an id comes twice: {got}"
    start = 0
    for end in range(1, len(want) + 1):
        if end == len(want) or want[end][1] < want[end - 1][1] - atol:
            if end < len(want) or not cut:  # a whole run of equal scores: the same ids, in any order
                assert {i for i, _ in got[start:end]} == {i for i, _ in want[start:end]}, (start, end)
            start = end


def hits(body: dict) -> list[tuple[int, float]]:
    """(id, score) of a search answer's results (service JSON)."""
    return [(int(h["video_id"]), h["score"]) for h in body["results"]]
