"""FastVGGT merged global attention: plan, matching, exactness on duplicates, RoPE, model use."""

from __future__ import annotations

import math

import pytest
import torch
from tomeray.models import merging
from tomeray.models.merging import bipartite_soft_matching
from tomeray.models.vggt import MergeConfig, VGGTModelConfig, create_vggt
from tomeray.models.vggt.fast import (
    GlobalMergePlan,
    TokenMatching,
    frame_dst_mask,
    plan_global_merge,
    protected_tokens,
)
from tomeray.models.vggt.layers import Attention, RotaryEmbedding2D

CPU = torch.device("cpu")


def plan_for(views=4, grid=(5, 7), **cfg):
    return plan_global_merge(MergeConfig(**cfg), views=views, grid_hw=grid, num_special=5, device=CPU)


def dst_mask(plan: GlobalMergePlan) -> torch.Tensor:
    mask = torch.zeros(plan.num_tokens, dtype=torch.bool)
    mask[plan.dst_idx] = True
    return mask


def test_vggt_fast_plan_destinations():
    views, (gh, gw), P = 4, (5, 7), 40
    plan = plan_for(views, (gh, gw), protect_ratio=0.0)
    dst = dst_mask(plan).view(views, P)
    assert dst[0].all()  # the reference view keeps every token
    assert dst[:, :5].all()  # camera + register tokens of every view
    cells = math.ceil(gh / 2) * math.ceil(gw / 2)
    for frame in dst[1:]:
        grid = frame[5:].view(gh, gw)
        assert int(grid.sum()) == cells
        for r in range(0, gh, 2):
            for c in range(0, gw, 2):
                assert int(grid[r : r + 2, c : c + 2].sum()) == 1  # one destination per 2x2 region
    assert plan.r == views * P - int(dst.sum())  # ratio 0.9 caps at "all sources"
    assert torch.equal(dst_mask(plan_for(views, (gh, gw), seed=0)), dst_mask(plan))
    assert not torch.equal(dst_mask(plan_for(views, (gh, gw), seed=1)), dst_mask(plan))
    region3 = dst_mask(plan_for(views, (gh, gw), region=3)).view(views, P)
    assert int(region3[1, 5:].sum()) == math.ceil(gh / 3) * math.ceil(gw / 3)


def test_vggt_fast_plan_protection_and_nothing_to_merge():
    mask = protected_tokens(160, 0.1)
    assert mask.nonzero().squeeze(1).tolist() == list(range(0, 160, 10))  # FastVGGT: evenly spaced
    assert not protected_tokens(160, 0.0).any()
    plan = plan_for()
    n_src = plan.src_idx.numel()
    assert plan.r == n_src - int(plan.src_protected.sum())  # protected sources never merge
    assert plan.merged_tokens == plan.num_tokens - plan.r
    assert plan_for(views=1) is None  # one view: every token is a destination
    assert plan_for(enabled=False) is None
    assert plan_for(ratio=0.0) is None
    assert plan_for(ratio=0.1).r == int(0.1 * 160)


def test_vggt_fast_matching_agrees_with_merging_module(monkeypatch):
    """Same matching as models.merging.bipartite_soft_matching, also when scores are chunked."""
    plan = plan_for(views=4, grid=(5, 7), ratio=0.5)
    g = torch.Generator().manual_seed(0)
    metric = torch.randn(2, plan.num_tokens, 12, generator=g)
    x = torch.randn(2, plan.num_tokens, 6, generator=g)
    protected = torch.zeros(plan.num_tokens, dtype=torch.bool)
    protected[plan.src_idx[plan.src_protected]] = True
    protected[plan.dst_idx[plan.dst_protected]] = True
    merge, unmerge = bipartite_soft_matching(metric, plan.r, protected=protected, dst=dst_mask(plan))
    matching = plan(metric)
    assert matching.num_slots == plan.merged_tokens
    torch.testing.assert_close(matching.merge(x), merge(x, mode="mean"))
    y = torch.randn(2, plan.merged_tokens, 6, generator=g)
    torch.testing.assert_close(matching.unmerge(y), unmerge(y))
    monkeypatch.setitem(merging.SCORE_CHUNK_ELEMENTS, "cpu", 50)  # a few rows per chunk
    assert torch.equal(plan(metric).assign, matching.assign)
    with pytest.raises(ValueError, match="tokens"):
        plan(metric[:, :-1])


