"""VGGT (Visual Geometry Grounded Transformer) with FastVGGT merged global attention.

Public surface::

    from tomeray.models.vggt import MergeConfig, VGGTModelConfig, create_vggt, list_archs
    model = create_vggt(VGGTModelConfig(arch="vggt-1b", pretrained="facebook/VGGT-1B"))
    out = model(images)  # (S, 3, H, W) in [0, 1] -> pose_enc, depth, world_points, ...

Geometry helpers live in ``models.vggt.geometry``, image preprocessing in
``models.vggt.preprocess``.
"""

from tomeray.models.vggt.config import MergeConfig, VGGTModelConfig
from tomeray.models.vggt.factory import create_vggt
from tomeray.models.vggt.model import VGGT
from tomeray.models.vggt.registry import VGGTArch, get_arch, list_archs

__all__ = ["VGGT", "MergeConfig", "VGGTArch", "VGGTModelConfig", "create_vggt", "get_arch", "list_archs"]
