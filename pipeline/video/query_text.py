"""Text queries -> unit vectors for a searcher: the index's text tower in fp32 (the default), with
int8 MLP layers (``search.text_precision=int8``, CPU), or with every projection in int8
(``int8-all``: the attention's in- and out-projections too, the LoRA folded in; about twice as
fast as ``int8`` and a little further from fp32, docs/scale.md has both), behind an LRU cache of query
embeddings (``search.cache_size``) so a repeated query skips the tower altogether.

The cache is keyed by the exact query string and holds one (D,) float32 vector per entry
(2 KB at D=512); it is shared by every index a server loads (they share one encoder) and kept
across hot swaps, since an index update does not change the encoder."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from tomeray.models.errors import ConfigError
from tomeray.models.quantize import TEXT_PRECISIONS, quantize_linear_int8

__all__ = ["QueryTextEncoder"]


class QueryTextEncoder:
    def __init__(self, encoder, precision: str = "fp32", cache_size: int = 0):
        if precision not in TEXT_PRECISIONS:
            raise ConfigError(f"search.text_precision must be one of {', '.join(TEXT_PRECISIONS)}, "
                              f"got {precision!r}")
        if not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigError(f"search.cache_size must be a non-negative integer, got {cache_size!r}")
        self.encoder, self.precision, self.cache_size = encoder, precision, cache_size
        self._tower = None
        if precision != "fp32":
            if str(encoder.device) != "cpu":
                raise ConfigError(f"search.text_precision={precision} runs on the CPU, but the encoder is on "
                                  f"{encoder.device}: use inference.device=cpu or text_precision=fp32")
            if encoder.text is None:
                raise ConfigError("the encoder has no text tower to quantise")
            # the attention's projections are converted only once they are plain linear layers
            tower = encoder.text.folded() if precision == "int8-all" else encoder.text
            self._tower = quantize_linear_int8(tower)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(Q,) strings -> (Q, D) float32 unit vectors, cached ones reused."""
        texts = list(texts)
        found: dict[int, np.ndarray] = {}
        with self._lock:
            for i, text in enumerate(texts):
                if text in self._cache:
                    self._cache.move_to_end(text)
                    found[i] = self._cache[text]
            self.hits += len(found)
            self.misses += len(texts) - len(found)
        missing = [i for i in range(len(texts)) if i not in found]
        if missing:
            vectors = self._compute([texts[i] for i in missing])
            for i, vector in zip(missing, vectors):
                found[i] = vector
            self._remember([texts[i] for i in missing], vectors)
        if not texts:
            return np.zeros((0, self.encoder.embed_dim), np.float32)
        return np.stack([found[i] for i in range(len(texts))])

    def _compute(self, texts: list[str]) -> np.ndarray:
        if self._tower is None:
            return self.encoder.encode_text(texts).float().cpu().numpy()
        import torch

        with torch.inference_mode():
            return self._tower(texts).float().numpy()

    def _remember(self, texts: list[str], vectors: np.ndarray) -> None:
        if not self.cache_size:
            return
        with self._lock:
            for text, vector in zip(texts, vectors):
                vector = vector.copy()
                vector.flags.writeable = False  # shared by every caller that asks for this text
                self._cache[text] = vector
                self._cache.move_to_end(text)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def stats(self) -> dict:
        with self._lock:
            return {"text_precision": self.precision, "cache_size": self.cache_size,
                    "cached": len(self._cache), "hits": self.hits, "misses": self.misses}