def test_vggt_fast_proportional_attention_is_exact_on_duplicates():
    """A source that duplicates a destination (same features, no RoPE) merges into it; with the
    log(size) bias the merged attention equals the full attention, for every token."""
    torch.manual_seed(0)
    attn = Attention(16, 2, qk_norm=True).eval()
    base = torch.randn(2, 8, 16)
    copied = torch.tensor([0, 0, 0, 1, 2, 3, 3, 5])  # uneven: slots of size 4, 2, 2, 3, 1, 2, 1, 1
    x = torch.cat((base, base[:, copied]), dim=1)  # tokens 8..15 copy tokens copied[0..7]
    dst = torch.zeros(16, dtype=torch.bool)
    dst[:8] = True
    no_protection = torch.zeros(16, dtype=torch.bool)
    with torch.no_grad():
        full = attn(x)
        for proportional, exact in ((True, True), (False, False)):
            plan = GlobalMergePlan(dst, no_protection, r=8, proportional=proportional)
            assert torch.equal(plan(x).assign[:, 8:], copied.expand(2, 8))  # each copy found its original
            merged = attn(x, merger=plan)
            assert torch.allclose(merged, full, atol=1e-5) == exact


def test_vggt_fast_rope_positions_follow_tokens():
    """Merged keys are means of keys rotated at their own tokens' positions."""
    torch.manual_seed(0)
    attn = Attention(16, 2, qk_norm=True).eval()
    grid_h, grid_w, frames = 2, 3, 2
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    positions = torch.stack((rows, cols), dim=-1) + 1
    rope = RotaryEmbedding2D(100.0).tables(positions, head_dim=8)
    x = torch.randn(1, frames * grid_h * grid_w, 16)
    dst = torch.zeros(x.shape[1], dtype=torch.bool)
    dst[:6] = True
    plan = GlobalMergePlan(dst, torch.zeros_like(dst), r=6, proportional=True)

    captured = []

    class Spy(TokenMatching):
        def merge(self, t):
            captured.append(t)  # (B, N, 3 * C): q, k, v packed per token
            return super().merge(t)

    def merger(metric):
        spy = Spy.__new__(Spy)
        spy.__dict__.update(plan(metric).__dict__)
        return spy

    with torch.no_grad():
        attn(x, rope=rope, merger=merger)
        k = attn.k_norm(attn.qkv(x).reshape(1, 12, 3, 2, 8)[:, :, 1].transpose(1, 2))
    k_in = captured[0].view(1, 12, 3, 2, 8)[:, :, 1].transpose(1, 2)  # (B, heads, N, D)
    torch.testing.assert_close(k_in, rope.apply(k))  # every token rotated at its own (row, col)
    assert not torch.allclose(k_in, k)
    matching = plan(x)
    merged = matching.merge(captured[0])
    assign = matching.assign[0]
    for slot in range(plan.merged_tokens):  # slots hold the means of their members
        members = (assign == slot).nonzero().squeeze(1)
        torch.testing.assert_close(merged[0, slot], captured[0][0, members].mean(0))
    assert any(int((assign == slot).sum()) > 1 for slot in range(plan.merged_tokens))


def test_vggt_fast_token_major_rope_equals_heads_layout():
    positions = torch.tensor([[0, 0], [1, 1], [1, 2], [2, 1], [2, 2]])
    rope = RotaryEmbedding2D(100.0).tables(positions, head_dim=8)
    t = torch.randn(2, 3, 10, 8)  # (B, heads, N, D), two frames of 5 tokens
    assert torch.equal(rope.apply_tokens(t.transpose(1, 2)).transpose(1, 2), rope.apply(t))


