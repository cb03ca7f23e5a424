"""Named VGGT architectures.

An architecture is every size the official constructor hard-codes, gathered in one frozen
dataclass so that a reduced model (tests, CPU smoke runs, benchmarks) is the same code with
other numbers. ``vggt-1b`` reproduces ``facebook/VGGT-1B``; ``vggt-tiny`` reproduces the sizes
of the parity fixture in ``tests/fixtures/vggt_tiny_*``; ``vggt-narrow`` is the 1B layout at
width 64 for benchmarks and CPU smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from tomeray.models.errors import ConfigError


@dataclass(frozen=True)
class VGGTArch:
    """Sizes of one VGGT model. ``dpt_layers`` are the aggregator layers the dense heads read."""

    img_size: int = 518  # size the DINOv2 position embedding was trained for
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24  # frame/global block pairs
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    rope_freq: float = 100.0
    layer_scale_init: float = 0.01
    # DINOv2 patch embedding (its width is embed_dim: its tokens enter the aggregator as they are)
    dino_depth: int = 24
    dino_heads: int = 16
    # camera head
    camera_trunk_depth: int = 4
    camera_heads: int = 16
    camera_iterations: int = 4
    # DPT depth / point heads
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_layers: tuple[int, int, int, int] = (4, 11, 17, 23)
    dpt_frames_chunk: int = 8  # frames per head call: bounds head memory for long sequences
    # track head (present in the official checkpoint; optional at run time)
    track_head: bool = True
    track_features: int = 128
    track_iterations: int = 4

    def __post_init__(self) -> None:
        head_dim, rem = divmod(self.embed_dim, self.num_heads)
        if rem or head_dim % 4:
            raise ConfigError(
                f"embed_dim {self.embed_dim} / num_heads {self.num_heads} must give a head size "
                "divisible by 4 (2D RoPE rotates two halves of each head)"
            )
        if any(not 0 <= i < self.depth for i in self.dpt_layers):
            raise ConfigError(f"dpt_layers {self.dpt_layers} must lie in [0, depth={self.depth})")

    @property
    def cached_layers(self) -> tuple[int, ...]:
        """Aggregator layers whose outputs the heads read (the camera head reads the last one)."""
        return tuple(sorted(set(self.dpt_layers) | {self.depth - 1}))

    @property
    def tokens_before_patches(self) -> int:
        """Camera token + register tokens at the start of every frame."""
        return 1 + self.num_register_tokens


_ARCHS: dict[str, VGGTArch] = {
    "vggt-1b": VGGTArch(),
    "vggt-tiny": VGGTArch(
        img_size=98,
        embed_dim=32,
        depth=4,
        num_heads=2,
        dino_depth=2,
        dino_heads=2,
        camera_trunk_depth=2,
        camera_heads=4,
        dpt_features=8,
        dpt_out_channels=(8, 16, 32, 32),
        dpt_layers=(0, 1, 2, 3),
        track_head=False,
        track_features=16,
    ),
    # The 1B layout (24 layers; heads read layers 4, 11, 17, 23) at width 64: benchmarks and CPU
    # smoke runs of long sequences. There are no released weights for it (random init only).
    "vggt-narrow": VGGTArch(
        embed_dim=64,
        num_heads=4,
        dino_depth=2,
        dino_heads=4,
        camera_trunk_depth=1,
        camera_heads=4,
        dpt_features=32,
        dpt_out_channels=(32, 64, 128, 128),
        track_head=False,
        track_features=32,
    ),
}


def list_archs() -> list[str]:
    """Names accepted by ``get_arch`` / ``VGGTModelConfig.arch``."""
    return sorted(_ARCHS)


def get_arch(name: str) -> VGGTArch:
    try:
        return _ARCHS[name]
    except KeyError:
        raise ConfigError(f"unknown VGGT arch {name!r}; choose one of {list_archs()}") from None


__all__ = ["VGGTArch", "get_arch", "list_archs"]
