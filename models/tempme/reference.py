"""Checkpoints of the reference TempMe code (LunarShen/TempMe): their trained parts into our encoder.

The reference saves its whole model's state dict (``VTRModel.state_dict()``, frozen CLIP included);
the trained parts are the ``TVPt_*`` tensors, under the reference's module paths:

* vision tower: ``clip.visual.transformer.resblocks.N.attn.TVPt_LoRA_a`` / ``TVPt_LoRA_b`` and
  ``clip.visual.transformer.resblocks.N.TVPt_Video_Positional_embedding``;
* text tower:   ``clip.transformer.resblocks.N.attn.TVPt_LoRA_a`` / ``TVPt_LoRA_b``.

Any leading prefix is accepted (``module.`` from a distributed wrapper, none for a bare ``CLIP``). A
state dict of the vision tower alone (keys from ``transformer.resblocks``, as in TempMe's
``VisualTransformer``) needs ``tower="visual"`` unless its temporal embeddings already say so.
Everything else in the checkpoint (the frozen CLIP weights) is ignored: the base weights come from
the encoder's own ``pretrained`` setting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from tomeray.models.errors import ConfigError, WeightsError
from tomeray.models.tempme.adapter import AdapterInfo, adapter_digest, assign_adapter_tensors

__all__ = ["load_reference_checkpoint", "reference_adapter_tensors"]

_KEY = re.compile(
    r"^(?P<prefix>.*?)(?P<visual>visual\.)?(?P<rest>transformer\.resblocks\.\d+\."
    r"(?:attn\.TVPt_LoRA_[ab]|TVPt_Video_Positional_embedding))$"
)
_TOWER_CHOICES = ("auto", "model", "visual", "text")


def reference_adapter_tensors(state_dict: Mapping[str, torch.Tensor], *, tower: str = "auto",
                              source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """The reference's ``TVPt_*`` tensors renamed as our adapter tensors (``visual.``/``text.`` +
    the tower-relative key), float32.

    tower: "model" for a whole-model state dict (``...visual.transformer...`` is the vision tower,
           ``...transformer...`` the text tower); "visual" / "text" for one tower's state dict;
           "auto": "model" when any key has ``visual.``, "visual" when the keys hold temporal
           embeddings, otherwise an error asking which tower it is."""
    if tower not in _TOWER_CHOICES:
        raise ConfigError(f"tower must be one of {', '.join(_TOWER_CHOICES)}; got {tower!r}")
    tvpt = {k: v for k, v in state_dict.items() if "TVPt_" in k}
    if not tvpt:
        raise WeightsError(f"{source} has no TVPt_* tensors (TempMe's trained parts); is it a TempMe "
                           "checkpoint? A tomeray adapter loads with models.tempme.load_adapter")
    parsed = {}
    for key in tvpt:
        match = _KEY.match(key)
        if match is None:
            raise WeightsError(f"{source} has a TVPt tensor this loader does not know: '{key}' (expected "
                               "'...transformer.resblocks.N.attn.TVPt_LoRA_a|b' or "
                               "'...transformer.resblocks.N.TVPt_Video_Positional_embedding')")
        parsed[key] = match
    if tower == "auto":
        if any(m["visual"] for m in parsed.values()):
            tower = "model"
        elif any(m["rest"].endswith("TVPt_Video_Positional_embedding") for m in parsed.values()):
            tower = "visual"
        else:
            raise WeightsError(f"{source} holds one tower's LoRA without saying which (no 'visual.' keys, no "
                               "temporal embeddings): pass tower='visual' or tower='text'")
    prefixes = sorted({m["prefix"] for m in parsed.values()})
    if len(prefixes) > 1:
        raise WeightsError(f"{source} mixes key prefixes {prefixes}; pass the state dict of one model")
    out = {}
    for key, m in parsed.items():
        if tower == "model":
            name = ("visual." if m["visual"] else "text.") + m["rest"]
        else:
            if m["visual"]:
                raise WeightsError(f"tower={tower!r} but {source} has whole-model key '{key}'; "
                                   "use tower='model'")
            name = f"{tower}.{m['rest']}"
        if name.startswith("text.") and name.endswith("TVPt_Video_Positional_embedding"):
            raise WeightsError(f"{source}: '{key}' would be a temporal embedding in the text tower; "
                               "a vision tower's state dict needs tower='visual'")
        out[name] = tvpt[key].detach().to(torch.float32)
    return out


def load_reference_checkpoint(encoder, checkpoint: Mapping[str, torch.Tensor] | str | os.PathLike, *,
                              tower: str = "auto", name: str | None = None) -> AdapterInfo:
    """Load the trained parts of a reference TempMe checkpoint (a state dict, or a ``.pth`` /
    ``.safetensors`` file of one) into ``encoder``, strictly (every trainable tensor of each tower the
    checkpoint covers, with matching shapes), and record it in ``encoder.adapter``. Save it as a
    tomeray adapter with ``save_adapter`` to use it in indexing and search."""
    path = None
    if not isinstance(checkpoint, Mapping):
        path = Path(checkpoint).expanduser().resolve()
        checkpoint = _read_state_dict(path)
    source = f"reference checkpoint '{path}'" if path else "the reference checkpoint"
    tensors = reference_adapter_tensors(checkpoint, tower=tower, source=source)
    towers = tuple(sorted({k.split(".", 1)[0] for k in tensors}))
    assign_adapter_tensors(encoder, tensors, source=source, towers=towers)
    label = name or (f"reference:{path.name}" if path else "reference checkpoint")
    encoder.adapter = AdapterInfo(adapter_digest(tensors), label, str(path) if path else None,
                                  {"source": "reference", "towers": list(towers)})
    return encoder.adapter


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"reference checkpoint '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a weights problem
        raise WeightsError(f"cannot read reference checkpoint '{path}': {e}") from e
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise WeightsError(f"reference checkpoint '{path}' holds a {type(state).__name__}, not a state dict")
    return state
