"""VGGT track head: follows query points of view 0 through all views.

A DPT feature extractor turns the cached aggregator layers into half-resolution feature maps;
a CoTracker/VGGSfM-style predictor then refines the tracks iteratively: correlation pyramids
sampled around the current estimate, a transformer alternating attention over time (views) and
over space (through 64 learned virtual tracks), and updates to positions and track features.
Parameter names follow the official checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tomeray.models.errors import InputError
from tomeray.models.vggt.heads import DPTHead
from tomeray.models.vggt.layers import Mlp
from tomeray.models.vggt.registry import VGGTArch
from torch import Tensor, nn

# ----------------------------------------------------------------------------- sampling helpers


def sample_bilinear(x: Tensor, coords: Tensor, padding_mode: str = "border") -> Tensor:
    """grid_sample with pixel coordinates: coords (..., 2) as (x, y), 0 = centre of the first pixel."""
    H, W = x.shape[-2:]
    scale = coords.new_tensor([2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)])
    grid = coords.to(x.dtype) * scale.to(x.dtype) - 1
    return F.grid_sample(x, grid, align_corners=True, padding_mode=padding_mode)


def sample_points(fmap: Tensor, points: Tensor) -> Tensor:
    """fmap (B, C, H, W), points (B, N, 2) -> features (B, N, C)."""
    return sample_bilinear(fmap, points.unsqueeze(2))[..., 0].transpose(1, 2)


def sincos_grid_embedding(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """(1, dim, grid_h, grid_w): the first half encodes the column, the second the row."""
    cols = torch.arange(grid_w, dtype=torch.float32).repeat(grid_h)
    rows = torch.arange(grid_h, dtype=torch.float32).repeat_interleave(grid_w)

    def embed(pos: Tensor, d: int) -> Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        angles = pos.double()[:, None] * omega[None]
        return torch.cat((angles.sin(), angles.cos()), dim=1).float()

    emb = torch.cat((embed(cols, dim // 2), embed(rows, dim // 2)), dim=1)
    return emb.reshape(1, grid_h, grid_w, dim).permute(0, 3, 1, 2)


def flow_embedding(xy: Tensor, channels: int) -> Tensor:
    """(B, N, 2) displacements -> (B, N, 2*channels) interleaved sin/cos per axis."""
    freq = torch.arange(0, channels, 2, device=xy.device, dtype=torch.float32) * (1000.0 / channels)
    parts = []
    for axis in range(2):
        angles = xy[..., axis : axis + 1].float() * freq
        pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # sin at even, cos at odd
        parts.append(pe)
    return torch.cat(parts, dim=-1)


class CorrelationPyramid:
    """Feature maps at ``levels`` scales; ``sample`` correlates track features with a
    (2r+1)^2 window around each track position at every level."""

    def __init__(self, fmaps: Tensor, levels: int, radius: int) -> None:
        B, S, C, H, W = fmaps.shape
        self.radius = radius
        self.pyramid = [fmaps]
        for _ in range(levels - 1):
            prev = self.pyramid[-1]
            pooled = F.avg_pool2d(prev.reshape(B * S, C, *prev.shape[-2:]), kernel_size=2, stride=2)
            self.pyramid.append(pooled.reshape(B, S, C, *pooled.shape[-2:]))
        offsets = torch.linspace(-radius, radius, 2 * radius + 1, device=fmaps.device, dtype=fmaps.dtype)
        # window[a, b] = (offsets[a], offsets[b]) as (dx, dy): the layout the weights were trained on
        self.window = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1)

    def sample(self, targets: Tensor, coords: Tensor) -> Tensor:
        """targets (B, S, N, C), coords (B, S, N, 2) -> (B, S, N, levels * (2r+1)^2)."""
        B, S, N, C = targets.shape
        k = 2 * self.radius + 1
        out = []
        for level, fmaps in enumerate(self.pyramid):
            H, W = fmaps.shape[-2:]
            corr = targets @ fmaps.reshape(B, S, C, H * W) / math.sqrt(C)
            centre = coords.reshape(B * S * N, 1, 1, 2) / 2**level
            grid = centre + self.window.to(coords.dtype).view(1, k, k, 2)
            sampled = sample_bilinear(corr.reshape(B * S * N, 1, H, W), grid, padding_mode="zeros")
            out.append(sampled.view(B, S, N, -1))
        return torch.cat(out, dim=-1)


# ----------------------------------------------------------------------------- update transformer


class AttnBlock(nn.Module):
    """Self-attention block as trained: the residual adds to the *normalised* input.

    Attention runs with ``need_weights=True`` (the reference call): it selects the same math
    kernel, so tracks match the reference bit for bit; the fast path differs by ~1e-6, which the
    iterative refinement amplifies."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x)
        x = x + self.attn(x, x, x, need_weights=True)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.norm1(x)
        context = self.norm_context(context)
        x = x + self.cross_attn(x, context, context, need_weights=True)[0]
        return x + self.mlp(self.norm2(x))


