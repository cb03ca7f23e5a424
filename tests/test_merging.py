"""Token merging core against a brute-force reference written with plain loops over tokens."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tomeray.models.merging import (
    attention_bias,
    best_destinations_grouped,
    bipartite_soft_matching,
    match_tokens,
    merge_wavg,
    row_max,
    unit,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference_merge(metric, x, size, r, protected=(), dst=None):
    """Plain-loop ToMe for one batch item: returns (merged tokens, sizes, group of every original token).

    group[i] is the output position that original token i ends up in.
    """
    n = metric.shape[0]
    dst = [i for i in range(n) if i % 2 == 1] if dst is None else sorted(dst)
    src = [i for i in range(n) if i not in dst]
    protected = set(protected)
    best = {}
    for i in src:
        if i in protected:
            best[i] = (-math.inf, None)
            continue
        choice = (-math.inf, None)
        for j in dst:
            if j in protected:
                continue
            a, b = metric[i], metric[j]
            sim = float((a @ b) / (a.norm() * b.norm()))
            if sim > choice[0]:
                choice = (sim, j)
        best[i] = choice
    mergeable = [i for i in src if best[i][1] is not None]
    r = min(r, len(mergeable))
    ranked = sorted(src, key=lambda i: -best[i][0])  # stable: ties keep original order
    merged = set(ranked[:r])
    survivors = [i for i in src if i not in merged]
    out_pos = {i: k for k, i in enumerate(survivors + dst)}
    group = [out_pos[i] if i in out_pos else out_pos[best[i][1]] for i in range(n)]
    m = len(survivors) + len(dst)
    tokens = torch.zeros(m, x.shape[1], dtype=torch.float64)
    sizes = torch.zeros(m, dtype=torch.float64)
    for i in range(n):
        tokens[group[i]] += x[i].double() * float(size[i])
        sizes[group[i]] += float(size[i])
    return tokens / sizes[:, None], sizes, group


def _inputs(b=3, n=17, c=8, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    metric = torch.randn(b, n, c, generator=g)
    x = torch.randn(b, n, 5, generator=g)
    size = torch.randint(1, 4, (b, n, 1), generator=g).float()
    return metric.to(device, dtype), x.to(device, dtype), size.to(device, dtype)


@pytest.mark.parametrize("r", [1, 4, 8])
@pytest.mark.parametrize("device", DEVICES)
def test_merging_matches_bruteforce_reference(r, device):
    metric, x, size = _inputs(device=device)
    merge, unmerge = bipartite_soft_matching(metric, r)
    y, y_size = merge_wavg(merge, x, size)
    assert y.shape == (3, 17 - r, 5)
    for bi in range(3):
        ref, ref_size, group = reference_merge(metric[bi].cpu(), x[bi].cpu(), size[bi, :, 0].cpu(), r)
        torch.testing.assert_close(y[bi].cpu().double(), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y_size[bi, :, 0].cpu().double(), ref_size)
        # unmerge gives every original token its group's weighted mean
        back = unmerge(y)[bi].cpu().double()
        torch.testing.assert_close(back, ref[group], atol=1e-5, rtol=1e-5)


def test_merging_sizes_sum_to_token_count_over_rounds():
    metric, x, _ = _inputs(b=2, n=40)
    size = None
    for r in (5, 7, 3, 100):
        merge, _ = bipartite_soft_matching(metric, r)
        n_before = x.shape[1]
        x, size = merge_wavg(merge, x, size)
        metric = merge(metric, mode="mean")
        assert x.shape[1] == n_before - min(r, math.ceil(n_before / 2))
        torch.testing.assert_close(size.sum(dim=(1, 2)), torch.full((2,), 40.0))


def test_merging_protected_tokens_unchanged_and_never_receive():
    metric, x, size = _inputs(b=2, n=21)
    protected = [0, 1, 5, 20]  # 0 and 20 are sources, 1 and 5 destinations
    merge, unmerge = bipartite_soft_matching(metric, 6, protected=protected)
    y, y_size = merge_wavg(merge, x, size)
    for bi in range(2):
        ref, ref_size, group = reference_merge(
            metric[bi], x[bi], size[bi, :, 0], 6, protected=protected
        )
        torch.testing.assert_close(y[bi].double(), ref, atol=1e-5, rtol=1e-5)
        for p in protected:
            assert group.count(group[p]) == 1, f"protected token {p} shares its group"
            # x * size / size: equal up to one rounding
            torch.testing.assert_close(y[bi, group[p]], x[bi, p], atol=0, rtol=3e-7)
            assert y_size[bi, group[p], 0] == size[bi, p, 0]
    raw = merge(x)  # a plain merge moves protected tokens bit for bit
    back = unmerge(raw)
    for p in protected:
        assert torch.equal(back[:, p], x[:, p])


def test_merging_batch_protection_mask_per_item():
    metric, x, size = _inputs(b=2, n=12)
    prot = torch.zeros(2, 12, dtype=torch.bool)
    prot[0, 0] = True
    prot[1, [2, 4]] = True
    merge, _ = bipartite_soft_matching(metric, 3, protected=prot)
    y, _ = merge_wavg(merge, x, size)
    for bi, protected in enumerate([[0], [2, 4]]):
        ref, _, _ = reference_merge(metric[bi], x[bi], size[bi, :, 0], 3, protected=protected)
        torch.testing.assert_close(y[bi].double(), ref, atol=1e-5, rtol=1e-5)


def test_merging_r_zero_is_identity():
    metric, x, _ = _inputs()
    merge, unmerge = bipartite_soft_matching(metric, 0)
    assert torch.equal(merge(x), x)
    assert torch.equal(unmerge(x), x)


def test_merging_r_too_large_is_clamped():
    metric, x, size = _inputs(n=17)  # 9 sources (even positions), 8 destinations
    merge, unmerge = bipartite_soft_matching(metric, 1000)
    y, y_size = merge_wavg(merge, x, size)
    assert y.shape[1] == 8
    assert unmerge(y).shape == x.shape
    merge, _ = bipartite_soft_matching(metric, 1000, protected=[0, 2])
    assert merge(x).shape[1] == 17 - 7


def test_merging_batch_items_are_independent():
    metric, x, size = _inputs(b=4)
    merge, unmerge = bipartite_soft_matching(metric, 5)
    y, y_size = merge_wavg(merge, x, size)
    for bi in range(4):
        m1, u1 = bipartite_soft_matching(metric[bi : bi + 1], 5)
        y1, s1 = merge_wavg(m1, x[bi : bi + 1], size[bi : bi + 1])
        torch.testing.assert_close(y1[0], y[bi])
        torch.testing.assert_close(s1[0], y_size[bi])
        torch.testing.assert_close(u1(y1)[0], unmerge(y)[bi])


def test_merging_heads_layout_shares_the_matching():
    metric, _, _ = _inputs(b=2, n=16)
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 3, 16, 4, generator=g)  # (B, heads, N, D)
    merge, unmerge = bipartite_soft_matching(metric, 5)
    merged = merge(q, mode="mean")
    assert merged.shape == (2, 3, 11, 4)
    for h in range(3):
        torch.testing.assert_close(merged[:, h], merge(q[:, h], mode="mean"))
        torch.testing.assert_close(unmerge(merged)[:, h], unmerge(merged[:, h]))


def test_merging_chunked_scores_match_unchunked(monkeypatch):
    import tomeray.models.merging as merging

    metric, x, size = _inputs(b=2, n=33)
    whole = merge_wavg(bipartite_soft_matching(metric, 9, protected=[0, 3])[0], x, size)
    monkeypatch.setitem(merging.SCORE_CHUNK_ELEMENTS, "cpu", 20)  # a few source rows per chunk
    chunked = merge_wavg(bipartite_soft_matching(metric, 9, protected=[0, 3])[0], x, size)
    torch.testing.assert_close(chunked, whole, atol=0, rtol=0)


def test_merging_explicit_destination_set():
    metric, x, size = _inputs(b=2, n=15)
    dst = [0, 1, 2, 3, 9]
    merge, unmerge = bipartite_soft_matching(metric, 4, dst=dst, protected=[14])
    y, _ = merge_wavg(merge, x, size)
    for bi in range(2):
        ref, _, group = reference_merge(metric[bi], x[bi], size[bi, :, 0], 4, protected=[14], dst=dst)
        torch.testing.assert_close(y[bi].double(), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(unmerge(y)[bi].double(), ref[group], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_merging_log_size_bias_equals_full_attention_over_duplicates(device):
    g = torch.Generator().manual_seed(3)
    b, heads, d = 2, 2, 8
    unique = torch.randn(b, 9, heads * d, generator=g)
    # tokens 9..14 duplicate some unique tokens; duplicates placed at even (source) positions
    copies = [0, 0, 3, 5, 5, 5]
    tokens = torch.cat([unique, unique[:, copies]], dim=1).to(device)
    perm = torch.randperm(tokens.shape[1], generator=g)
    tokens = tokens[:, perm]
    n = tokens.shape[1]
    # protect nothing; merge exactly the duplicates: they have cosine 1 with their twin
    dup_count = len(copies)
    # make sure each duplicate has its twin on the other side of the split by using an explicit dst set
    first_seen: dict[tuple, int] = {}
    dst = []
    for i in range(n):
        key = tuple(tokens[0, i].tolist())
        if key not in first_seen:
            first_seen[key] = i
            dst.append(i)
    merge, _ = bipartite_soft_matching(tokens, dup_count, dst=dst)
    merged, size = merge_wavg(merge, tokens, None)
    assert merged.shape[1] == n - dup_count

    def split(t):
        return t.view(b, t.shape[1], heads, d).transpose(1, 2)

    q = split(tokens)
    full = F.scaled_dot_product_attention(q, split(tokens), split(tokens))
    bias = attention_bias(size)
    assert bias.shape == (b, 1, 1, n - dup_count)
    prop = F.scaled_dot_product_attention(q, split(merged), split(merged), attn_mask=bias)
    torch.testing.assert_close(prop, full, atol=1e-5, rtol=1e-4)
    # without the bias the result differs: the test can fail
    plain = F.scaled_dot_product_attention(q, split(merged), split(merged))
    assert not torch.allclose(plain, full, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_merging_any_float_dtype(dtype):
    metric, x, size = _inputs(dtype=dtype)
    merge, unmerge = bipartite_soft_matching(metric, 4)
    y, s = merge_wavg(merge, x, size)
    assert y.dtype == dtype and s.dtype == dtype
    assert unmerge(y).shape == x.shape
    ref_merge, _ = bipartite_soft_matching(metric.float(), 4)
    y32, _ = merge_wavg(ref_merge, x.float(), size.float())
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(y.float(), y32, atol=1e-5, rtol=1e-5)


def test_merging_duplicated_protection_keeps_copies():
    """protect='duplicated' (FastVGGT): protected tokens never merge away, protected destinations
    still receive sources and also keep an unmerged copy, which they read back on unmerge."""
    metric, x, _ = _inputs(b=2, n=21)
    protected = torch.zeros(21, dtype=torch.bool)
    protected[[0, 1, 5, 20]] = True  # 0 and 20 are sources, 1 and 5 destinations (odd positions)
    match = match_tokens(metric, 100, protected=protected, protect="duplicated")
    src = [i for i in range(21) if i % 2 == 0 and not protected[i]]
    dst = [i for i in range(21) if i % 2 == 1]
    assert match.num_slots == 21 - len(src) + 2  # every unprotected source merged; copies of 1 and 5
    merged = match.merge(x, mode="mean")
    for bi in range(2):
        m = F.normalize(metric[bi], dim=-1)
        groups = {d: [d] for d in dst}
        for i in src:  # brute force: each source into its most similar destination, protected ones too
            groups[max(dst, key=lambda d: float(m[i] @ m[d]))].append(i)
        for d, members in groups.items():
            torch.testing.assert_close(merged[bi, match.slot[bi, d]], x[bi, members].mean(0))
        for p in (0, 1, 5, 20):  # unmerged values of protected tokens enter and come back
            assert torch.equal(merged[bi, match.read_slot[bi, p]], x[bi, p])
    assert any(len(groups[d]) > 1 for d in (1, 5))  # a protected destination received a source
    y = torch.randn(2, match.num_slots, 5)
    back = match.unmerge(y)
    for bi in range(2):
        for i in range(21):
            assert torch.equal(back[bi, i], y[bi, match.read_slot[bi, i]])
    assert not torch.equal(match.read_slot[:, [1, 5]], match.slot[:, [1, 5]])
    with pytest.raises(ValueError, match="shared by the batch"):
        match_tokens(metric, 3, protected=protected.expand(2, 21), protect="duplicated")


def test_merging_grouped_scores_match_bruteforce():
    g = torch.Generator().manual_seed(4)
    src = unit(torch.randn(2, 3, 4, 6, generator=g))  # (B, groups, k, C)
    shared = unit(torch.randn(2, 5, 6, generator=g))
    own = unit(torch.randn(2, 3, 2, 6, generator=g))
    shared_excluded = torch.tensor([False, True, False, False, False])
    own_excluded = torch.tensor([[False, False], [True, False], [False, True]])
    best, which = best_destinations_grouped(
        src, shared, own, shared_excluded=shared_excluded, own_excluded=own_excluded
    )
    for b in range(2):
        for grp in range(3):
            cands = [(shared[b, j], j) for j in range(5) if not shared_excluded[j]]
            cands += [(own[b, grp, j], 5 + j) for j in range(2) if not own_excluded[grp, j]]
            for i in range(4):
                score, choice = max((float(src[b, grp, i] @ v), j) for v, j in cands)
                assert int(which[b, grp, i]) == choice
                assert float(best[b, grp, i]) == pytest.approx(score, abs=1e-6)


@pytest.mark.parametrize("width", [7, 256, 300, 1000, 1024])
def test_merging_row_max_equals_max_with_first_index_on_ties(width):
    g = torch.Generator().manual_seed(width)
    scores = torch.randn(2, 9, width, generator=g)
    scores[0, :, width // 3] = scores[0, :, width - 1] = scores[0].amax(dim=-1) + 1  # tie: first wins
    scores[1, 0] = 0.5  # a row of equal scores
    best, which = row_max(scores)
    ref_best, ref_which = scores.max(dim=-1)
    assert torch.equal(best, ref_best) and torch.equal(which, ref_which)
    assert bool((which[0] == width // 3).all()) and int(which[1, 0]) == 0


def test_merging_bad_shapes_raise_value_error_with_shapes():
    metric, x, _ = _inputs(n=10)
    with pytest.raises(ValueError, match=r"\(10, 8\)"):
        bipartite_soft_matching(metric[0], 2)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        bipartite_soft_matching(metric[:, :1], 1)
    merge, unmerge = bipartite_soft_matching(metric, 2)
    with pytest.raises(ValueError, match=r"\(3, 9, 5\)"):
        merge(x[:, :9])
    with pytest.raises(ValueError, match=r"N=8"):
        unmerge(x)
    with pytest.raises(ValueError, match="out of range"):
        bipartite_soft_matching(metric, 2, protected=[10])
    with pytest.raises(ValueError, match=r"\(11,\)"):
        bipartite_soft_matching(metric, 2, dst=torch.zeros(11, dtype=torch.bool))
    with pytest.raises(ValueError, match="r must be"):
        bipartite_soft_matching(metric, -1)
