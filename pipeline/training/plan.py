"""What every training step computes, as pure functions of the recipe: the order of the pairs, the
global batches and each worker's share of them, the augmentation seeds, and the learning rate.

Everything derives from ``(seed, epoch)``, so a run resumed from a checkpoint at step s of epoch e
sees exactly the batches and augmentations the interrupted run would have seen, on any number of
workers: a global batch is the same set of pairs whatever the worker count; workers only split it.
"""

from __future__ import annotations

import math

import numpy as np
from tomeray.models.errors import ConfigError

__all__ = ["augment_seed", "epoch_batches", "lr_factor", "steps_per_epoch", "warmup_steps", "worker_share"]


def steps_per_epoch(n_pairs: int, batch_size: int) -> int:
    """Full global batches per epoch (the last partial batch is dropped, as the reference does); a
    data set smaller than one batch is one step over all of it."""
    if n_pairs < 1:
        raise ConfigError("there are no training pairs")
    return max(1, n_pairs // batch_size)


def epoch_batches(n_pairs: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The global batches of ``epoch``: pair indices in a permutation drawn from (seed, epoch)."""
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n_pairs)
    size = min(batch_size, n_pairs)
    return [order[i * size:(i + 1) * size] for i in range(steps_per_epoch(n_pairs, batch_size))]


def worker_share(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Worker ``rank``'s contiguous part of a global batch (sizes differ by at most one)."""
    if len(batch) < world:
        raise ConfigError(f"a batch of {len(batch)} pairs cannot be split over {world} workers; use "
                          f"train.batch_size >= train.workers (and at least as many training pairs)")
    return np.array_split(batch, world)[rank]


def augment_seed(seed: int, epoch: int, pair: int) -> int:
    """The RandAugment seed of one pair in one epoch."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(pair)]).generate_state(1)[0])


def warmup_steps(total_steps: int, warmup: float) -> int:
    if not 0 <= warmup < 1:
        raise ConfigError(f"train.warmup is a fraction of the steps in [0, 1); got {warmup}")
    return int(warmup * total_steps)


def lr_factor(step: int, total_steps: int, warmup: int) -> float:
    """The learning-rate multiplier at optimisation step ``step`` (0-based): linear warm-up over
    ``warmup`` steps, then a cosine decay to zero at ``total_steps``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
