"""Image preprocessing of the official VGGT loader, on in-memory uint8 RGB arrays.

- ``crop`` (default): width becomes ``size`` (518), height keeps the aspect ratio rounded to a
  multiple of the patch size, and is centre-cropped to ``size`` when taller.
- ``pad``: the longer side becomes ``size``, the other keeps the aspect ratio (rounded to a
  multiple of the patch size), and the image is padded with white to ``size`` x ``size``.

Resizing is PIL bicubic, values become float32 in [0, 1] (x / 255). Images that end up with
different shapes are padded with white, centred, to the largest height and width, as the
official loader does. Reading files belongs to the caller (operators); this module only sees
arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tomeray.models.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessInfo:
    """Where an input image landed in the model input: original pixel (x, y) maps to about
    (x * scale_xy[0] + offset_xy[0], y * scale_xy[1] + offset_xy[1])."""

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    scale_xy: tuple[float, float]
    offset_xy: tuple[int, int]  # position of the resized image's top-left pixel (negative if cropped)
    output_hw: tuple[int, int]


def _as_rgb(index: int, image) -> Image.Image:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise InputError(f"image {index}: expected uint8 RGB, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"image {index}: expected an HxWx3 RGB array, got shape {arr.shape}")
    if arr.shape[2] == 4:  # transparent pixels become white, like the official loader
        rgba = Image.fromarray(np.ascontiguousarray(arr), "RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def _target_size(index: int, width: int, height: int, mode: str, size: int, patch: int) -> tuple[int, int]:
    """(new_width, new_height) of the resize step, the official rounding rule (Python round)."""
    if mode == "crop" or width >= height:
        new_w, new_h = size, round(height * (size / width) / patch) * patch
    else:
        new_w, new_h = round(width * (size / height) / patch) * patch, size
    if new_w < patch or new_h < patch:
        raise InputError(
            f"image {index} is {width}x{height}: its aspect ratio is too extreme for size {size} "
            f"(a side would be under one {patch}-pixel patch); crop it first"
            + (" or use mode='pad'" if mode == "crop" and width > height else "")
        )
    return new_w, new_h


def preprocess_images(
    images: Sequence[np.ndarray],
    mode: str = "crop",
    size: int = 518,
    patch: int = 14,
    *,
    return_info: bool = False,
):
    """HxWx3 uint8 RGB arrays -> (S, 3, H, W) float32 in [0, 1], H and W multiples of ``patch``.

    Grayscale (HxW) and RGBA (HxWx4, composited on white) arrays are accepted too. With
    ``return_info`` also returns one ``PreprocessInfo`` per image.
    """
    if mode not in ("crop", "pad"):
        raise InputError(f"mode must be 'crop' or 'pad'; got {mode!r}")
    if size <= 0 or patch <= 0 or size % patch:
        raise InputError(f"size {size} must be a positive multiple of patch {patch}")
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] in (3, 4):
        images = [images]  # a single image rather than a stack of grayscale ones
    if len(images) == 0:
        raise InputError("no images to preprocess: at least 1 is required")

    tensors, placements = [], []
    for i, image in enumerate(images):
        pil = _as_rgb(i, image)
        width, height = pil.size
        new_w, new_h = _target_size(i, width, height, mode, size, patch)
        pil = pil.resize((new_w, new_h), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float().div(255)
        top = left = 0
        if mode == "crop" and new_h > size:
            start = (new_h - size) // 2
            x, top = x[:, start : start + size], -start
        if mode == "pad":
            pad_h, pad_w = size - x.shape[1], size - x.shape[2]
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=1.0)
            top, left = pad_h // 2, pad_w // 2
        tensors.append(x)
        placements.append(((height, width), (new_h, new_w), (new_w / width, new_h / height), (left, top)))

    out_h, out_w = max(t.shape[1] for t in tensors), max(t.shape[2] for t in tensors)
    if any(t.shape[1:] != (out_h, out_w) for t in tensors):
        log.warning(
            "images have different shapes %s; padding with white to %dx%d",
            sorted({tuple(t.shape[1:]) for t in tensors}),
            out_h,
            out_w,
        )
    batch, infos = [], []
    for x, (orig, resized, scale, (left, top)) in zip(tensors, placements):
        pad_h, pad_w = out_h - x.shape[1], out_w - x.shape[2]
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=1.0)
        batch.append(x)
        infos.append(
            PreprocessInfo(orig, resized, scale, (left + pad_w // 2, top + pad_h // 2), (out_h, out_w))
        )
    result = torch.stack(batch)
    return (result, infos) if return_info else result
