"""Adapter files: a TempMe encoder's trained parts, and what they were trained for, in one file.

Format (``format_version`` 1): a safetensors file holding only the trainable tensors, float32, named
as ``TempMeEncoder.trainable_parameters`` names them:

* ``visual.transformer.resblocks.N.attn.TVPt_LoRA_a`` (rank, C) and ``...TVPt_LoRA_b`` (3C, rank),
  every block;
* ``visual.transformer.resblocks.N.TVPt_Video_Positional_embedding`` (1, groups, 1, C), ClipMe blocks;
* ``text.transformer.resblocks.N.attn.TVPt_LoRA_a`` / ``TVPt_LoRA_b``, every text block.

Its safetensors metadata has one key, ``tomeray.adapter``, whose value is a JSON object: ``format``
("tomeray-tempme-adapter"), ``format_version``, ``name``, ``arch``, ``weights_id`` (the base weights
it was trained on), ``preset``, ``schedule`` (the merge schedule), ``num_frames``, ``lora_rank``,
``towers`` (["visual", "text"] or ["visual"]), ``num_parameters`` and ``extra`` (free-form, e.g. the
training recipe). An adapter loads only into an encoder with the same arch, base weights, merge
schedule, frame count and rank; anything else is refused with the difference named.

The adapter's identity is ``adapter:<16 hex digits>``, a sha256 over its tensors (names, dtypes,
shapes, values), so it does not depend on the file's path or metadata layout; it joins the encoder's
``identity()`` together with the adapter's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tomeray.models.errors import WeightsError

__all__ = [
    "ADAPTER_FORMAT",
    "ADAPTER_FORMAT_VERSION",
    "METADATA_KEY",
    "AdapterInfo",
    "adapter_digest",
    "assign_adapter_tensors",
    "load_adapter",
    "read_adapter_metadata",
    "save_adapter",
]

ADAPTER_FORMAT = "tomeray-tempme-adapter"
ADAPTER_FORMAT_VERSION = 1
METADATA_KEY = "tomeray.adapter"
TOWERS = ("visual", "text")


@dataclass(frozen=True)
class AdapterInfo:
    """Which trained parts an encoder carries: ``id`` and ``name`` join its identity."""

    id: str  # "adapter:<first 16 hex digits of the tensor digest>"
    name: str
    path: str | None = None  # the file it was read from or written to (None: loaded from tensors)
    metadata: dict = field(default_factory=dict, compare=False)


def adapter_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """``adapter:<16 hex>``: sha256 over the tensors' names, dtypes, shapes and float32 values."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}|float32|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes())
    return f"adapter:{digest.hexdigest()[:16]}"


def _weights_key(weights_id: str) -> str:
    """A local checkpoint is named by its content hash, not its path (the file may move)."""
    if weights_id.startswith("file:") and "#sha256=" in weights_id:
        return weights_id.split("#", 1)[1]
    return weights_id


def _encoder_metadata(encoder) -> dict:
    towers = ["visual"] + (["text"] if getattr(encoder.text, "tvpt", None) is not None else [])
    return {
        "arch": encoder.arch,
        "weights_id": encoder.weights_id,
        "preset": encoder.preset,
        "schedule": dataclasses.asdict(encoder.schedule),
        "num_frames": encoder.num_frames,
        "lora_rank": encoder.lora_rank,
        "towers": towers,
    }


