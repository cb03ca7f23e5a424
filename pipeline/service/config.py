"""Configuration of the scene side of ``tomeray serve`` (defaults: ``configs/scenes.yaml``; ``tomeray
config scenes``). Overrides on the ``tomeray serve`` command line whose keys are these
(``limits.max_points``, ``limits.default_points``, ``recon.*``) go here, the others to the search
service's configuration (``configs/serve.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tomeray.models.errors import ConfigError
from tomeray.models.vggt import VGGTModelConfig

__all__ = ["HitReconConfig", "SceneLimits", "ScenesConfig", "split_scene_overrides", "validate_scenes"]


@dataclass
class SceneLimits:
    default_points: int = 1_000_000  # points sent when a request does not say (?max=N; capped by max_points)
    max_points: int = 5_000_000  # the most points one request gets


@dataclass
class HitReconConfig:
    """Reconstructions of a search hit's clip (``POST /api/videos/{id}/reconstruct``)."""

    out: str | None = None  # reconstruction output they land in (None: <first index>/scenes)
    views: int = 16  # frames sampled evenly in the hit's [start_s, end_s]
    max_jobs: int = 1  # reconstructions running or queued at once; more are refused (429)
    model: VGGTModelConfig = field(default_factory=VGGTModelConfig)  # as 'tomeray reconstruct'


@dataclass
class ScenesConfig:
    limits: SceneLimits = field(default_factory=SceneLimits)
    recon: HitReconConfig = field(default_factory=HitReconConfig)


def split_scene_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """``(scene overrides, search overrides)`` by key."""
    mine, other = [], []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        ours = key.startswith("recon.") or key in ("limits.max_points", "limits.default_points")
        (mine if ours else other).append(item)
    return mine, other


def validate_scenes(cfg: ScenesConfig) -> None:
    lim = cfg.limits
    if lim.default_points < 1 or lim.max_points < 1:
        raise ConfigError(f"limits.default_points and limits.max_points must be at least 1, got "
                          f"{lim.default_points} and {lim.max_points}")
    if cfg.recon.views < 1 or cfg.recon.max_jobs < 1:
        raise ConfigError("recon.views and recon.max_jobs must be at least 1")
