"""Clips for one training worker, decoded by Ray Data while the worker trains, regrouped into steps.

Each worker decodes only its own share of every global batch (``pipeline.training.plan``), as a
Ray Data stream of decode tasks (``operators.clip_decode``) that runs ahead of training by a few
blocks; nothing is preloaded. Streaming the worker's own rows (rather than splitting one dataset
over the workers) keeps every step's rows known in advance, so a run resumed at step s decodes
from step s on and skips nothing it has not trained on.

``assemble_steps`` turns the row stream back into the planned steps. A row whose decode failed, or
that never came back (its decode worker died), stays in its step as an invalid slot: every worker
runs every planned step, which the collective operations of data-parallel training require.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = ["StepBatch", "assemble_steps", "decode_stream"]


@dataclass
class StepBatch:
    step: int
    frames: np.ndarray  # (k, T, S, S, 3) uint8; zeros in invalid slots
    mask: np.ndarray  # (k, T) bool
    captions: list[str]
    valid: np.ndarray  # (k,) bool: decoded fine
    failures: list[dict] = field(default_factory=list)  # {key, path, error_type, message} of failed slots


def decode_stream(rows: list[dict], decoder, tasks, max_blocks: int) -> Iterator[dict]:
    """Decoded rows (one dict each) for ``rows``, in order. ``decoder``: a ``ClipDecoder``; ``tasks``:
    the decode stage's ``TaskPoolConfig``."""
    if not rows:
        return
    import ray
    from tomeray.pipeline.core.graph import source_dataset, task_stage

    # in order: the steps are assembled as the rows arrive
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = task_stage(source_dataset(rows, progress=False, max_blocks=max_blocks), decoder, tasks)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        for i in range(len(batch["path"])):
            yield {name: column[i] for name, column in batch.items()}


def _batch(step: int, slots: int, got: dict[int, dict], expected: dict[int, dict], shape: tuple) -> StepBatch:
    frames = np.zeros((slots, *shape), np.uint8)
    mask = np.zeros((slots, shape[0]), bool)
    valid = np.zeros(slots, bool)
    captions, failures = [], []
    for slot in range(slots):
        want = expected[slot]
        captions.append(str(want["caption"]))
        row = got.get(slot)
        if row is None:
            failures.append({"key": want["key"], "path": want["path"], "error_type": want.get("skip_type") or
                             "WorkerLost", "message": want.get("skip_message") or
                             "no decoded clip came back (the decode worker died); it is retried next epoch"})
        elif str(row["error_type"]):
            failures.append({"key": want["key"], "path": want["path"], "error_type": str(row["error_type"]),
                             "message": str(row["error_message"])})
        else:
            frames[slot], mask[slot], valid[slot] = row["frames"], row["mask"], True
    return StepBatch(step, frames, mask, captions, valid, failures)


def assemble_steps(stream: Iterable[dict], planned: list[int], rows: dict[tuple[int, int], dict],
                   slots: dict[int, int], shape: tuple) -> Iterator[StepBatch]:
    """One ``StepBatch`` per step in ``planned`` (in that order): ``rows`` maps (step, slot) to the row
    planned there, ``slots`` each step's number of slots, ``shape`` a clip's (T, S, S, 3)."""
    stream = iter(stream)
    pending: dict | None = None
    for step in planned:
        got: dict[int, dict] = {}
        while True:
            row = pending if pending is not None else next(stream, None)
            pending = None
            if row is None:
                break
            if int(row["step"]) > step:
                pending = row  # the next step's first row
                break
            if int(row["step"]) == step:
                got[int(row["slot"])] = row
        expected = {slot: rows[(step, slot)] for slot in range(slots[step])}
        yield _batch(step, slots[step], got, expected, shape)
