"""Configuration of a VGGT model: which architecture, which weights, how global attention merges."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MergeConfig:
    """FastVGGT token merging inside global attention (merge -> attend -> unmerge).

    Defaults are FastVGGT's: merging from the first global block, 90 % of the tokens removed
    (in practice every mergeable source token, the count is capped by the source set), 10 % of
    the tokens protected, one destination per 2x2 patch region of every non-reference frame.
    """

    enabled: bool = True
    start_block: int = 0  # first global block (0-based) that merges
    ratio: float = 0.9  # tokens to remove, as a fraction of all tokens of a scene
    protect_ratio: float = 0.1  # fraction of tokens (evenly spaced) never merged
    region: int = 2  # side, in patches, of the regions that each contribute one destination
    seed: int = 0  # seeds the destination sampling; same seed and shape -> same merge
    # Add log(size) to the attention logits of merged keys, so a key that stands for k tokens
    # weighs like those k tokens. FastVGGT does not; it is exact when merged tokens are equal.
    proportional_attention: bool = True


@dataclass
class VGGTModelConfig:
    arch: str = "vggt-1b"
    # "facebook/VGGT-1B" (Hugging Face hub id), a local .pt / .safetensors file, or "none"
    # (random initialisation, seeded by ``seed``; only for tests and smoke runs).
    pretrained: str = "facebook/VGGT-1B"
    merge: MergeConfig = field(default_factory=MergeConfig)
    seed: int = 0
