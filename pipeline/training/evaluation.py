"""``tomeray eval-retrieval``: text-to-video and video-to-text retrieval metrics of an encoder (with or
without an adapter) on captioned clips.

The clips are embedded by the indexing graph itself (``pipeline.video.graph``: Ray Data decode tasks,
then an embed actor pool), so the numbers describe the embeddings ``tomeray index`` would store; the
captions are embedded on the driver by the same model's text tower. Every caption ranks every clip
and every clip every caption (``models.retrieval_metrics``: several captions per clip as in the
MSR-VTT protocol; a clip's v2t rank is that of its best-ranked caption). Clips that fail to decode are
left out, with their captions, and listed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from tomeray.models.errors import InputError, link_note
from tomeray.pipeline.core.config import load_config
from tomeray.pipeline.core.errors_table import error_row
from tomeray.pipeline.core.graph import worker_lost_rows
from tomeray.pipeline.training.config import EvalConfig
from tomeray.pipeline.training.data import load_clips, select_split, splits_needed

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "embed_captions", "run_eval_retrieval"]


@dataclass
class EvalResult:
    metrics: dict  # retrieval_metrics(): t2v, v2t, n_captions, n_videos
    weights_id: str
    adapter: dict | None  # {"id", "name", "path"} of the adapter used, None without one
    source: str
    split: str
    seconds: float
    failures: list[dict] = field(default_factory=list)  # clips left out, and unusable rows

    def to_json(self) -> dict:
        return {**self.metrics, "weights_id": self.weights_id, "random_weights": self.weights_id.startswith(
            "random-init"), "adapter": self.adapter, "data": self.source, "split": self.split,
            "seconds": round(self.seconds, 3), "errors": self.failures}

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


def _embed_clips(cfg: EvalConfig, clips, image_size: int) -> tuple[dict[int, np.ndarray], list[dict]]:
    """Clip index -> unit embedding, through the indexing graph; and the error rows of the others."""
    from tomeray.pipeline.core.ray_session import init_ray
    from tomeray.pipeline.video.graph import build_dataset

    init_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus)
    items = [c.item(key=str(i)) for i, c in enumerate(clips)]
    vectors, failures, seen = {}, [], set()
    ds, _ = build_dataset(items, cfg.index_config(), image_size)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for j, key in enumerate(batch["key"]):
            i = int(key)
            seen.add(clips[i].key)
            if str(batch["error_type"][j]):
                failures.append(error_row(clips[i].key, str(batch["error_stage"][j]),
                                          str(batch["error_type"][j]),
                                          str(batch["error_message"][j]) + link_note(clips[i].path),
                                          path=clips[i].path))
            else:
                vectors[i] = np.asarray(batch["embedding"][j], np.float32)
    expected = [{"item": c.key, "path": c.path} for c in clips]
    return vectors, failures + worker_lost_rows(expected, seen, "decode")


def embed_captions(encoder, texts: list[str], batch_size: int, context_length: int) -> np.ndarray:
    """(N, D) text embeddings of ``texts``, ``batch_size`` captions per text-tower call."""
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = encoder.tokenize(texts[start:start + batch_size], context_length)
        out.append(encoder.encode_text(tokens.to(encoder.device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.embed_dim), np.float32)


def run_eval_retrieval(data: str, overrides: list[str] | tuple[str, ...] = (), address: str | None = None, *,
                       config: EvalConfig | None = None) -> EvalResult:
    """Retrieval metrics on ``data`` (see the module docstring)."""
    from tomeray.models.retrieval_metrics import retrieval_metrics
    from tomeray.models.tempme import create_video_encoder

    started = time.perf_counter()
    cfg = config if config is not None else load_config(EvalConfig, "eval_retrieval", list(overrides))
    if address:
        cfg.ray.address = address
    for name in ("text_batch_size", "context_length"):
        if getattr(cfg.eval, name) < 1:
            raise InputError(f"eval.{name} must be positive")
    clip_set = load_clips(data, cfg.data, splits_needed(cfg.eval.split))
    clips = select_split(clip_set, cfg.eval.split, cfg.data)
    if not clips:
        raise InputError(f"'{data}' has no usable clips in split '{cfg.eval.split}' "
                         f"({len(clip_set.errors)} rows could not be used)")
    # the driver's encoder embeds the captions; built first, it also checks the weights and adapter
    encoder = create_video_encoder(cfg.model, device=cfg.inference.device, precision=cfg.inference.precision)
    if encoder.weights_id.startswith("random-init"):
        log.warning("model weights are RANDOM (%s): the metrics are not meaningful", encoder.weights_id)
    vectors, failures = _embed_clips(cfg, clips, encoder.image_size)
    if not vectors:
        raise InputError(f"none of the {len(clips)} clips could be embedded (first error: "
                         f"{failures[0]['message'] if failures else '?'})")
    kept = sorted(vectors)
    column = {clip: j for j, clip in enumerate(kept)}
    captions = [(column[i], text) for i in kept for text in clips[i].captions]
    text = embed_captions(encoder, [t for _, t in captions], cfg.eval.text_batch_size,
                           cfg.eval.context_length)
    video = np.stack([vectors[i] for i in kept])
    metrics = retrieval_metrics(text @ video.T, [j for j, _ in captions])
    adapter = None
    if encoder.adapter is not None:
        adapter = {"id": encoder.adapter.id, "name": encoder.adapter.name, "path": encoder.adapter.path}
    return EvalResult(metrics, encoder.weights_id, adapter, clip_set.source, cfg.eval.split,
                      time.perf_counter() - started, clip_set.errors + failures)
