"""``create_vggt``: build a VGGT from a ``VGGTModelConfig`` and load its weights."""

from __future__ import annotations

import logging

import torch
from tomeray.models.vggt.config import VGGTModelConfig
from tomeray.models.vggt.model import VGGT
from tomeray.models.vggt.registry import get_arch
from tomeray.models.vggt.weights import (
    init_random,
    is_random,
    load_state_dict_strict,
    random_init_id,
    read_state_dict,
    resolve_checkpoint,
)

log = logging.getLogger(__name__)


def create_vggt(cfg: VGGTModelConfig | None = None) -> VGGT:
    """A VGGT in eval mode, float32, on CPU (move it where it should run).

    ``cfg.pretrained``: a hub id (fetched with huggingface_hub when online and not cached), a
    local .pt/.safetensors file, or "none" for a seeded random initialisation. Raises
    ``WeightsError`` with instructions when weights cannot be found. ``model.weights_id`` says
    which weights were used.
    """
    cfg = cfg or VGGTModelConfig()
    arch = get_arch(cfg.arch)
    if is_random(cfg.pretrained):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = VGGT(arch, cfg.merge)
            init_random(model)
        model.weights_id = random_init_id(cfg.seed)
        log.warning(
            "VGGT %s uses RANDOM weights (%s): outputs are not meaningful", cfg.arch, model.weights_id
        )
    else:
        path, weights_id = resolve_checkpoint(cfg.pretrained)
        with torch.device("meta"):  # no allocation: the checkpoint tensors become the parameters
            model = VGGT(arch, cfg.merge)
        load_state_dict_strict(model, read_state_dict(path), weights_id)
        model.weights_id = weights_id
        log.info("VGGT %s loaded weights %s", cfg.arch, weights_id)
    return model.eval()
