"""The training plan (data order, batches, worker shares, augmentation seeds, learning rate) and the
regrouping of a worker's decoded rows into steps."""

from __future__ import annotations

import numpy as np
import pytest
from tomeray.models.errors import ConfigError
from tomeray.pipeline.training.plan import (
    augment_seed,
    epoch_batches,
    lr_factor,
    steps_per_epoch,
    warmup_steps,
    worker_share,
)
from tomeray.pipeline.training.stream import assemble_steps


def test_epoch_batches_are_a_seeded_permutation_without_the_last_partial_batch():
    batches = epoch_batches(10, 4, seed=1, epoch=0)
    assert steps_per_epoch(10, 4) == 2 and [len(b) for b in batches] == [4, 4]
    assert len(set(np.concatenate(batches).tolist())) == 8
    again = epoch_batches(10, 4, seed=1, epoch=0)
    assert all((a == b).all() for a, b in zip(batches, again))
    assert not all((a == b).all() for a, b in zip(batches, epoch_batches(10, 4, seed=1, epoch=1)))
    (small,) = epoch_batches(3, 8, seed=0, epoch=0)  # fewer pairs than a batch: one step over all
    assert sorted(small.tolist()) == [0, 1, 2]


def test_worker_shares_partition_every_batch_whatever_the_worker_count():
    batch = np.arange(7)
    for world in (1, 2, 3):
        shares = [worker_share(batch, r, world) for r in range(world)]
        assert np.concatenate(shares).tolist() == batch.tolist()
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ConfigError, match="cannot be split over 8 workers"):
        worker_share(batch, 0, 8)


def test_augment_seeds_depend_on_seed_epoch_and_pair():
    seeds = {augment_seed(s, e, p) for s in range(2) for e in range(3) for p in range(5)}
    assert len(seeds) == 30 and augment_seed(1, 2, 3) == augment_seed(1, 2, 3)


def test_learning_rate_warms_up_linearly_then_decays_to_zero():
    total, warm = 100, warmup_steps(100, 0.1)
    factors = [lr_factor(s, total, warm) for s in range(total + 1)]
    assert warm == 10 and factors[0] == pytest.approx(1 / 11) and factors[9] == pytest.approx(10 / 11)
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.5)
    assert factors[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    with pytest.raises(ConfigError):
        warmup_steps(10, 1.5)


def row(step, slot, error=""):
    return {"step": step, "slot": slot, "frames": np.full((2, 4, 4, 3), 10 * step + slot, np.uint8),
            "mask": np.ones(2, bool), "error_type": error, "error_message": "boom" if error else ""}


def test_steps_are_assembled_with_failed_lost_and_skipped_slots_kept_invalid():
    planned = [3, 4, 5]
    slots = {3: 2, 4: 3, 5: 1}
    rows = {(s, k): {"key": f"clip{s}{k}", "path": f"/v/{s}{k}.avi", "caption": f"c{s}{k}"}
            for s in planned for k in range(slots[s])}
    rows[(4, 2)]["skip_type"], rows[(4, 2)]["skip_message"] = "CorruptVideoError", "known bad"
    # (3, 1) failed to decode; (4, 1) never came back; (4, 2) was never decoded (known bad)
    stream = [row(3, 0), row(3, 1, "UnreadableVideoError"), row(4, 0), row(5, 0)]
    out = list(assemble_steps(stream, planned, rows, slots, (2, 4, 4, 3)))
    assert [b.step for b in out] == planned
    assert [b.valid.tolist() for b in out] == [[True, False], [True, False, False], [True]]
    assert out[0].frames[0, 0, 0, 0, 0] == 30 and out[0].frames[1].max() == 0
    assert out[1].captions == ["c40", "c41", "c42"] and out[2].mask.all()
    failures = [(f["key"], f["error_type"]) for b in out for f in b.failures]
    assert failures == [("clip31", "UnreadableVideoError"), ("clip41", "WorkerLost"),
                        ("clip42", "CorruptVideoError")]
    assert [b.valid.tolist() for b in assemble_steps([], [0], {(0, 0): rows[(3, 0)]}, {0: 1},
                                                     (2, 4, 4, 3))] == [[False]]
