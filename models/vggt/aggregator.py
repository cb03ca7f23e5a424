"""VGGT aggregator: DINOv2 patch tokens + camera/register tokens, alternating frame/global attention.

Every layer i runs a frame block (attention within each view) and then a global block
(attention across all views of a scene). The output of layer i, for the layers the heads read,
is the concatenation of both blocks' outputs on the channel axis: (B, S, P, 2C). Other layers
are not kept, which bounds memory for long sequences.
"""

from __future__ import annotations

import torch
from tomeray.models.vggt.layers import Block, Merger, RopeTables, RotaryEmbedding2D
from tomeray.models.vggt.patch_embed import DinoViT
from tomeray.models.vggt.registry import VGGTArch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Frames per patch-embedding call: the ViT works frame by frame, so chunking is exact and
# bounds its MLP activations for long sequences.
PATCH_EMBED_CHUNK = 64


class Aggregator(nn.Module):
    def __init__(self, arch: VGGTArch) -> None:
        super().__init__()
        self.arch = arch
        self.patch_size = arch.patch_size
        self.patch_start_idx = arch.tokens_before_patches
        self.patch_embed = DinoViT(
            img_size=arch.img_size,
            patch_size=arch.patch_size,
            embed_dim=arch.embed_dim,
            depth=arch.dino_depth,
            num_heads=arch.dino_heads,
            num_register_tokens=arch.num_register_tokens,
            mlp_ratio=arch.mlp_ratio,
        )
        self.rope = RotaryEmbedding2D(arch.rope_freq)

        def make_block() -> Block:
            return Block(
                arch.embed_dim,
                arch.num_heads,
                mlp_ratio=arch.mlp_ratio,
                layer_scale_init=arch.layer_scale_init,
                qk_norm=True,
            )

        self.frame_blocks = nn.ModuleList(make_block() for _ in range(arch.depth))
        self.global_blocks = nn.ModuleList(make_block() for _ in range(arch.depth))
        # Slot 0 is used by the first (reference) view, slot 1 by all other views.
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, arch.embed_dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, arch.num_register_tokens, arch.embed_dim))

    def special_tokens(self, batch: int, views: int) -> Tensor:
        """Camera + register tokens for every view: (B*S, 1+R, C); view 0 gets its own slot."""
        tokens = torch.cat((self.camera_token, self.register_token), dim=2)  # (1, 2, 1+R, C)
        first = tokens[:, :1].expand(batch, 1, -1, -1)
        others = tokens[:, 1:].expand(batch, views - 1, -1, -1)
        return torch.cat((first, others), dim=1).reshape(batch * views, *tokens.shape[2:])

    def positions(self, grid_h: int, grid_w: int, device: torch.device) -> Tensor:
        """(P, 2) RoPE positions of a frame: 0 for special tokens, (row+1, col+1) for patches."""
        rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
        cols = torch.arange(grid_w, device=device).repeat(grid_h)
        patches = torch.stack((rows, cols), dim=-1) + 1
        special = torch.zeros(self.patch_start_idx, 2, dtype=patches.dtype, device=device)
        return torch.cat((special, patches))

    def embed(self, images: Tensor) -> Tensor:
        """images (B, S, 3, H, W) in [0, 1] -> DINOv2 patch tokens (B*S, H/p*W/p, C)."""
        B, S, _, H, W = images.shape
        mean = images.new_tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
        frames = ((images - mean) / std).reshape(B * S, 3, H, W)
        return torch.cat([self.patch_embed(chunk) for chunk in frames.split(PATCH_EMBED_CHUNK)])

    def forward(
        self, images: Tensor, merger_for_layer: dict[int, Merger] | None = None
    ) -> tuple[dict[int, Tensor], int]:
        """images (B, S, 3, H, W) in [0, 1].

        ``merger_for_layer`` maps a layer index to the merger its global block uses (layers
        missing from it attend over all tokens). Returns ``({layer: (B, S, P, 2C)}, patch_start_idx)``
        for the layers in ``arch.cached_layers``.
        """
        B, S, _, H, W = images.shape
        grid_h, grid_w = H // self.patch_size, W // self.patch_size
        patch_tokens = self.embed(images)
        tokens = torch.cat((self.special_tokens(B, S).to(patch_tokens.dtype), patch_tokens), dim=1)
        _, P, C = tokens.shape

        head_dim = C // self.arch.num_heads
        rope: RopeTables = self.rope.tables(self.positions(grid_h, grid_w, images.device), head_dim)
        mergers = merger_for_layer or {}
        cached = set(self.arch.cached_layers)

        outputs: dict[int, Tensor] = {}
        for i in range(self.arch.depth):
            tokens = self.frame_blocks[i](tokens.reshape(B * S, P, C), rope=rope)
            frame_out = tokens.reshape(B, S, P, C)
            tokens = self.global_blocks[i](tokens.reshape(B, S * P, C), rope=rope, merger=mergers.get(i))
            if i in cached:
                outputs[i] = torch.cat((frame_out, tokens.reshape(B, S, P, C)), dim=-1)
        return outputs, self.patch_start_idx
