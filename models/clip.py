"""open_clip models with explicit weights: a pretrained tag, a local checkpoint, or random init.

``load_clip(arch, pretrained)`` returns the vision tower, a text encoder and ``weights_id``, a
string saying exactly which weights were loaded (every output records it):

* ``pretrained="<tag>"`` (``openai``, ``laion2b_s34b_b79k``, ...): open_clip's own download and
  cache (Hugging Face hub). Offline without a cached copy raises ``WeightsError`` with the ways
  to provide weights. ``weights_id = "open_clip:<arch>/<tag>"``.
* ``pretrained="/path/to/checkpoint"`` (open_clip state dict, ``.pt``/``.bin``/``.safetensors``):
  loaded strictly. ``weights_id = "file:<absolute path>#sha256=<first 16 hex digits>"``.
* ``pretrained="none"``: random initialisation from ``seed`` (never presented as pretrained).
  ``weights_id = "random-init(seed=<seed>)"``.

Tags trained with QuickGELU (OpenAI's) get QuickGELU even under the plain architecture name, so
``ViT-B-32`` + ``openai`` computes what OpenAI's model computes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tomeray.models.errors import ConfigError, InputError, WeightsError
from torch import nn

__all__ = ["ClipTextEncoder", "LoadedClip", "RANDOM_INIT", "load_clip"]

RANDOM_INIT = "none"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class ClipTextEncoder(nn.Module):
    """open_clip tokenizer + text tower: list of strings -> (N, D) L2-normalised embeddings."""

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    def forward(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError(f"encode_text expects a list of strings; got {type(texts).__name__}")
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(texts)).to(device)
        return self.model.encode_text(tokens, normalize=True).float()


@dataclass
class LoadedClip:
    visual: nn.Module  # open_clip VisionTransformer (or another tower for non-ViT archs)
    text: ClipTextEncoder
    weights_id: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _is_path_like(value: str) -> bool:
    return os.sep in value or value.startswith(".") or value.lower().endswith(_CHECKPOINT_SUFFIXES)


def _sha256_prefix(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False


def _check_arch(arch: str) -> None:
    import open_clip

    names = open_clip.list_models()
    if arch not in names:
        close = [n for n in names if arch.lower().split("-")[0] in n.lower()][:12]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(f"unknown open_clip arch '{arch}'{hint}; see open_clip.list_models()")


def load_clip(arch: str, pretrained: str, *, seed: int = 0, cache_dir: str | None = None) -> LoadedClip:
    """Create open_clip model ``arch`` with the weights named by ``pretrained`` (see module doc)."""
    import open_clip

    _check_arch(arch)
    pretrained = str(pretrained)
    kwargs: dict = {}
    if pretrained == RANDOM_INIT:
        # A private RNG stream: the caller's global torch RNG state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(arch, pretrained=None)
        weights_id = f"random-init(seed={seed})"
    elif _is_path_like(pretrained) or Path(pretrained).is_file():
        path = Path(pretrained).expanduser().resolve()
        if not path.is_file():
            raise WeightsError(
                f"checkpoint file '{path}' does not exist; pass an open_clip state dict "
                f"(.pt/.bin/.safetensors), an open_clip tag, or pretrained=none for random init"
            )
        try:
            model = open_clip.create_model(arch, pretrained=str(path))
        except Exception as e:  # noqa: BLE001 - any loader failure is a weights problem
            raise WeightsError(f"cannot load checkpoint '{path}' into {arch}: {e}") from e
        weights_id = f"file:{path}#sha256={_sha256_prefix(path)}"
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            raise ConfigError(
                f"unknown pretrained '{pretrained}' for {arch}; valid tags: {', '.join(tags) or '(none)'}; "
                "or a checkpoint path, or 'none' for random init"
            )
        if open_clip.get_pretrained_cfg(arch, pretrained).get("quick_gelu", False):
            kwargs["force_quick_gelu"] = True
        try:
            model = open_clip.create_model(arch, pretrained=pretrained, cache_dir=cache_dir, **kwargs)
        except Exception as e:  # noqa: BLE001 - download / cache failures of any kind
            where = "offline mode (HF_HUB_OFFLINE=1) is on and they are not in the cache" if _offline() else (
                "they could not be downloaded or read from the cache"
            )
            raise WeightsError(
                f"pretrained weights '{pretrained}' for {arch}: {where} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). To provide weights: "
                f"run once with network access so open_clip caches them (Hugging Face cache, see HF_HOME), "
                f"or download the checkpoint elsewhere and pass pretrained=/path/to/checkpoint, "
                f"or use pretrained=none for random weights (tests only, not for retrieval)"
            ) from e
        weights_id = f"open_clip:{arch}/{pretrained}"

    model.eval().requires_grad_(False)
    preprocess = open_clip.get_model_preprocess_cfg(model)
    size = preprocess.get("size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(float(v) for v in preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in preprocess.get("std", open_clip.OPENAI_DATASET_STD))

    visual = model.visual
    model.visual = nn.Identity()  # the text encoder must not carry a second reference to the tower
    text = ClipTextEncoder(model, open_clip.get_tokenizer(arch))
    return LoadedClip(visual, text, weights_id, size, mean, std)
