"""TempMe: temporal token merging inside an open_clip ViT (see ``encoder`` for the method).

    from tomeray.models.tempme import VideoModelConfig, create_video_encoder
    enc = create_video_encoder(VideoModelConfig(arch="ViT-B-32", pretrained="openai", preset="tempme"))
"""

from tomeray.models.tempme.encoder import TempMeEncoder, VideoFeatures
from tomeray.models.tempme.factory import VideoModelConfig, create_video_encoder
from tomeray.models.tempme.schedule import (
    CUSTOM,
    POOLINGS,
    PRESETS,
    LayerPlan,
    MergeSchedule,
    preset_schedule,
    resolve_schedule,
)

__all__ = [
    "CUSTOM",
    "POOLINGS",
    "PRESETS",
    "LayerPlan",
    "MergeSchedule",
    "TempMeEncoder",
    "VideoFeatures",
    "VideoModelConfig",
    "create_video_encoder",
    "preset_schedule",
    "resolve_schedule",
]
