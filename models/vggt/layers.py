"""Transformer building blocks of VGGT: attention (2D RoPE, QK-norm, SDPA), MLP, layer scale.

Parameter names follow the official checkpoint (``qkv``, ``q_norm``, ``proj``, ``ls1.gamma``,
``mlp.fc1``, ...), so ``load_state_dict(strict=True)`` works on the released weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function


class Matching(Protocol):
    """A token merge decided for one attention call (see ``models.vggt.fast``): ``merge`` maps
    (B, N, C) tokens to (B, M, C) slots, ``unmerge`` maps them back, ``attn_bias`` is None or
    (B, 1, 1, M) added to the attention logits."""

    attn_bias: Tensor | None

    def merge(self, x: Tensor) -> Tensor: ...

    def unmerge(self, x: Tensor) -> Tensor: ...


# Builds a Matching from the attention input of a block: (B, N, C) -> Matching.
Merger = Callable[[Tensor], Matching]


class RopeTables:
    """cos/sin of 2D rotary embeddings at the (y, x) position of each of a frame's P tokens.

    Built once per forward pass and shared by all blocks. Every frame has the same positions,
    so one (P, D) table serves frame attention (N = P) and global attention (N = S*P) alike.
    """

    def __init__(self, cos: Tensor, sin: Tensor) -> None:
        self.tokens_per_frame, dim = cos.shape
        # Rotating a half [a, b] gives [-b, a]: swap the quarters and fold the sign into sin.
        sign = torch.ones(4, dim // 4, dtype=sin.dtype, device=sin.device)
        sign[0::2] = -1
        self._fp32 = (cos, sin * sign.flatten())
        self._tables: dict[torch.dtype, tuple[Tensor, Tensor]] = {cos.dtype: self._fp32}

    def _cos_sin(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if dtype not in self._tables:
            self._tables[dtype] = tuple(table.to(dtype) for table in self._fp32)
        return self._tables[dtype]

    @staticmethod
    def _rotate(t: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
        swapped = t.unflatten(-1, (2, 2, t.shape[-1] // 4)).flip(-2).flatten(-3)  # [a b | c d] -> [b a | d c]
        return t * cos + swapped * signed_sin

    def apply(self, t: Tensor) -> Tensor:
        """Rotate ``t`` (B, heads, N, D), N a multiple of P: half of D by y, the other half by x."""
        cos, signed_sin = self._cos_sin(t.dtype)
        B, H, N, D = t.shape
        t = t.reshape(B, H, N // self.tokens_per_frame, self.tokens_per_frame, D)
        return self._rotate(t, cos, signed_sin).reshape(B, H, N, D)

    def apply_tokens(self, t: Tensor) -> Tensor:
        """The same rotation of ``t`` in token-major layout (B, N, heads, D)."""
        cos, signed_sin = self._cos_sin(t.dtype)
        B, N, H, D = t.shape
        t = t.reshape(B, N // self.tokens_per_frame, self.tokens_per_frame, H, D)
        return self._rotate(t, cos[:, None], signed_sin[:, None]).reshape(B, N, H, D)


class RotaryEmbedding2D(nn.Module):
    """2D RoPE: half of each head rotates with the token's row, the other half with its column.

    Holds no parameters; ``tables(positions, head_dim)`` returns the per-token rotation.
    """

    def __init__(self, base: float = 100.0) -> None:
        super().__init__()
        self.base = base

    def tables(self, positions: Tensor, head_dim: int) -> RopeTables:
        """``positions`` (P, 2) integer (y, x) of one frame's tokens -> float32 tables (P, head_dim)."""
        half = head_dim // 2  # channels per axis
        exponents = torch.arange(0, half, 2, device=positions.device).float() / half
        inv_freq = 1.0 / (self.base**exponents)
        steps = int(positions.max()) + 1
        angles = torch.outer(torch.arange(steps, device=positions.device, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)  # (steps, half)
        cos_axis, sin_axis = angles.cos(), angles.sin()
        y, x = positions[:, 0], positions[:, 1]
        cos = torch.cat((F.embedding(y, cos_axis), F.embedding(x, cos_axis)), dim=-1)
        sin = torch.cat((F.embedding(y, sin_axis), F.embedding(x, sin_axis)), dim=-1)
        return RopeTables(cos, sin)


class Attention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention``.

    Optional QK-norm (LayerNorm per head) and 2D RoPE. With a ``merger`` the attention runs on
    merged tokens: q, k and v are merged after RoPE (each token was rotated at its own position,
    so positions follow the tokens into the merge), attention uses the merge's size bias, the
    output projection runs on the merged tokens, and the result is unmerged back to N tokens.
    The merged path works token-major, (B, N, 3 * C) with q, k, v packed per token, so that one
    row gather/scatter merges all three.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor, rope: RopeTables | None = None, merger: Merger | None = None) -> Tensor:
        if merger is not None:
            return self._merged(x, rope, merger)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope.apply(q), rope.apply(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def _merged(self, x: Tensor, rope: RopeTables | None, merger: Merger) -> Tensor:
        B, N, C = x.shape
        matching = merger(x)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(2)  # (B, N, heads, D)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope.apply_tokens(q), rope.apply_tokens(k)
        with record_function("merge.gather_scatter"):
            merged = matching.merge(torch.stack((q, k, v), dim=2).view(B, N, 3 * C))
        M = merged.shape[1]
        q, k, v = merged.view(B, M, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = matching.attn_bias
        if bias is not None:
            bias = bias.to(q.dtype)
        with record_function("merge.attention"):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.proj(out.transpose(1, 2).reshape(B, M, C))
        with record_function("merge.gather_scatter"):
            return matching.unmerge(out)


class Mlp(nn.Module):
    def __init__(
        self, in_features: int, hidden_features: int, out_features: int | None = None, bias: bool = True
    ):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with layer scale: x + ls1(attn(norm1 x)), then the MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 1.0,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale_init)

    def forward(self, x: Tensor, rope: RopeTables | None = None, merger: Merger | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope=rope, merger=merger))
        return x + self.ls2(self.mlp(self.norm2(x)))