@pytest.fixture(scope="module")
def tiny_pair(fixtures_dir):
    weights = str(fixtures_dir / "vggt_tiny_state_dict.safetensors")
    plain = create_vggt(
        VGGTModelConfig(arch="vggt-tiny", pretrained=weights, merge=MergeConfig(enabled=False))
    )
    merged = create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained=weights, merge=MergeConfig()))
    return plain, merged


def test_vggt_fast_merged_model_tracks_unmerged(tiny_pair, fixtures_dir):
    from safetensors.torch import load_file

    plain, merged = tiny_pair
    images = load_file(str(fixtures_dir / "vggt_tiny_io.safetensors"))["images"]
    plan = merged.merge_plan(4, (70, 98), CPU)
    assert plan.merged_tokens < 0.7 * plan.num_tokens
    with torch.no_grad():
        ref, out = plain(images), merged(images)
    for key in ("depth", "world_points"):
        rel = ((out[key] - ref[key]).norm() / ref[key].norm()).item()
        assert 0 < rel < 1e-3, key  # it did merge, and stayed close
    # later start: fewer merged blocks, closer to the reference
    late = create_vggt(
        VGGTModelConfig(
            arch="vggt-tiny",
            pretrained=str(fixtures_dir / "vggt_tiny_state_dict.safetensors"),
            merge=MergeConfig(start_block=3),
        )
    )
    with torch.no_grad():
        out_late = late(images)
    assert (out_late["world_points"] - ref["world_points"]).norm() < (
        out["world_points"] - ref["world_points"]
    ).norm()


def test_vggt_fast_merged_bfloat16_and_any_grid(tiny_pair):
    _, merged = tiny_pair
    images = torch.rand(2, 3, 3, 42, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = merged(images)
    assert out["depth"].shape == (2, 3, 42, 112, 1) and torch.isfinite(out["depth"]).all()
    half = create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained="none", merge=MergeConfig())).to(
        torch.bfloat16
    )
    with torch.no_grad():
        out = half(images.to(torch.bfloat16))
    assert out["world_points"].dtype == torch.bfloat16 and torch.isfinite(out["world_points"]).all()


def test_vggt_fast_presets_resolve_and_explicit_options_win():
    from tomeray.models.errors import ConfigError
    from tomeray.models.vggt.config import MERGE_PRESETS

    default = MergeConfig().resolved()
    assert {k: getattr(default, k) for k in MERGE_PRESETS["default"]} == MERGE_PRESETS["default"]
    ref = MergeConfig(preset="reference", proportional_attention=True).resolved()
    assert (ref.seed, ref.region_layout, ref.protected, ref.proportional_attention) == (
        33, "reference", "duplicated", True)
    with pytest.raises(ConfigError, match="preset"):
        MergeConfig(preset="fastest").resolved()
    with pytest.raises(ConfigError, match="merge.candidates"):
        MergeConfig(candidates="nearby").resolved()
    with pytest.raises(ConfigError, match="rematch_every"):
        create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained="none", merge=MergeConfig(rematch_every=0)))


@pytest.mark.parametrize("preset", ["default", "reference", "fast"])
def test_vggt_fast_each_preset_builds_its_plan(preset):
    """Every preset's options reach the plan: layout, protection, bias, scores, candidates."""
    from tomeray.models.vggt.config import MERGE_PRESETS

    options = MergeConfig(preset=preset).options()
    assert {k: options[k] for k in MERGE_PRESETS[preset]} == MERGE_PRESETS[preset]
    plan = plan_for(preset=preset)
    reference = preset == "reference"
    assert (plan.copies is not None) == reference  # duplicated protected destinations
    assert plan.candidates == MERGE_PRESETS[preset]["candidates"]
    assert plan.score_dtype is None  # float32 scores in every preset
    metric = torch.randn(2, plan.num_tokens, 12, generator=torch.Generator().manual_seed(3))
    matching = plan(metric)
    assert (matching.attn_bias is None) == reference
    seed = MERGE_PRESETS[preset]["seed"]
    expected = frame_dst_mask(4, 40, 5, (5, 7), layout=MERGE_PRESETS[preset]["region_layout"],
                              generator=torch.Generator().manual_seed(seed))
    assert torch.equal(plan.dst, expected)


