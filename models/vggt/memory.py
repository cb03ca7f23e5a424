"""Up-front memory estimate of a VGGT forward pass, so an oversized scene fails before allocating.

The estimate counts the activations that grow with the number of tokens (transformer working
set, the cached layers the heads read, head outputs) plus the per-chunk working set of the
dense heads. It assumes fused attention kernels (memory linear in tokens), which
``F.scaled_dot_product_attention`` selects on CPU and CUDA for these shapes. It is deliberately
a little pessimistic: the point is a clear error instead of an out-of-memory crash midway.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from tomeray.models.errors import InputError
from tomeray.models.host import host_available_memory
from tomeray.models.merging import score_chunk_elements
from torch import Tensor

if TYPE_CHECKING:
    from tomeray.models.vggt.model import VGGT

GIB = 1 << 30
# Peak live activations of one transformer block, in multiples of tokens x width: residual,
# qkv (3), normalised/rotated q and k (2, float32 under autocast), attention output, projection,
# MLP hidden and its activation (2 x mlp_ratio), merged q/k/v copies.
_BLOCK_WORKING_SET = 18


def activation_dtype(model: VGGT, device: torch.device) -> torch.dtype:
    """dtype of aggregator activations: the autocast dtype when autocast is on, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(model.parameters()).dtype


def estimate_forward_bytes(
    model: VGGT, batch: int, views: int, height: int, width: int, dtype: torch.dtype, device_type: str = "cpu"
) -> int:
    """Bytes a forward pass is expected to need beyond the weights and the input images."""
    arch = model.arch
    act = torch.finfo(dtype).bits // 8
    head = model.depth_head.norm.weight.element_size()
    grid = (height // arch.patch_size) * (width // arch.patch_size)
    tokens = batch * views * (arch.tokens_before_patches + grid)
    C = arch.embed_dim
    transformer = _BLOCK_WORKING_SET * tokens * C * act
    cached = len(arch.cached_layers) * tokens * 2 * C * act
    pixels = batch * views * height * width
    outputs = pixels * (1 + 1 + 3 + 1) * head  # depth, depth conf, points, points conf
    chunk_frames = min(views, arch.dpt_frames_chunk) * batch
    dpt_chunk = 3 * chunk_frames * height * width * (arch.dpt_features // 2 + 32) * head
    merging = 0
    if model.merge.enabled:  # normalised metric split into sources/destinations, one score chunk
        merging = 2 * tokens * C * 4 + score_chunk_elements(device_type) * 4
    return int(transformer + cached + outputs + dpt_chunk + merging)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: free + cached by torch; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        return host_available_memory()
    return None


def check_memory(model: VGGT, batch: int, views: int, height: int, width: int, images: Tensor) -> None:
    """Raise InputError when the forward pass would not fit in ``model.memory_budget`` (bytes)
    or, when that is None, in the device's free memory."""
    device = images.device
    budget = model.memory_budget if model.memory_budget is not None else available_bytes(device)
    if budget is None:
        return
    dtype = activation_dtype(model, device)
    need = estimate_forward_bytes(model, batch, views, height, width, dtype, device.type)
    if need <= budget:
        return
    fit = max(0, math.floor(views * budget / need) - 1)
    raise InputError(
        f"VGGT on {batch} x {views} views of {height}x{width} needs about {need / GIB:.2f} GiB on {device}, "
        f"but only {budget / GIB:.2f} GiB is available: use fewer views per scene (about {fit} fit) "
        "or smaller images; on GPU run in bfloat16 autocast, which halves the activations"
        + ("" if model.merge.enabled else ", and enable merging (merge.enabled=true) to cut attention cost")
    )