class UpdateFormer(nn.Module):
    """Alternates attention along time (per track) and space (tracks <-> virtual tracks)."""

    def __init__(
        self,
        input_dim: int,
        hidden: int,
        output_dim: int,
        *,
        depth: int = 6,
        num_heads: int = 8,
        virtual_tracks: int = 64,
    ) -> None:
        super().__init__()
        self.num_virtual = virtual_tracks
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden)
        self.output_norm = nn.LayerNorm(hidden)
        self.flow_head = nn.Linear(hidden, output_dim)
        self.virual_tracks = nn.Parameter(torch.zeros(1, virtual_tracks, 1, hidden))  # (sic) checkpoint name
        self.time_blocks = nn.ModuleList(AttnBlock(hidden, num_heads) for _ in range(depth))
        self.space_virtual_blocks = nn.ModuleList(AttnBlock(hidden, num_heads) for _ in range(depth))
        self.space_point2virtual_blocks = nn.ModuleList(
            CrossAttnBlock(hidden, num_heads) for _ in range(depth)
        )
        self.space_virtual2point_blocks = nn.ModuleList(
            CrossAttnBlock(hidden, num_heads) for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        """x (B, N, T, input_dim) -> (B, N, T, output_dim)."""
        tokens = self.input_transform(self.input_norm(x))
        init = tokens
        B, _, T, D = tokens.shape
        tokens = torch.cat((tokens, self.virual_tracks.expand(B, -1, T, -1)), dim=1)
        N = tokens.shape[1]
        for time_block, v2p, virt, p2v in zip(
            self.time_blocks,
            self.space_virtual2point_blocks,
            self.space_virtual_blocks,
            self.space_point2virtual_blocks,
        ):
            tokens = time_block(tokens.reshape(B * N, T, D)).view(B, N, T, D)
            space = tokens.permute(0, 2, 1, 3).reshape(B * T, N, D)
            points, virtual = space[:, : N - self.num_virtual], space[:, N - self.num_virtual :]
            virtual = virt(v2p(virtual, points))
            points = p2v(points, virtual)
            tokens = torch.cat((points, virtual), dim=1).view(B, T, N, D).permute(0, 2, 1, 3)
        tokens = tokens[:, : N - self.num_virtual] + init
        return self.flow_head(self.output_norm(tokens))


class TrackPredictor(nn.Module):
    def __init__(
        self,
        latent_dim: int = 128,
        *,
        stride: int = 2,
        levels: int = 7,
        radius: int = 4,
        hidden: int = 384,
        max_scale: float = 518.0,
    ) -> None:
        super().__init__()
        self.latent_dim, self.stride, self.levels, self.radius = latent_dim, stride, levels, radius
        self.max_scale = max_scale
        self.corr_mlp = Mlp(levels * (2 * radius + 1) ** 2, hidden, latent_dim)
        self.transformer_dim = 3 * latent_dim + 4
        self.query_ref_token = nn.Parameter(torch.zeros(1, 2, self.transformer_dim))
        self.updateformer = UpdateFormer(self.transformer_dim, hidden, latent_dim + 2)
        self.fmap_norm = nn.LayerNorm(latent_dim)
        self.ffeat_norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1))

    def forward(
        self, query_points: Tensor, fmaps: Tensor, iterations: int
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """query_points (B, N, 2) pixels in view 0, fmaps (B, S, C, h, w) ->
        (tracks per iteration (B, S, N, 2) in pixels, visibility (B, S, N), confidence (B, S, N))."""
        B, N, _ = query_points.shape
        _, S, C, h, w = fmaps.shape
        fmaps = self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
        coords = (query_points / float(self.stride)).reshape(B, 1, N, 2).repeat(1, S, 1, 1)
        query_coords = coords[:, 0].clone()
        track_feats = sample_points(fmaps[:, 0], coords[:, 0]).unsqueeze(1).repeat(1, S, 1, 1)
        pyramid = CorrelationPyramid(fmaps, self.levels, self.radius)
        pos_embed = sincos_grid_embedding(self.transformer_dim, h, w).to(fmaps.device, fmaps.dtype)
        query_pos = sample_points(pos_embed.expand(B, -1, -1, -1), query_coords).reshape(B * N, 1, -1)
        ref = torch.cat(
            (self.query_ref_token[:, :1], self.query_ref_token[:, 1:].expand(-1, S - 1, -1)), dim=1
        )

        history = []
        for _ in range(iterations):
            coords = coords.detach()
            corr = self.corr_mlp(
                pyramid.sample(track_feats, coords).permute(0, 2, 1, 3).reshape(B * N, S, -1)
            )
            flows = (coords - coords[:, :1]).permute(0, 2, 1, 3).reshape(B * N, S, 2)
            flow_emb = torch.cat(
                (flow_embedding(flows, self.latent_dim // 2), flows / self.max_scale, flows / self.max_scale),
                dim=-1,
            )
            feats = track_feats.permute(0, 2, 1, 3).reshape(B * N, S, self.latent_dim)
            x = torch.cat((flow_emb, corr, feats), dim=2) + query_pos + ref.to(fmaps.dtype)
            delta = self.updateformer(x.view(B, N, S, -1)).reshape(B * N, S, -1)
            feats = feats.reshape(-1, self.latent_dim)
            feats = self.ffeat_updater(self.ffeat_norm(delta[..., 2:].reshape(-1, self.latent_dim))) + feats
            track_feats = feats.reshape(B, N, S, self.latent_dim).permute(0, 2, 1, 3)
            coords = coords + delta[..., :2].reshape(B, N, S, 2).permute(0, 2, 1, 3)
            coords[:, 0] = query_coords  # the query frame is given, never moved
            history.append(coords * self.stride)

        flat = track_feats.reshape(B * S * N, self.latent_dim)
        vis = torch.sigmoid(self.vis_predictor(flat)).reshape(B, S, N)
        conf = torch.sigmoid(self.conf_predictor(flat)).reshape(B, S, N)
        return history, vis, conf


class TrackHead(nn.Module):
    def __init__(self, dim_in: int, arch: VGGTArch) -> None:
        super().__init__()
        self.iterations = arch.track_iterations
        self.feature_extractor = DPTHead(
            dim_in,
            patch_size=arch.patch_size,
            layers=arch.dpt_layers,
            features=arch.track_features,
            out_channels=arch.dpt_out_channels,
            feature_only=True,
            down_ratio=2,
            pos_embed=False,
            frames_chunk=arch.dpt_frames_chunk,
        )
        self.tracker = TrackPredictor(arch.track_features)

    def forward(self, layers: dict[int, Tensor], images: Tensor, patch_start_idx: int, query_points: Tensor):
        """-> (track (B, S, N, 2) pixels, vis (B, S, N), conf (B, S, N))."""
        B, S, _, H, W = images.shape
        if query_points.dim() == 2:
            query_points = query_points.unsqueeze(0)
        if query_points.dim() != 3 or query_points.shape[-1] != 2 or query_points.shape[0] not in (1, B):
            raise InputError(
                f"query_points must be (N, 2) or (B={B}, N, 2) pixels; got {tuple(query_points.shape)}"
            )
        smallest = 2 * 2 ** (self.tracker.levels - 1)  # the coarsest pyramid level needs >= 1 pixel
        if min(H, W) < smallest:
            raise InputError(f"tracking needs images of at least {smallest} pixels per side; got {H}x{W}")
        dtype = self.tracker.fmap_norm.weight.dtype
        query_points = query_points.to(images.device, dtype).expand(B, -1, -1)
        fmaps = self.feature_extractor(layers, (H, W), patch_start_idx)
        history, vis, conf = self.tracker(query_points, fmaps, self.iterations)
        return history[-1], vis, conf
