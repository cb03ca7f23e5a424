"""Dynamic int8 quantisation of a module's linear layers (PyTorch's own, CPU only): weights stored
as int8, activations quantised per batch on the fly. Used for the text tower of query encoders,
whose time is almost all in ``nn.Linear`` (attention projections and MLPs)."""

from __future__ import annotations

import copy
import warnings

import torch
from tomeray.models.errors import ConfigError
from torch import nn

__all__ = ["TEXT_PRECISIONS", "quantize_linear_int8"]

TEXT_PRECISIONS = ("fp32", "int8", "int8-all")  # int8: the MLPs; int8-all: every projection too


def quantize_linear_int8(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (on the CPU, in eval mode) whose ``nn.Linear`` layers compute in int8;
    the original is left untouched. ConfigError where this PyTorch has no quantised CPU kernels."""
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm", "qnnpack")):
        raise ConfigError(f"this PyTorch build has no int8 CPU kernels (engines: {engines}); "
                          "use search.text_precision=fp32")
    clone = copy.deepcopy(module).cpu().eval()
    with warnings.catch_warnings():  # torch.ao.quantization announces its future move to torchao
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(clone, {nn.Linear}, dtype=torch.qint8)
    for part in quantized.modules():  # open_clip reads its compute dtype off a linear's weight,
        if hasattr(part, "get_cast_dtype"):  # which a quantised linear no longer has as a tensor
            part.get_cast_dtype = lambda: torch.float32
    return quantized
