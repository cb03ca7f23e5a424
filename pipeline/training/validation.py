"""Validation inside training: text-to-video and video-to-text retrieval on the held-out clips, with
the adapter as it is at the end of an epoch.

The workers share the work (clip i and caption i go to worker i mod W), decode their clips through
the same Ray Data stream as training (without augmentation), gather the embeddings, and every worker
computes the same metrics (``models.retrieval_metrics``; several captions per clip as in MSR-VTT).
A clip that fails to decode is left out with its captions, and reported in the errors table.
"""

from __future__ import annotations

import numpy as np

__all__ = ["validate"]


def _embed_clips(worker, indices: list[int]) -> tuple[list[int], list[np.ndarray], list[dict]]:
    import torch
    from tomeray.models.frames import normalize_frames
    from tomeray.pipeline.training.stream import decode_stream

    cfg, enc = worker.config, worker.encoder
    rows = [{**cfg["val_clips"][i], "index": i} for i in indices]
    done, vectors, failures = [], [], []
    pending: list[dict] = []

    def flush() -> None:
        if pending:
            frames = torch.from_numpy(np.stack([r["frames"] for r in pending])).to(enc.device)
            frames = normalize_frames(frames, enc.mean, enc.std)
            mask = torch.from_numpy(np.stack([r["mask"] for r in pending])).to(enc.device)
            vectors.extend(enc.encode_video(frames, mask).float().cpu().numpy())
            done.extend(int(r["index"]) for r in pending)
            pending.clear()

    for row in decode_stream(rows, worker.val_decoder, cfg["tasks"], cfg["max_blocks"]):
        if str(row["error_type"]):
            failures.append({"key": str(row["key"]), "path": str(row["path"]),
                             "error_type": str(row["error_type"]), "message": str(row["error_message"])})
            continue
        pending.append(row)
        if len(pending) >= worker.recipe["val_batch_size"]:
            flush()
    flush()
    return done, vectors, failures


def validate(worker) -> dict | None:
    """The retrieval metrics on the validation clips (None when none of them decoded)."""
    from tomeray.models.retrieval_metrics import retrieval_metrics
    from tomeray.pipeline.training.evaluation import embed_captions

    cfg = worker.config
    clips = list(range(worker.rank, len(cfg["val_clips"]), worker.world))
    captions = list(range(worker.rank, len(cfg["val_captions"]), worker.world))
    done, vectors, failures = _embed_clips(worker, clips)
    worker.record_failures(failures)
    texts = [cfg["val_captions"][i][1] for i in captions]
    recipe = worker.recipe
    embedded = embed_captions(worker.encoder, texts, recipe["val_batch_size"], recipe["context_length"])
    shared = worker.gather_objects((done, vectors, captions, embedded))
    video = {i: v for d, vs, _, _ in shared for i, v in zip(d, vs)}
    text = {i: t for _, _, c, ts in shared for i, t in zip(c, ts)}
    if not video:
        return None
    order = sorted(video)
    column = {clip: j for j, clip in enumerate(order)}
    kept = [i for i in sorted(text) if cfg["val_captions"][i][0] in column]
    if not kept:
        return None
    v = np.stack([video[i] for i in order])
    t = np.stack([text[i] for i in kept])
    caption_video = [column[cfg["val_captions"][i][0]] for i in kept]
    return retrieval_metrics(t @ v.T, caption_video)
