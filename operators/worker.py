"""What every stage records about where it ran and what its work cost.

Cost columns (one value per output row, summed by the driver's writers):

* ``<stage>_cpu_s``: CPU seconds of this process (all its threads: torch's and the decoder's
  included) spent producing the row; process start-up and model construction are not in it;
* ``<stage>_wall_s``: wall seconds of that work;
* ``<stage>_done_at``: epoch seconds when the row's work ended (the first one dates the first
  result of the stage).

A batch's cost is shared equally by its rows. Actors also stamp when their process started,
when their constructor began (imports done) and when it ended (model ready), with the CPU
seconds of each part: see ``WorkerStart``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np

__all__ = ["Timing", "WorkerStart", "cost_columns", "measure", "node_id", "process_started_at", "timed_steps"]


def node_id() -> str:
    """The Ray node id of this worker ("local" outside Ray): diagnostics only, never raises."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # noqa: BLE001 - node ids are diagnostics only
        return "unknown"


def process_started_at() -> float:
    """Epoch seconds when this process started (from /proc on Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time since boot
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return float("nan")


@dataclass
class Timing:
    cpu_s: float = 0.0
    wall_s: float = 0.0
    done_at: float = 0.0  # epoch seconds


@contextmanager
def measure() -> Iterator[Timing]:
    """Process CPU and wall seconds of the block (filled in when it ends)."""
    timing = Timing()
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        yield timing
    finally:
        timing.cpu_s = time.process_time() - cpu
        timing.wall_s = time.perf_counter() - wall
        timing.done_at = time.time()


def timed_steps(items: Iterator) -> Iterator[tuple[object, Timing]]:
    """``(item, timing)`` for each item of a generator: the cost of producing it alone, not what
    the consumer does between items."""
    while True:
        with measure() as timing:
            try:
                item = next(items)
            except StopIteration:
                return
        yield item, timing


def cost_columns(stage: str, rows: int, timing: Timing) -> dict:
    """The cost columns of ``rows`` rows that shared the work timed by ``timing``."""
    share = max(rows, 1)
    return {f"{stage}_cpu_s": np.full(rows, timing.cpu_s / share),
            f"{stage}_wall_s": np.full(rows, timing.wall_s / share),
            f"{stage}_done_at": np.full(rows, timing.done_at)}


@dataclass(frozen=True)
class WorkerStart:
    """An actor's start-up: when its process started, its constructor began and ended (epoch
    seconds), and the process CPU seconds before its constructor (worker start-up, module
    imports), of the model library's import inside it, and of the rest (model construction).
    CPU seconds do not stretch when the machine is shared; wall seconds do."""

    process_at: float
    init_at: float
    ready_at: float
    boot_cpu_s: float
    import_cpu_s: float
    build_cpu_s: float

    @classmethod
    def since(cls, init_at: float, init_cpu_s: float, import_cpu_s: float = 0.0) -> WorkerStart:
        """Stamps of a constructor that began at ``init_at`` (``time.time()``) when the process
        had used ``init_cpu_s`` (``time.process_time()``), spent ``import_cpu_s`` importing, and
        ends now."""
        build = time.process_time() - init_cpu_s - import_cpu_s
        return cls(process_started_at(), init_at, time.time(), init_cpu_s, import_cpu_s, build)

    def columns(self, stage: str, rows: int) -> dict:
        return {f"{stage}_{f.name}": np.full(rows, getattr(self, f.name)) for f in fields(self)}
