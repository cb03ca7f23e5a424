"""Configuration of a VGGT model: which architecture, which weights, how global attention merges."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tomeray.models.errors import ConfigError

# Named sets of the merge options below (``MergeConfig.preset``); an option set explicitly wins
# over its preset. What each option changes, measured, is in the README's VGGT section.
# tomeray's FastVGGT: corrected region geometry, protected tokens out of the matching,
# proportional attention, float32 scores, a fresh matching in every global block.
_DEFAULT_MERGE = dict(region=2, region_layout="aligned", protected="removed", proportional_attention=True,
                      similarity="float32", candidates="all", rematch_every=1, seed=0)
MERGE_PRESETS: dict[str, dict] = {
    "default": _DEFAULT_MERGE,
    # FastVGGT (mystorm16/FastVGGT) exactly as its code computes, float32 scores.
    "reference": {**_DEFAULT_MERGE, "region_layout": "reference", "protected": "duplicated",
                  "proportional_attention": False, "seed": 33},
    # The cheapest matching: each source only scores view 0 and its own view's destinations.
    "fast": {**_DEFAULT_MERGE, "candidates": "local"},
}

CHOICES = {
    "region_layout": ("aligned", "reference"),
    "protected": ("removed", "duplicated"),
    "similarity": ("float32", "bfloat16"),
    "candidates": ("all", "local"),
}

TYPES = {
    "enabled": (bool,),
    "proportional_attention": (bool,),
    "start_block": (int,),
    "region": (int,),
    "rematch_every": (int,),
    "seed": (int,),
    "ratio": (int, float),
    "protect_ratio": (int, float),
}
TYPE_NAMES = {(bool,): "true or false", (int,): "an integer", (int, float): "a number"}


@dataclass
class MergeConfig:
    """FastVGGT token merging inside global attention (merge -> attend -> unmerge).

    Every mode merges from ``start_block`` on, removes ``ratio`` of the tokens (in practice every
    mergeable source: the count is capped by the source set), protects an evenly spaced
    ``protect_ratio`` of them and draws one destination per ``region`` x ``region`` patch cell of
    every non-reference view. The options left at None take the value of ``preset``:

    - ``region_layout``: "aligned" cells tile the patch grid (border cells included);
      "reference" is FastVGGT's sheared layout (row length 2*floor(w/2): with an odd grid width
      the cells slant and the last patches of a view are never destinations).
    - ``protected``: "removed": protected tokens neither merge nor receive merges; "duplicated"
      (FastVGGT): they still receive merges and also attend as an unmerged copy of themselves.
    - ``proportional_attention``: add log(size) to the logits of merged keys, so a key standing
      for k tokens weighs like them (exact when they are equal); FastVGGT does not.
    - ``similarity``: dtype of the source-destination scores: "float32", or "bfloat16" as
      FastVGGT computes them (ties then break in FastVGGT's destination order).
    - ``candidates``: "all" destinations, or "local": only view 0's tokens and the source's own
      view's destinations (about 30x fewer scores at 128 views).
    - ``rematch_every``: a matching is computed in one global block and reused by the next
      ``rematch_every - 1`` merging blocks (1: every block matches anew, as FastVGGT does).
    - ``seed``: seeds the destination draws (CPU generator); same seed and layout, same merge.
    """

    enabled: bool = True
    preset: str = "default"  # see MERGE_PRESETS: default | reference | fast
    start_block: int = 0  # first global block (0-based) that merges
    ratio: float = 0.9  # tokens to remove, as a fraction of all tokens of a scene
    protect_ratio: float = 0.1  # fraction of tokens (evenly spaced) never merged away
    region: int | None = None  # side, in patches, of the cells that each give one destination
    region_layout: str | None = None
    protected: str | None = None
    proportional_attention: bool | None = None
    similarity: str | None = None
    candidates: str | None = None
    rematch_every: int | None = None
    seed: int | None = None

    def resolved(self) -> MergeConfig:
        """A copy with every option set: the explicit ones, the rest from ``preset``."""
        if self.preset not in MERGE_PRESETS:
            raise ConfigError(
                f"unknown merge.preset {self.preset!r}; choose one of {', '.join(MERGE_PRESETS)}"
            )
        preset = MERGE_PRESETS[self.preset]
        filled = {k: v for k, v in preset.items() if getattr(self, k) is None}
        cfg = dataclasses.replace(self, **filled)
        for key, kinds in TYPES.items():
            value = getattr(cfg, key)
            # bool is an int in Python; "region: true" is a mistake, not 1
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ConfigError(f"merge.{key} must be {TYPE_NAMES[kinds]}; got {value!r}")
        for key, choices in CHOICES.items():
            value = getattr(cfg, key)
            if value not in choices:
                raise ConfigError(f"merge.{key} must be one of {', '.join(choices)}; got {value!r}")
        return cfg

    def options(self) -> dict:
        """The resolved options as a plain dict (benchmarks and manifests record it)."""
        return dataclasses.asdict(self.resolved())


@dataclass
class VGGTModelConfig:
    arch: str = "vggt-1b"
    # "facebook/VGGT-1B" (Hugging Face hub id), a local .pt / .safetensors file, or "none"
    # (random initialisation, seeded by ``seed``; only for tests and smoke runs).
    pretrained: str = "facebook/VGGT-1B"
    merge: MergeConfig = field(default_factory=MergeConfig)
    seed: int = 0
