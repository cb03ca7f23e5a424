"""VGGT prediction heads: camera (iterative pose refinement) and DPT (dense depth / points).

Heads read the cached aggregator layers ``{layer: (B, S, P, 2C)}`` and always compute in the
dtype of their own parameters (float32 unless the whole model was cast), with autocast off:
small errors in poses and depths matter more than the time the heads take.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tomeray.models.vggt.layers import Block, Mlp
from torch import Tensor, nn

# ----------------------------------------------------------------------------- activations


def inverse_log(y: Tensor) -> Tensor:
    """sign(y) * (exp|y| - 1): inverse of the log scaling the point head was trained with."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


def activate_pose(pose: Tensor) -> Tensor:
    """Translation and quaternion are linear; the two fields of view are ReLU'd (non-negative)."""
    return torch.cat((pose[..., :7], F.relu(pose[..., 7:])), dim=-1)


def activate_dense(out: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    """(N, C, H, W) head output -> values (N, H, W, C-1) and confidence 1 + exp(last channel)."""
    fmap = out.permute(0, 2, 3, 1)
    values, conf = fmap[..., :-1], fmap[..., -1]
    if activation == "exp":
        values = torch.exp(values)
    elif activation == "inv_log":
        values = inverse_log(values)
    else:  # pragma: no cover - guarded by the constructor
        raise ValueError(activation)
    return values, 1 + conf.exp()


# ----------------------------------------------------------------------------- camera head


class CameraHead(nn.Module):
    """Predicts the 9-number pose encoding of each view from its camera token.

    Pose encoding: translation (3), quaternion x, y, z, w (4), field of view height, width (2).
    Starting from a learned empty pose, each iteration modulates the normalised camera tokens
    with the current estimate (adaptive LayerNorm: shift, scale, gate), runs the trunk and adds
    a predicted delta to the estimate.
    """

    POSE_DIM = 9

    def __init__(
        self,
        dim_in: int,
        *,
        trunk_depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 0.01,
        iterations: int = 4,
    ) -> None:
        super().__init__()
        self.iterations = iterations
        self.trunk = nn.Sequential(
            *(
                Block(dim_in, num_heads, mlp_ratio=mlp_ratio, layer_scale_init=layer_scale_init)
                for _ in range(trunk_depth)
            )
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.POSE_DIM))
        self.embed_pose = nn.Linear(self.POSE_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, self.POSE_DIM)

    def forward(self, last_layer: Tensor, iterations: int | None = None) -> list[Tensor]:
        """last_layer (B, S, P, 2C) -> pose encodings (B, S, 9), one per refinement iteration."""
        tokens = self.token_norm(last_layer[:, :, 0])
        B, S, _ = tokens.shape
        pose: Tensor | None = None
        history = []
        for _ in range(iterations or self.iterations):
            condition = self.empty_pose_tokens.expand(B, S, -1) if pose is None else pose.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(condition)).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            pose = delta if pose is None else pose + delta
            history.append(activate_pose(pose))
        return history


# ----------------------------------------------------------------------------- DPT head


