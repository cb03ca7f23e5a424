"""FAISS at run time: GPU selection, the readable part of its C++ errors, and its C stdout."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys

import faiss
from tomeray.models.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["faiss_reason", "gpu_available", "index_to_device", "inner_index",
           "quiet_stdout", "resolve_use_gpu"]

USE_GPU_CHOICES = ("auto", "always", "never")


def faiss_reason(error: Exception) -> str:
    """The human part of a FAISS C++ error ("Error in <signature> at file:line: <reason>")."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    match = re.search(r" at [^ ]+:\d+: (.*)$", text)
    reason = match.group(1) if match else text
    return reason.removeprefix("Error: ")


@contextlib.contextmanager
def quiet_stdout():
    """FAISS's on-disk inverted lists print progress notes on the C stdout ("resizing ..."):
    silence them, so that machine-readable output (``tomeray search --json``) stays clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_use_gpu(use_gpu: str | bool) -> bool:
    """``"auto"`` (GPU when available), ``"always"`` (error without one) or ``"never"``; booleans
    mean always/never."""
    if isinstance(use_gpu, bool):
        use_gpu = "always" if use_gpu else "never"
    choice = str(use_gpu).lower()
    if choice not in USE_GPU_CHOICES:
        raise ConfigError(f"use_gpu must be one of {', '.join(USE_GPU_CHOICES)}, got {use_gpu!r}")
    if choice == "never":
        return False
    available = gpu_available()
    if choice == "always" and not available:
        raise ConfigError("use_gpu='always' but FAISS sees no GPU (faiss-cpu is installed or no CUDA "
                          "device is visible): install faiss-gpu (see README) or use 'auto'")
    return available


def inner_index(index: faiss.Index) -> faiss.Index:
    """The index inside an id map (the index itself otherwise), as its concrete type."""
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


def _gpu_capable(index: faiss.Index) -> bool:
    """FAISS has GPU versions of flat and IVF indexes only; HNSW and re-ranked indexes stay on the CPU."""
    return isinstance(inner_index(index), faiss.IndexFlat | faiss.IndexIVF)


def index_to_device(index: faiss.Index, use_gpu: str | bool = "auto") -> faiss.Index:
    """The index on all visible GPUs when ``use_gpu`` allows it and FAISS can, else unchanged
    (``"auto"`` stays on the CPU with a warning if the GPU copy fails; ``"always"`` raises)."""
    if not resolve_use_gpu(use_gpu):
        return index
    if not _gpu_capable(index):
        log.info("FAISS has no GPU version of this index type; it stays on the CPU")
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = True  # IVF-PQ with many sub-quantisers needs float16 lookup tables
    try:
        return faiss.index_cpu_to_all_gpus(index, co=options)
    except RuntimeError as e:
        if str(use_gpu).lower() in ("always", "true"):
            raise ConfigError(f"cannot move the FAISS index to the GPU: {faiss_reason(e)}") from None
        log.warning("FAISS index stays on the CPU: the GPU copy failed (%s)", faiss_reason(e))
        return index