def save_adapter(encoder, path: str | os.PathLike, *, name: str | None = None,
                 extra: Mapping | None = None) -> AdapterInfo:
    """Write ``encoder``'s trainable tensors and what they were trained for to ``path`` (atomically:
    a reader never sees a partial file). ``name`` defaults to the file's stem; ``extra`` is any
    JSON-serialisable record (e.g. the training recipe). Returns the file's ``AdapterInfo``."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.to("cpu", torch.float32).contiguous() for k, v in encoder.adapter_state_dict().items()}
    meta = {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "name": name or path.stem,
        **_encoder_metadata(encoder),
        "num_parameters": sum(t.numel() for t in tensors.values()),
        "extra": dict(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    os.replace(tmp, path)
    return AdapterInfo(adapter_digest(tensors), meta["name"], str(path.resolve()), meta)


def read_adapter_metadata(path: str | os.PathLike) -> dict:
    """The adapter's metadata (see module doc), checked to be a tomeray adapter this code can read."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"adapter file '{path}' does not exist; pass the adapter.safetensors that "
                           "training wrote (model.adapter=PATH), or no adapter for the training-free form")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as e:  # noqa: BLE001 - any reader failure means this is not a usable adapter
        raise WeightsError(f"cannot read adapter '{path}' as safetensors: {e}") from e
    if raw is None:
        raise WeightsError(
            f"'{path}' is not a tomeray adapter (no '{METADATA_KEY}' metadata); a checkpoint of the "
            "reference TempMe code loads with models.tempme.load_reference_checkpoint"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise WeightsError(f"adapter '{path}' has unreadable metadata ({e})") from e
    if meta.get("format") != ADAPTER_FORMAT:
        raise WeightsError(f"'{path}' has format {meta.get('format')!r}, not {ADAPTER_FORMAT!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > ADAPTER_FORMAT_VERSION:
        raise WeightsError(f"adapter '{path}' has format_version {version!r}; this tomeray reads up to "
                           f"{ADAPTER_FORMAT_VERSION} (upgrade tomeray)")
    return meta


def check_adapter_fits(encoder, meta: Mapping, source: str) -> None:
    """Refuse an adapter trained for another arch, base weights, schedule, frame count or rank."""
    ours = _encoder_metadata(encoder)
    problems = []
    if meta.get("arch") != ours["arch"]:
        problems.append(f"arch {meta.get('arch')!r} (this encoder: {ours['arch']!r})")
    if _weights_key(str(meta.get("weights_id"))) != _weights_key(ours["weights_id"]):
        problems.append(f"base weights {meta.get('weights_id')!r} (this encoder: {ours['weights_id']!r})")
    if meta.get("schedule") != ours["schedule"]:
        theirs = meta.get("schedule") or {}
        diff = sorted(k for k in ours["schedule"] if theirs.get(k) != ours["schedule"][k])
        problems.append(f"merge schedule of preset {meta.get('preset')!r} (this encoder: preset "
                        f"{ours['preset']!r}; differs in {', '.join(diff) or 'its keys'})")
    if meta.get("num_frames") != ours["num_frames"]:
        problems.append(f"num_frames={meta.get('num_frames')} (this encoder: {ours['num_frames']})")
    if meta.get("lora_rank") != ours["lora_rank"]:
        problems.append(f"lora_rank={meta.get('lora_rank')} (this encoder: {ours['lora_rank']})")
    if problems:
        raise WeightsError(
            f"adapter {source} was trained for {'; '.join(problems)}. Build the encoder with the settings "
            "the adapter was trained with (model.arch, model.pretrained, model.preset / schedule, "
            "model.num_frames), or use an adapter trained for these settings"
        )


def assign_adapter_tensors(encoder, tensors: Mapping[str, torch.Tensor], *, source: str,
                           towers: tuple[str, ...] = TOWERS) -> None:
    """Copy ``tensors`` (named as ``trainable_parameters``) into the encoder, strictly: for each of
    ``towers`` the encoder has, every trainable tensor must be there with the same shape, and no name
    may be unknown. Tensors of a tower the encoder lacks (text, for a video-only encoder) are skipped.
    Nothing is changed unless everything fits."""
    params = encoder.adapter_parameters()
    has = {name.split(".", 1)[0] for name in params}
    wanted = {k: p for k, p in params.items() if k.split(".", 1)[0] in towers}
    given = {k: v for k, v in tensors.items() if k.split(".", 1)[0] in has}
    missing = sorted(set(wanted) - set(given))
    unknown = sorted(set(given) - set(wanted))
    wrong = sorted(f"{k}: {tuple(given[k].shape)} (expected {tuple(p.shape)})"
                   for k, p in wanted.items() if k in given and tuple(given[k].shape) != tuple(p.shape))
    lines = []
    if missing:
        lines.append(f"missing {len(missing)} tensors: {_some(missing)}")
    if unknown:
        lines.append(f"{len(unknown)} tensors this encoder does not have: {_some(unknown)}")
    if wrong:
        lines.append(f"{len(wrong)} shape mismatches: {_some(wrong)}")
    if lines:
        raise WeightsError(
            f"{source} does not fit this encoder ({encoder.arch}, preset {encoder.preset}, "
            f"{encoder.num_frames} frames, lora_rank {encoder.lora_rank}): " + "; ".join(lines)
            + ". It was made for another tower, schedule, frame count or rank"
        )
    with torch.no_grad():
        for k, p in wanted.items():
            p.copy_(given[k].to(p.device, p.dtype))


def _some(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (" ..." if len(items) > n else "")


def load_adapter(encoder, path: str | os.PathLike) -> AdapterInfo:
    """Load an adapter file into ``encoder`` (checked: see ``check_adapter_fits``) and record it in
    ``encoder.adapter``, which joins ``encoder.identity()``."""
    from safetensors.torch import load_file

    path = Path(path).expanduser().resolve()
    meta = read_adapter_metadata(path)
    source = f"'{path}'"
    check_adapter_fits(encoder, meta, source)
    tensors = load_file(str(path))
    towers = tuple(t for t in meta.get("towers", TOWERS) if t in TOWERS)
    has_text = getattr(encoder.text, "tvpt", None) is not None
    if has_text and "text" not in towers:
        raise WeightsError(f"adapter {source} holds no text-tower tensors, so text embeddings would not be "
                           "those of the trained model; use it only for video embedding (with_text=False)")
    assign_adapter_tensors(encoder, tensors, source=f"adapter {source}", towers=towers)
    encoder.adapter = AdapterInfo(adapter_digest(tensors), str(meta.get("name", path.stem)), str(path), meta)
    return encoder.adapter
