"""TempMe: temporal token merging inside an open_clip ViT (see ``encoder`` for the method).

    from tomeray.models.tempme import VideoModelConfig, create_video_encoder
    enc = create_video_encoder(VideoModelConfig(arch="ViT-B-32", pretrained="openai", preset="tempme"))
"""

from tomeray.models.tempme.adapter import (
    ADAPTER_FORMAT_VERSION,
    AdapterInfo,
    adapter_digest,
    load_adapter,
    read_adapter_metadata,
    save_adapter,
)
from tomeray.models.tempme.encoder import TempMeEncoder, VideoFeatures
from tomeray.models.tempme.factory import VideoModelConfig, create_video_encoder
from tomeray.models.tempme.objective import (
    LOGIT_SCALE,
    VideoTextModel,
    all_gather_with_grad,
    contrastive_loss,
)
from tomeray.models.tempme.reference import load_reference_checkpoint, reference_adapter_tensors
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
    "ADAPTER_FORMAT_VERSION",
    "AdapterInfo",
    "CUSTOM",
    "LOGIT_SCALE",
    "POOLINGS",
    "PRESETS",
    "LayerPlan",
    "MergeSchedule",
    "TempMeEncoder",
    "VideoFeatures",
    "VideoModelConfig",
    "VideoTextModel",
    "adapter_digest",
    "all_gather_with_grad",
    "contrastive_loss",
    "create_video_encoder",
    "load_adapter",
    "load_reference_checkpoint",
    "preset_schedule",
    "read_adapter_metadata",
    "reference_adapter_tensors",
    "resolve_schedule",
    "save_adapter",
]