@pytest.mark.parametrize(
    "merge, key",
    [
        (dict(preset="fastest"), "preset"),
        (dict(region_layout="sheared"), "merge.region_layout"),
        (dict(protected="kept"), "merge.protected"),
        (dict(similarity="float16"), "merge.similarity"),
        (dict(candidates="nearby"), "merge.candidates"),
        (dict(proportional_attention="yes"), "merge.proportional_attention"),
        (dict(region=True), "merge.region"),
        (dict(region=2.5), "merge.region"),
        (dict(seed="33"), "merge.seed"),
        (dict(rematch_every=0), "merge.rematch_every"),
        (dict(region=0), "merge.region"),
        (dict(ratio=1.5), "merge.ratio"),
        (dict(ratio="0.9"), "merge.ratio"),
        (dict(protect_ratio=1.0), "merge.protect_ratio"),
        (dict(start_block=4), "merge.start_block"),
        (dict(preset="reference", enabled="no"), "merge.enabled"),
    ],
)
def test_vggt_fast_invalid_merge_options_raise_config_error(merge, key):
    from tomeray.models.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained="none", merge=MergeConfig(**merge)))


def test_vggt_fast_reconstruct_config_takes_presets():
    from tomeray.pipeline.core.config import load_config
    from tomeray.pipeline.reconstruction.config import ReconConfig

    cfg = load_config(ReconConfig, "reconstruct", ["model.merge.preset=reference", "model.merge.seed=5"])
    merge = cfg.model.merge.resolved()
    assert (merge.preset, merge.seed, merge.protected, merge.proportional_attention) == (
        "reference", 5, "duplicated", False)
    assert load_config(ReconConfig, "reconstruct").model.merge.resolved() == MergeConfig().resolved()


def test_vggt_fast_duplicated_protection_plan():
    """FastVGGT's handling: protected destinations receive sources and attend twice."""
    plan = plan_for(preset="reference")
    n_copies = int((plan.protected & plan.dst).sum())
    assert n_copies > 0 and plan.merged_tokens == plan.num_tokens - plan.r + n_copies
    metric = torch.randn(1, plan.num_tokens, 12, generator=torch.Generator().manual_seed(0))
    matching = plan(metric)
    into = matching.merged_into()[0]
    assert bool((into[plan.protected] == -1).all())  # protected tokens never merge away
    assert bool(plan.protected[into[into >= 0]].any())  # ... but some receive
    merged_sources = (into >= 0).sum()
    assert int(merged_sources) == plan.r == int((~plan.dst & ~plan.protected).sum())
    removed = plan_for(preset="reference", protected="removed")
    into = removed(metric).merged_into()[0]
    assert not bool(removed.protected[into[into >= 0]].any())


