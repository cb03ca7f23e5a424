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

The text encoder carries TempMe's text-tower LoRA (``models.lora``; zero update until trained).

Construction draws random values only where they are the weights: a model whose weights are
loaded is built without open_clip's random init (``skip_weight_init``: every parameter is then
overwritten by the strict load), and ``text=False`` with random init draws the vision tower alone
(open_clip builds it first from the seeded stream, so its values are those of the whole model).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tomeray.models.errors import ConfigError, InputError, WeightsError
from tomeray.models.lora import LORA_RANK, FoldedQKV, TowerAdapter, lora_qkv
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["ClipTextEncoder", "LoadedClip", "RANDOM_INIT", "load_clip", "skip_weight_init"]

RANDOM_INIT = "none"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class ClipTextEncoder(nn.Module):
    """open_clip tokenizer + text tower: strings (or token ids) -> (N, D) L2-normalised embeddings.

    The text transformer runs on its own weights through a block forward that adds the LoRA update
    (``tvpt``: ``transformer.resblocks.N.attn.TVPt_LoRA_a/b``) and keeps the tower's causal mask and
    its end-of-text pooling; with B = 0 this is open_clip's ``encode_text``. Text towers it does not
    cover (Hugging Face towers, class-token or padding-mask towers, custom blocks) run open_clip's own
    ``encode_text`` and have no LoRA (``tvpt`` is None).
    """

    def __init__(self, model: nn.Module, tokenizer, lora_rank: int = LORA_RANK):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self._tower_attr = _lora_text_tower(model)
        tower = self._tower
        self.tvpt = None
        if tower is not None:
            blocks = tower.transformer.resblocks
            self.tvpt = TowerAdapter(int(tower.transformer.width), len(blocks), lora_rank, seed=1).to(
                tower.positional_embedding.device)

    @property
    def _tower(self) -> nn.Module | None:
        """The module holding the text transformer: the CLIP model itself, or its ``text`` tower."""
        if self._tower_attr is None:
            return None
        return getattr(self.model, self._tower_attr) if self._tower_attr else self.model

    def folded(self) -> ClipTextEncoder:
        """A copy for inference whose attention projections are plain ``nn.Linear`` layers: each
        block's LoRA folded into its in-projection (:class:`FoldedQKV`) and its out-projection a
        plain linear, so that int8 quantisation converts every projection. The copy computes what
        this encoder computes (up to rounding); towers the LoRA forward does not cover are copied
        as they are."""
        copy = deepcopy(self)
        tower = copy._tower
        if tower is None:
            return copy
        for i, block in enumerate(tower.transformer.resblocks):
            parts = copy.tvpt.blocks[i]
            parts.attn = FoldedQKV(block.attn, parts.attn)
            out = block.attn.out_proj  # (nn.MultiheadAttention's subclass, which quantisation skips)
            plain = nn.Linear(out.in_features, out.out_features, bias=out.bias is not None)
            plain.load_state_dict(out.state_dict())
            block.attn.out_proj = plain
        return copy

    def tokenize(self, texts: list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError(f"encode_text expects a list of strings; got {type(texts).__name__}")
        return self.tokenizer(list(texts), context_length=context_length)

    def forward(self, texts: list[str] | torch.Tensor) -> torch.Tensor:
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        return self.encode_tokens(tokens)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids -> (N, D) float32 unit vectors (L up to the tower's context length)."""
        device = next(self.model.parameters()).device
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise InputError(f"token ids must be an integer tensor (N, L); got {tuple(tokens.shape)} "
                             f"{tokens.dtype}")
        tokens = tokens.to(device)
        tower = self._tower
        if tower is None:
            return self.model.encode_text(tokens, normalize=True).float()
        length, context = tokens.shape[1], tower.positional_embedding.shape[0]
        if length > context:
            raise InputError(f"token ids have length {length}; this text tower takes at most {context}")
        tokens = _trim_padding(tower, self._tower_attr, tokens)
        n, length = tokens.shape
        x = tower.token_embedding(tokens).to(tower.transformer.get_cast_dtype())
        x = x + tower.positional_embedding[:length].to(x.dtype)
        mask = tower.attn_mask[:length, :length] if tower.attn_mask is not None else None
        for block, parts in zip(tower.transformer.resblocks, self.tvpt.blocks):
            q, k, v = lora_qkv(block, parts.attn, block.ln_1(x), sequence_first=True)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
            x = x + block.ls_1(block.attn.out_proj(y.transpose(1, 2).reshape(n, length, -1)))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        x = _pool_text(tower, self._tower_attr, tower.ln_final(x), tokens)
        projection = tower.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return F.normalize(x, dim=-1).float()


def _lora_text_tower(model: nn.Module) -> str | None:
    """Where the LoRA forward finds the text transformer: "" (CLIP keeps it on the model), "text"
    (CustomTextCLIP's TextTransformer), or None when the forward does not cover the tower."""
    from open_clip.transformer import ResidualAttentionBlock, TextTransformer

    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):
        if text.cls_emb is not None or text.use_pad_mask:
            return None
        attr, tower = "text", text
    elif all(hasattr(model, a) for a in ("token_embedding", "positional_embedding", "transformer",
                                         "ln_final")):
        attr, tower = "", model
    else:
        return None
    transformer = tower.transformer
    plain = all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
                for b in transformer.resblocks)
    return attr if plain and getattr(transformer, "batch_first", True) else None


