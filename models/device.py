"""Where a model runs and in which precision: one rule for every encoder and job.

``device="auto"`` is CUDA when a GPU is visible, else the CPU. ``precision="auto"`` is float32 on
the CPU and bf16 autocast on a GPU (fp16 on GPUs without bf16); ``fp32``, ``bf16`` and ``fp16``
ask for one explicitly. Both jobs read these from their ``inference`` config section.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from tomeray.models.errors import ConfigError

__all__ = ["AUTOCAST_DTYPES", "InferenceConfig", "autocast", "resolve_device", "resolve_precision"]

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class InferenceConfig:
    device: str = "auto"  # auto: cuda when the worker has a GPU | cpu | cuda | cuda:N
    precision: str = "auto"  # auto: fp32 on CPU, bf16 (fp16 without bf16 support) autocast on GPU


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use device=cpu or auto")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name not in AUTOCAST_DTYPES:
        raise ConfigError(f"unknown precision '{name}'; valid: auto, {', '.join(AUTOCAST_DTYPES)}")
    return name


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Autocast to ``precision`` (a resolved name) on ``device``; a no-op for fp32."""
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
