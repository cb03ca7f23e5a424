"""Uploaded query media: a short clip or an image, recognised by its bytes (never by the name or the
declared type alone) and encoded with the index's encoder. A clip is decoded and sampled as the
indexer samples a whole video; an image is searched as a still clip of itself."""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import torch
from tomeray.models.errors import InputError
from tomeray.models.frames import center_crop, normalize_frames, resize_shorter_side

__all__ = ["UnsupportedMedia", "encode_upload", "sniff_media"]


class UnsupportedMedia(InputError):
    """Bytes that are neither a supported image nor a supported video container (HTTP 415)."""


IMAGE_TYPES = "JPEG, PNG, WebP"
MAX_IMAGE_PIXELS = 50_000_000  # checked from the header, before decoding (no decompression bombs)
VIDEO_TYPES = "MP4/MOV, WebM/MKV, AVI, Ogg"


def sniff_media(data: bytes) -> tuple[str, str]:
    """``(kind, suffix)`` of uploaded bytes: kind "image" or "video"."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "image", ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", ".png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", ".webp"
    if head[4:8] == b"ftyp":
        return "video", ".mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", ".avi"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", ".mkv"
    if head.startswith(b"OggS"):
        return "video", ".ogv"
    raise UnsupportedMedia(f"the upload is not a supported image ({IMAGE_TYPES}) or video ({VIDEO_TYPES})")


def encode_upload(searcher, data: bytes) -> tuple[np.ndarray, str]:
    """``((D,) float32 embedding, kind)`` of an uploaded image or clip, with ``searcher``'s encoder."""
    if not data:
        raise InputError("the upload is empty: send an image or a short video as the query")
    kind, suffix = sniff_media(data)
    if kind == "image":
        return _encode_image(searcher.encoder, data), kind
    with tempfile.NamedTemporaryFile(suffix=suffix, prefix="tomeray-query-", delete=False) as f:
        f.write(data)
        path = f.name
    try:
        return searcher.encode_video(path)[0], kind
    except InputError as e:
        raise InputError(str(e).replace(path, "the uploaded video")) from None
    finally:
        os.unlink(path)


def _encode_image(encoder, data: bytes) -> np.ndarray:
    from PIL import Image

    damaged = InputError("the uploaded image cannot be decoded (damaged or truncated)")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except (OSError, Image.DecompressionBombError):
        raise damaged from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"the uploaded image is {width}x{height} pixels; at most "
                         f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels are accepted")
    try:
        rgb = np.asarray(image.convert("RGB"))[None]
    except (OSError, ValueError):
        raise damaged from None
    if min(rgb.shape[1:3]) < 1:
        raise InputError("the uploaded image is empty")
    frame = center_crop(resize_shorter_side(rgb, encoder.image_size), encoder.image_size)
    clip = np.repeat(frame, encoder.num_frames, axis=0)  # a still clip of the image
    x = normalize_frames(torch.from_numpy(clip), encoder.mean, encoder.std)[None]
    mask = torch.ones(1, encoder.num_frames, dtype=torch.bool)
    with torch.inference_mode():
        out = encoder.encode_video(x.to(encoder.device), mask.to(encoder.device))
    return out.float().cpu().numpy()[0]