def _trim_padding(tower: nn.Module, attr: str, tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` without the padding after the batch's last end-of-text token. The tower is causal
    and pools at that token, so later positions never reach the output: the embeddings are those of
    the padded batch, at a fraction of the cost (a query is a few of the 77 positions)."""
    if tower.attn_mask is None:  # not causal: every position reaches every other
        return tokens
    pool = tower.pool_type if attr else tower.text_pool_type
    if pool == "argmax":  # open_clip's tokenizer gives end-of-text the highest id
        last = tokens.argmax(dim=-1)
    elif pool == "eos":
        eos = tower.eos_id if attr else getattr(tower, "text_eos_id", None)
        last = (tokens == eos).int().argmax(dim=-1)
    else:
        return tokens
    return tokens[:, : int(last.max()) + 1]


def _pool_text(tower: nn.Module, attr: str, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    from open_clip.transformer import text_global_pool

    if attr:  # TextTransformer
        return text_global_pool(x, tokens, tower.pool_type, eos_token_id=tower.eos_id)
    return text_global_pool(x, tokens, tower.text_pool_type, eos_token_id=getattr(tower, "text_eos_id", None))


class _SkipRandomFill(TorchFunctionMode):
    """Turns the in-place random fills of weight initialisation into no-ops (the tensor keeps
    whatever its memory held). Deterministic fills (zeros, ones, constants) still run."""

    FILLS = frozenset({torch.Tensor.uniform_, torch.Tensor.normal_, nn.init.uniform_, nn.init.normal_,
                       nn.init.kaiming_uniform_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.FILLS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


@contextmanager
def skip_weight_init() -> Iterator[None]:
    """Build modules without drawing random initial values, for a model whose every parameter is
    then loaded, or whose values are never used (reading its shapes and identity). Applies to
    this thread only."""
    with _SkipRandomFill():
        yield


def _random_clip(arch: str, seed: int, text: bool) -> nn.Module:
    """open_clip's random init of ``arch`` from ``seed``, in a private RNG stream (the caller's
    global torch RNG state is left as it was). Without ``text``, only the vision tower's values are
    drawn; the text tower holds arbitrary values and is meant to be dropped."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            from open_clip.model import _build_vision_tower
        except ImportError:  # open_clip moved its builder: the whole model, as before
            text = True
        if text:
            return open_clip.create_model(arch, pretrained=None)
        with skip_weight_init():
            model = open_clip.create_model(arch, pretrained=None)
        cfg = open_clip.get_model_config(arch)
        torch.manual_seed(seed)  # open_clip's own first draws: the vision tower, built as create_model does
        visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], cfg.get("quick_gelu", False))
        model.visual.load_state_dict(visual.state_dict(), assign=True)
        return model


@dataclass
class LoadedClip:
    visual: nn.Module  # open_clip VisionTransformer (or another tower for non-ViT archs)
    text: ClipTextEncoder | None  # None when loaded with text=False
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


def load_clip(arch: str, pretrained: str, *, seed: int = 0, cache_dir: str | None = None,
              lora_rank: int = LORA_RANK, text: bool = True) -> LoadedClip:
    """Create open_clip model ``arch`` with the weights named by ``pretrained`` (see module doc);
    ``lora_rank``: rank of the text tower's (untrained) LoRA; ``text=False``: no text encoder
    (video-only workers)."""
    import open_clip

    _check_arch(arch)
    pretrained = str(pretrained)
    kwargs: dict = {}
    if pretrained == RANDOM_INIT:
        model = _random_clip(arch, seed, text)
        weights_id = f"random-init(seed={seed})"
    elif _is_path_like(pretrained) or Path(pretrained).is_file():
        path = Path(pretrained).expanduser().resolve()
        if not path.is_file():
            raise WeightsError(
                f"checkpoint file '{path}' does not exist; pass an open_clip state dict "
                f"(.pt/.bin/.safetensors), an open_clip tag, or pretrained=none for random init"
            )
        try:
            with skip_weight_init():  # the strict load overwrites every parameter
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
            with skip_weight_init():  # the strict load overwrites every parameter
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
    encoder = ClipTextEncoder(model, open_clip.get_tokenizer(arch), lora_rank=lora_rank) if text else None
    return LoadedClip(visual, encoder, weights_id, size, mean, std)
