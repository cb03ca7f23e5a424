"""The VGGT model: aggregator + camera, depth, point (and track) heads, with FastVGGT merging."""

from __future__ import annotations

import torch
from tomeray.models.errors import InputError
from tomeray.models.vggt.aggregator import Aggregator
from tomeray.models.vggt.config import MergeConfig
from tomeray.models.vggt.fast import plan_global_merge, validate_merge_config
from tomeray.models.vggt.heads import CameraHead, DPTHead
from tomeray.models.vggt.memory import check_memory
from tomeray.models.vggt.registry import VGGTArch
from tomeray.models.vggt.track import TrackHead
from torch import Tensor, nn


class VGGT(nn.Module):
    """Visual Geometry Grounded Transformer.

    ``forward(images)`` takes (S, 3, H, W) or (B, S, 3, H, W) RGB in [0, 1], H and W multiples
    of the patch size, view 0 being the reference camera, and returns a dict:
    ``pose_enc`` (B, S, 9), ``pose_enc_list`` (one per camera-head iteration), ``depth``
    (B, S, H, W, 1), ``depth_conf`` (B, S, H, W), ``world_points`` (B, S, H, W, 3) in the frame of
    view 0, ``world_points_conf`` (B, S, H, W); with ``query_points`` (N, 2) / (B, N, 2) pixel
    coordinates in view 0 also ``track`` (B, S, N, 2), ``vis`` and ``conf`` (B, S, N).
    """

    def __init__(self, arch: VGGTArch, merge: MergeConfig | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.merge = merge if merge is not None else MergeConfig(enabled=False)
        validate_merge_config(self.merge, arch.depth)
        dim = 2 * arch.embed_dim
        self.aggregator = Aggregator(arch)
        self.camera_head = CameraHead(
            dim,
            trunk_depth=arch.camera_trunk_depth,
            num_heads=arch.camera_heads,
            mlp_ratio=arch.mlp_ratio,
            iterations=arch.camera_iterations,
        )
        dpt = dict(
            patch_size=arch.patch_size,
            layers=arch.dpt_layers,
            features=arch.dpt_features,
            out_channels=arch.dpt_out_channels,
            frames_chunk=arch.dpt_frames_chunk,
        )
        self.point_head = DPTHead(dim, output_dim=4, activation="inv_log", **dpt)
        self.depth_head = DPTHead(dim, output_dim=2, activation="exp", **dpt)
        self.track_head = TrackHead(dim, arch) if arch.track_head else None
        self.weights_id = "uninitialised"
        # Bytes a forward pass may use; None = what the device has free when it is called.
        self.memory_budget: int | None = None

    # ------------------------------------------------------------------ input checks
    def _check_images(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor):
            raise InputError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() == 4:
            images = images.unsqueeze(0)
        if images.dim() != 5 or images.shape[2] != 3:
            raise InputError(
                f"images must be (S, 3, H, W) or (B, S, 3, H, W) RGB; got shape {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise InputError(
                f"images must be float in [0, 1] (got dtype {images.dtype}); divide uint8 by 255"
            )
        B, S, _, H, W = images.shape
        p = self.arch.patch_size
        if B == 0 or S == 0:
            raise InputError(f"images hold no views: shape {tuple(images.shape)}")
        if H % p or W % p or p > H or p > W:
            raise InputError(
                f"image size {H}x{W} must be a positive multiple of the patch size {p}; "
                "preprocess with models.vggt.preprocess.preprocess_images"
            )
        return images

    def merge_plan(self, views: int, image_hw: tuple[int, int], device: torch.device):
        """The FastVGGT plan for a scene of ``views`` images of ``image_hw`` (None: no merging).
        ``self.merge`` may be replaced between calls to switch merging on or off."""
        validate_merge_config(self.merge, self.arch.depth)
        p = self.arch.patch_size
        return plan_global_merge(
            self.merge,
            views=views,
            grid_hw=(image_hw[0] // p, image_hw[1] // p),
            num_special=self.arch.tokens_before_patches,
            device=device,
        )

    # ------------------------------------------------------------------ forward
    def aggregate(self, images: Tensor) -> tuple[dict[int, Tensor], int]:
        """Aggregator only: ({layer: (B, S, P, 2C)}, patch_start_idx), with merging if enabled."""
        images = self._check_images(images)
        B, S, _, H, W = images.shape
        plan = self.merge_plan(S, (H, W), images.device)
        merger = plan.merger() if plan else None  # one per pass: it may reuse matchings across blocks
        mergers = {i: merger for i in range(self.merge.start_block, self.arch.depth)} if plan else None
        return self.aggregator(images, mergers)

    def forward(self, images: Tensor, query_points: Tensor | None = None) -> dict:
        images = self._check_images(images)
        B, S, _, H, W = images.shape
        check_memory(self, B, S, H, W, images)
        layers, patch_start_idx = self.aggregate(images)

        # Heads run in their parameters' dtype with autocast off (see heads.py).
        with torch.autocast(images.device.type, enabled=False):
            pose_list = self.camera_head(
                layers[self.arch.depth - 1].to(self.camera_head.token_norm.weight.dtype)
            )
            depth, depth_conf = self.depth_head(layers, (H, W), patch_start_idx)
            points, points_conf = self.point_head(layers, (H, W), patch_start_idx)
        out = {
            "pose_enc": pose_list[-1],
            "pose_enc_list": pose_list,
            "depth": depth,
            "depth_conf": depth_conf,
            "world_points": points,
            "world_points_conf": points_conf,
        }
        if query_points is not None:
            if self.track_head is None:
                raise InputError(
                    "this model has no track head (not in its arch or checkpoint): cannot track points"
                )
            out["track"], out["vis"], out["conf"] = self.track_head(
                layers, images, patch_start_idx, query_points
            )
        return out