def test_vggt_fast_local_candidates_are_view0_or_own_view():
    views, per = 4, 40
    local = plan_for(views, candidates="local", protect_ratio=0.0)
    metric = torch.randn(2, views * per, 12, generator=torch.Generator().manual_seed(1))
    into = local(metric).merged_into()
    m = torch.nn.functional.normalize(metric, dim=-1)
    for b in range(2):
        for src in (into[b] >= 0).nonzero().squeeze(1).tolist():
            view = src // per
            cands = [d for d in local.dst_idx.tolist() if d // per in (0, view)]
            best = max(cands, key=lambda d: float(m[b, src] @ m[b, d]))
            assert int(into[b, src]) == best
    every = plan_for(views, protect_ratio=0.0)(metric).merged_into()
    assert not torch.equal(every, into)  # some sources prefer another view's destination


def test_vggt_fast_rematch_every_reuses_matchings():
    plan = plan_for(rematch_every=2)
    g = torch.Generator().manual_seed(2)
    metrics = [torch.randn(1, plan.num_tokens, 12, generator=g) for _ in range(3)]
    merger = plan.merger()
    first, second, third = (merger(m) for m in metrics)
    assert second is first and third is not first
    assert torch.equal(third.assign, plan(metrics[2]).assign)
    assert plan_for().merger() is not None


@pytest.mark.parametrize(
    "merge",
    [dict(preset="reference"), dict(preset="fast"), dict(preset="reference", similarity="bfloat16"),
     dict(rematch_every=3), dict(preset="reference", region=3)],
    ids=["reference", "fast", "reference-bf16", "rematch3", "reference-region3"],
)
def test_vggt_fast_every_mode_batch_and_any_grid(merge):
    """Each mode merges each scene on its own (B > 1 = B single calls) on any patch grid."""
    model = create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained="none", merge=MergeConfig(**merge)))
    images = torch.rand(2, 3, 3, 42, 70, generator=torch.Generator().manual_seed(0))  # 3x5 patches
    assert model.merge_plan(3, (42, 70), CPU).r > 0
    with torch.no_grad():
        both = model(images)
        alone = [model(images[i]) for i in range(2)]
    for key in ("pose_enc", "depth", "world_points"):
        for i in range(2):
            torch.testing.assert_close(both[key][i], alone[i][key][0], atol=1e-5, rtol=1e-4)


def test_vggt_fast_frame_dst_mask_layout_and_seed():
    frames, special, h, w = 4, 5, 7, 9
    per = special + h * w
    g = torch.Generator().manual_seed(0)
    mask = frame_dst_mask(frames, per, special, (h, w), region=2, generator=g).view(frames, per)
    assert mask[0].all()
    assert mask[:, :special].all()
    cells = math.ceil(h / 2) * math.ceil(w / 2)
    for f in range(1, frames):
        grid = mask[f, special:].view(h, w)
        assert int(grid.sum()) == cells
        for ci in range(0, h, 2):
            for cj in range(0, w, 2):
                assert int(grid[ci : ci + 2, cj : cj + 2].sum()) == 1
    again = frame_dst_mask(frames, per, special, (h, w), region=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.view(frames, per), mask)
    other = frame_dst_mask(frames, per, special, (h, w), region=2, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other.view(frames, per), mask)


def test_vggt_fast_frame_dst_mask_reference_layout_is_sheared():
    """FastVGGT's layout: whole 2x2 cells on a virtual grid of 2*floor(w/2) columns, written
    row-major onto the frame's first patches, so odd widths shear the cells."""
    frames, special, h, w = 3, 5, 5, 7
    per = special + h * w
    mask = frame_dst_mask(frames, per, special, (h, w), layout="reference",
                          generator=torch.Generator().manual_seed(33)).view(frames, per)
    draws = torch.randint(0, 4, (frames - 1, h // 2, w // 2), generator=torch.Generator().manual_seed(33))
    wv = 2 * (w // 2)  # virtual row length 6, the real one is 7
    for f in range(1, frames):
        expected = torch.zeros(h * w, dtype=torch.bool)
        for by in range(h // 2):
            for bx in range(w // 2):
                k = int(draws[f - 1, by, bx])
                expected[(2 * by + k // 2) * wv + 2 * bx + k % 2] = True
        assert torch.equal(mask[f, special:], expected)
        assert not mask[f, special + 2 * (h // 2) * wv :].any()  # the last 11 patches: never
    assert mask[0].all() and mask[:, :special].all()
    aligned = frame_dst_mask(frames, per, special, (h, w), generator=torch.Generator().manual_seed(33))
    assert int(aligned.view(frames, per)[1, special:].sum()) == 3 * 4  # partial border cells count
    with pytest.raises(ValueError, match="layout"):
        frame_dst_mask(frames, per, special, (h, w), layout="skewed")
    with pytest.raises(ValueError, match="grid"):
        frame_dst_mask(2, 10, 1, (3, 4))
