"""DINOv2-style ViT with register tokens: turns each image into patch tokens for the aggregator.

Only the normalised patch tokens leave this module (the class and register tokens are used
inside the ViT and then dropped), as in VGGT. The learned position embedding was trained for a
square ``img_size`` grid and is resized (bicubic, antialiased) to the input's patch grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tomeray.models.vggt.layers import Block
from torch import Tensor, nn


class PatchProjection(nn.Module):
    """Non-overlapping patches -> vectors (a strided convolution)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """DINOv2 ViT (pre-norm blocks, layer scale, LayerNorm eps 1e-6) returning patch tokens."""

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        num_register_tokens: int,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.base_grid = img_size // patch_size
        self.patch_embed = PatchProjection(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.base_grid**2, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        # Used only by DINOv2's masked pretraining; kept so the checkpoint loads strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, layer_scale_init=layer_scale_init, norm_eps=1e-6)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def position_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        """Position embedding (1, 1 + grid_h*grid_w, C) for a grid_h x grid_w patch grid."""
        if grid_h == grid_w == self.base_grid:
            return self.pos_embed
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        g, dim = self.base_grid, pos.shape[-1]
        patch_pos = F.interpolate(
            patch_pos.reshape(1, g, g, dim).permute(0, 3, 1, 2),
            size=(grid_h, grid_w),
            mode="bicubic",
            antialias=True,
        )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat((cls_pos, patch_pos), dim=1).to(self.pos_embed.dtype)

    def forward(self, images: Tensor) -> Tensor:
        """images (N, 3, H, W), normalised -> patch tokens (N, H/p * W/p, C) after the final norm."""
        n, _, h, w = images.shape
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(n, -1, -1), x), dim=1)
        x = x + self.position_embedding(h // self.patch_size, w // self.patch_size).to(x.dtype)
        x = torch.cat((x[:, :1], self.register_tokens.expand(n, -1, -1), x[:, 1:]), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.num_register_tokens :]
