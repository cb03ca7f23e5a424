"""Embed decoded clips with the TempMe video encoder (a Ray Data stage run in an actor pool).

``VideoEmbedder(model)`` loads the encoder once per actor; ``__call__`` turns a batch of clip rows
(``frames`` uint8 (B,T,S,S,3), ``mask`` (B,T)) into the same rows with an ``embedding`` (B,D)
float32 column instead of the frames. Rows that already failed upstream pass through untouched.
If the model fails on a batch, each row is retried alone so that one bad clip is reported (stage
``embed``) without losing its neighbours. Each row also carries what embedding it cost
(``embed_cpu_s``, ``embed_wall_s``, ``embed_done_at``: the batch's share) and the actor's start-up
(``embed_process_at``, ``embed_init_at``, ``embed_ready_at``, ``embed_boot_cpu_s``,
``embed_import_cpu_s``, ``embed_build_cpu_s``): see ``operators.worker``.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch
from tomeray.models.errors import one_line
from tomeray.models.frames import normalize_frames
from tomeray.models.tempme import VideoModelConfig, create_video_encoder
from tomeray.operators.worker import WorkerStart, cost_columns, measure, node_id

__all__ = ["VideoEmbedder"]

log = logging.getLogger(__name__)

FRAME_COLUMNS = ("frames", "mask")


class VideoEmbedder:
    """Ray Data stage: clip rows -> embedded rows. Pass the class to ``map_batches``."""

    def __init__(self, model: VideoModelConfig | dict, num_threads: int = 0, device: str = "auto",
                 precision: str = "auto"):
        init_at, init_cpu_s = time.time(), time.process_time()
        if num_threads > 0:
            # A CPU actor gets the cores it reserved, not all of the machine's: decode tasks
            # share those cores, and oversubscribed torch threads only add contention.
            torch.set_num_threads(int(num_threads))
        cfg = model if isinstance(model, VideoModelConfig) else VideoModelConfig(**model)
        with measure() as imports:  # the model factory imports it on first use: timed apart from the build
            import open_clip  # noqa: F401
        # videos only: no text tower
        self.encoder = create_video_encoder(cfg, with_text=False, device=device, precision=precision)
        self.model_config = dataclasses.asdict(cfg)
        self.node_id = node_id()
        self.start = WorkerStart.since(init_at, init_cpu_s, imports.cpu_s)
        log.info("video embedder ready: %s on %s (%s)", cfg.arch, self.encoder.device,
                 self.encoder.weights_id)

    def embed(self, frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """uint8 (B,T,S,S,3) + bool (B,T) -> float32 (B,D) unit vectors."""
        x = torch.from_numpy(np.ascontiguousarray(frames))
        x = normalize_frames(x, self.encoder.mean, self.encoder.std)
        m = torch.from_numpy(np.asarray(mask, dtype=bool))
        device = self.encoder.device
        return self.encoder.encode_video(x.to(device, non_blocking=True), m.to(device)).float().cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["path"])
        out = {k: v for k, v in batch.items() if k not in FRAME_COLUMNS}
        embedding = np.zeros((n, self.encoder.embed_dim), np.float32)
        error_stage = np.asarray(batch["error_stage"], dtype=object).copy()
        error_type = np.asarray(batch["error_type"], dtype=object).copy()
        error_message = np.asarray(batch["error_message"], dtype=object).copy()
        todo = np.flatnonzero(error_type == "")
        with measure() as cost:
            if len(todo):
                try:
                    embedding[todo] = self.embed(batch["frames"][todo], batch["mask"][todo])
                except Exception:  # noqa: BLE001 - find the row that fails, keep the others
                    for i in todo:
                        try:
                            embedding[i] = self.embed(batch["frames"][i : i + 1], batch["mask"][i : i + 1])[0]
                        except Exception as e:  # noqa: BLE001 - reported in the errors table
                            error_stage[i], error_type[i] = "embed", type(e).__name__
                            error_message[i] = one_line(e)
        out.update(embedding=embedding, error_stage=error_stage.astype(str),
                   error_type=error_type.astype(str), error_message=error_message.astype(str),
                   embed_node=np.full(n, self.node_id), **cost_columns("embed", n, cost),
                   **self.start.columns("embed", n))
        return out