def _interpolate(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, corner-aligned resize; split along the batch when the output would overflow int32
    indexing inside the kernel (long sequences at full resolution)."""
    limit = 1_610_612_736
    elements = size[0] * size[1] * x.shape[0] * x.shape[1]
    if elements <= limit:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    chunks = x.chunk(elements // limit + 1, dim=0)
    return torch.cat([F.interpolate(c, size=size, mode="bilinear", align_corners=True) for c in chunks])


class ResidualConvUnit(nn.Module):
    """relu -> conv -> relu -> conv, added to relu(x).

    The residual is the *activated* input: the reference applies an in-place ReLU to its input
    before the skip connection, and the released weights were trained that way.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class FusionBlock(nn.Module):
    """RefineNet-style fusion: add the refined skip feature, refine, upsample, 1x1 conv."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        if self.has_residual:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = _interpolate(x, size if size is not None else (x.shape[-2] * 2, x.shape[-1] * 2))
        return self.out_conv(x)


def _uv_embedding(channels: int, grid_h: int, grid_w: int, aspect: float, device: torch.device) -> Tensor:
    """Sinusoidal embedding (channels, grid_h, grid_w) of a centred uv grid normalised by its diagonal."""
    diag = math.sqrt(aspect**2 + 1.0)
    span_x, span_y = aspect / diag, 1.0 / diag
    xs = torch.linspace(
        -span_x * (grid_w - 1) / grid_w, span_x * (grid_w - 1) / grid_w, grid_w, device=device
    )
    ys = torch.linspace(
        -span_y * (grid_h - 1) / grid_h, span_y * (grid_h - 1) / grid_h, grid_h, device=device
    )
    u, v = torch.meshgrid(xs, ys, indexing="xy")  # (grid_h, grid_w) each

    def sincos(coord: Tensor, dim: int) -> Tensor:
        omega = torch.arange(dim // 2, dtype=torch.float64, device=device) / (dim / 2.0)
        omega = 1.0 / 100.0**omega
        angles = coord.reshape(-1).double()[:, None] * omega[None]
        return torch.cat((angles.sin(), angles.cos()), dim=1).float()

    emb = torch.cat((sincos(u, channels // 2), sincos(v, channels // 2)), dim=-1)
    return emb.view(grid_h, grid_w, channels).permute(2, 0, 1)


class DPTHead(nn.Module):
    """Dense prediction from four aggregator layers (Vision Transformers for Dense Prediction).

    Each layer's patch tokens become a feature map; the four maps are resized to strides
    4, 8, 16 and 32 (in patches: x4, x2, x1, x0.5), fused coarse-to-fine and upsampled to the
    image. ``activation`` maps the first channels to values (``exp`` for depth, ``inv_log`` for
    points) and the last one to a confidence. ``feature_only`` returns the fused features.
    """

    def __init__(
        self,
        dim_in: int,
        *,
        patch_size: int,
        layers: tuple[int, ...],
        output_dim: int = 4,
        activation: str = "inv_log",
        features: int = 256,
        out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024),
        pos_embed: bool = True,
        feature_only: bool = False,
        down_ratio: int = 1,
        frames_chunk: int = 8,
    ) -> None:
        super().__init__()
        if activation not in ("exp", "inv_log"):
            raise ValueError(f"unknown DPT activation {activation!r}")
        self.patch_size = patch_size
        self.layers = tuple(layers)
        self.activation = activation
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        self.frames_chunk = frames_chunk
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, oc, kernel_size=1) for oc in out_channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        scratch = nn.Module()
        for i, oc in enumerate(out_channels, start=1):
            setattr(scratch, f"layer{i}_rn", nn.Conv2d(oc, features, kernel_size=3, padding=1, bias=False))
        scratch.refinenet1 = FusionBlock(features)
        scratch.refinenet2 = FusionBlock(features)
        scratch.refinenet3 = FusionBlock(features)
        scratch.refinenet4 = FusionBlock(features, has_residual=False)
        if feature_only:
            scratch.output_conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        else:
            scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
            scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, output_dim, kernel_size=1),
            )
        self.scratch = scratch

    def forward(self, layers: dict[int, Tensor], image_hw: tuple[int, int], patch_start_idx: int):
        """layers {i: (B, S, P, 2C)} -> (values (B, S, H, W, k), conf (B, S, H, W)), or features
        (B, S, F, H/down, W/down) when ``feature_only``. Frames are processed in chunks."""
        S = next(iter(layers.values())).shape[1]
        parts = [
            self._forward_frames(layers, image_hw, patch_start_idx, start, min(start + self.frames_chunk, S))
            for start in range(0, S, self.frames_chunk)
        ]
        if self.feature_only:
            return torch.cat(parts, dim=1)
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def _add_pos_embed(self, x: Tensor, image_hw: tuple[int, int]) -> Tensor:
        H, W = image_hw
        emb = _uv_embedding(x.shape[1], x.shape[-2], x.shape[-1], W / H, x.device)
        return x + (emb * 0.1).to(x.dtype)

    def _forward_frames(self, layers, image_hw, patch_start_idx, start, stop):
        H, W = image_hw
        grid_h, grid_w = H // self.patch_size, W // self.patch_size
        dtype = self.norm.weight.dtype
        maps = []
        for i, layer in enumerate(self.layers):
            x = layers[layer][:, start:stop, patch_start_idx:].to(dtype)
            B, S = x.shape[:2]
            x = self.norm(x.reshape(B * S, grid_h * grid_w, -1))
            x = x.permute(0, 2, 1).reshape(B * S, -1, grid_h, grid_w)
            x = self.projects[i](x)
            if self.pos_embed:
                x = self._add_pos_embed(x, image_hw)
            maps.append(self.resize_layers[i](x))

        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(m) for i, m in enumerate(maps, start=1))
        del maps
        out = s.refinenet4(l4, size=l3.shape[2:])
        out = s.refinenet3(out, l3, size=l2.shape[2:])
        out = s.refinenet2(out, l2, size=l1.shape[2:])
        out = s.refinenet1(out, l1)
        out = s.output_conv1(out)
        out = _interpolate(
            out,
            (
                int(grid_h * self.patch_size / self.down_ratio),
                int(grid_w * self.patch_size / self.down_ratio),
            ),
        )
        if self.pos_embed:
            out = self._add_pos_embed(out, image_hw)
        if self.feature_only:
            return out.view(B, S, *out.shape[1:])
        values, conf = activate_dense(s.output_conv2(out), self.activation)
        return values.view(B, S, *values.shape[1:]), conf.view(B, S, *conf.shape[1:])
