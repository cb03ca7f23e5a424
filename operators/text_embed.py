"""Embed text queries with the text tower of the video encoder (a Ray Data stage for batch search).

``TextEmbedder(model)`` loads the encoder once per actor; ``__call__`` adds to a batch of rows an
``embedding`` (B, D) float32 column of L2-normalised text embeddings, comparable with the video
embeddings of an index built with the same model (``pipeline.search.model_config_from_manifest``
gives that model for an index), plus ``weights_id`` and ``error`` columns. A row whose query is
empty gets a zero embedding and its reason in ``error`` instead of failing the batch.

    ds.map_batches(TextEmbedder, fn_constructor_kwargs={"model": cfg}, concurrency=2, num_cpus=0.5)
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from tomeray.models.tempme import VideoModelConfig, create_video_encoder

__all__ = ["TextEmbedder"]

log = logging.getLogger(__name__)


class TextEmbedder:
    """Ray Data stage: rows with a text column -> the same rows plus ``embedding``."""

    def __init__(self, model: VideoModelConfig | dict, text_column: str = "query", num_threads: int = 0,
                 device: str = "auto", precision: str = "auto"):
        if num_threads > 0:
            torch.set_num_threads(int(num_threads))  # share a CPU node with the other actors
        cfg = model if isinstance(model, VideoModelConfig) else VideoModelConfig(**model)
        self.encoder = create_video_encoder(cfg, device=device, precision=precision)
        self.text_column = text_column
        log.info("text embedder ready: %s on %s (%s)", cfg.arch, self.encoder.device, self.encoder.weights_id)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.text_column not in batch:
            raise KeyError(f"TextEmbedder: the batch has no '{self.text_column}' column "
                           f"(columns: {', '.join(batch)}); set text_column")
        texts = [t if isinstance(t, str) else "" for t in batch[self.text_column].tolist()]
        error = np.array(["" if t.strip() else "empty query" for t in texts], dtype=object)
        embedding = np.zeros((len(texts), self.encoder.embed_dim), np.float32)
        ok = np.flatnonzero(error == "")
        if len(ok):
            embedding[ok] = self.encoder.encode_text([texts[i] for i in ok]).float().cpu().numpy()
        return {**batch, "embedding": embedding, "error": error.astype(str),
                "weights_id": np.full(len(texts), self.encoder.weights_id)}
