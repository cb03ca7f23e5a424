"""Loading VGGT weights: a Hugging Face hub id, a local checkpoint file, or random initialisation.

Checkpoints load with ``strict=True`` (the module tree mirrors the official key names). The
only tolerance: a checkpoint without any ``track_head.*`` keys (trained or saved without the
optional track head) loads into a model whose track head is then removed.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from tomeray.models.errors import WeightsError
from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
HUB_FILES = ("model.safetensors", "model.pt")  # tried in this order
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def random_init_id(seed: int) -> str:
    return f"random-init(seed={seed})"


def is_random(pretrained: str) -> bool:
    return pretrained.strip().lower() in ("none", "random", "")


def init_random(model: nn.Module) -> None:
    """ViT-style initialisation (truncated normal linears, tiny learned tokens), as the official
    code initialises a fresh model. Call under a seeded RNG."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("camera_token", "register_token", "cls_token", "register_tokens"):
            nn.init.normal_(param, std=1e-6)
        elif leaf in ("pos_embed", "query_ref_token", "virual_tracks"):
            nn.init.trunc_normal_(param, std=0.02)


def resolve_checkpoint(pretrained: str) -> tuple[Path, str]:
    """-> (local file, weights id). Downloads a hub id when online and not cached."""
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path, str(path.resolve())
    looks_like_path = pretrained.startswith(("/", ".", "~")) or pretrained.count("/") > 1
    if path.suffix in CHECKPOINT_SUFFIXES or looks_like_path:
        raise WeightsError(f"checkpoint file not found: {pretrained}")
    if not _HUB_ID.fullmatch(pretrained):
        raise WeightsError(
            f"pretrained={pretrained!r} is neither a checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}), "
            "a Hugging Face hub id like 'facebook/VGGT-1B', nor 'none'"
        )
    return _download(pretrained), pretrained


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a declared dependency
        raise WeightsError(
            "huggingface_hub is needed to fetch hub weights: pip install huggingface_hub"
        ) from e

    for filename in HUB_FILES:  # the local cache first: no network needed when already fetched
        try:
            return Path(hf_hub_download(repo_id, filename, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached (or cache unreadable): try the next option
            pass
    how = (
        f"download {HUB_FILES[0]} (or {HUB_FILES[1]}) from https://huggingface.co/{repo_id} on a machine "
        "with network and pass its local path as pretrained=/path/to/file, or copy a Hugging Face "
        "cache that holds it and point HF_HOME at it"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise WeightsError(f"weights {repo_id!r} are not cached and HF_HUB_OFFLINE is set: {how}")
    errors = []
    for filename in HUB_FILES:
        try:
            return Path(hf_hub_download(repo_id, filename))
        except Exception as e:  # noqa: BLE001 - network, auth or missing file: report them all
            errors.append(f"{filename}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise WeightsError(f"could not fetch weights {repo_id!r} ({'; '.join(errors)}): {how}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any reader error means an unusable file
        raise WeightsError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"checkpoint {path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load; drops the model's track head when the checkpoint has none. ``assign`` keeps
    the checkpoint tensors (no second copy), which also materialises a model built on 'meta'."""
    if getattr(model, "track_head", None) is not None and not any(k.startswith("track_head.") for k in state):
        log.info("checkpoint %s has no track head; the model runs without one", source)
        model.track_head = None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        parts = [
            f"missing: {show(missing)}" if missing else "",
            f"unexpected: {show(unexpected)}" if unexpected else "",
            "shape mismatch: "
            + show([f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong])
            if wrong
            else "",
        ]
        raise WeightsError(
            f"checkpoint {source} does not fit this VGGT arch ({'; '.join(p for p in parts if p)}); "
            "check that 'arch' matches the checkpoint"
        )
    dtype = next(iter(expected.values())).dtype
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
