"""Where a job's time goes: the stages' costs summed from their cost columns
(``operators.worker``), the throughput bound those costs allow, and the start-up timeline.

Efficiency (the same definition for every job and benchmark):

* a stage's cost is the CPU seconds its workers spent on the rows' work, per item (video or
  scene), averaged over every row of the run; start-up (process start, imports, model
  construction) happens outside the rows and is not in it, and neither is Ray's own work
  (scheduling, serialisation, transfers) or the driver's;
* the bound on CPU is ``cores / (sum of the stages' costs)`` items/s: the rate if every core did
  nothing but stage work. With device actors (GPUs) the bound is also at most
  ``actors / (device stage wall seconds per item)``, the rate if every actor were always busy;
* efficiency = items/s / bound = (CPU seconds of stage work) / (cores x seconds): the share of
  the machine that went into the work itself.

Every row's work lies inside the timed window, a worker does one row at a time, and a core gives
at most one CPU second per second, so the efficiency cannot exceed 1. A figure above 1 means the
measurement is wrong (cores under-counted, or CPU time measured outside the window): ``valid`` is
then False. ``CostTotals.window_cpu_s`` gives the same figure over part of a run (e.g. after the
start-up), counting only rows whose work lies wholly inside that part, so it keeps the property.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CostTotals", "RunFigures", "efficiency", "run_costs", "startup_timeline"]


@dataclass(kw_only=True)
class RunFigures:
    """What a job's summary reports of where its time went (kw-only: listed after its own fields)."""

    startup: dict[str, float] = field(default_factory=dict)  # seconds from run start to each milestone
    startup_cpu: dict[str, float] = field(default_factory=dict)  # CPU s: driver before the graph, actors
    costs: dict = field(default_factory=dict)  # stage CPU per item, bound, efficiency (run_costs)

# Rounding slack for ``valid``: process_time has microsecond resolution, sums of many rows drift.
TOLERANCE = 1e-3
STAMPS = ("process_at", "init_at", "ready_at")  # actor start-up stamps (operators.worker.WorkerStart)
STARTUP_CPU = ("boot_cpu_s", "import_cpu_s", "build_cpu_s")  # and its CPU seconds, one value per actor


@dataclass
class CostTotals:
    """The cost columns of ``stages`` over the batches that reach the driver: per-row work
    intervals and CPU seconds, and the earliest of each stamp."""

    stages: tuple[str, ...]
    rows: int = 0
    first: dict[str, float] = field(default_factory=dict)  # stamp -> earliest epoch seconds
    # (stage, constructor start) -> that actor's start-up CPU seconds
    actors: dict[tuple[str, float], dict[str, float]] = field(default_factory=dict)
    # stage -> arrays of rows (started_at, done_at, cpu_s, wall_s)
    _rows: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for stage in self.stages:
            if f"{stage}_cpu_s" not in batch:
                continue
            wall = np.asarray(batch[f"{stage}_wall_s"], np.float64)
            done = np.asarray(batch[f"{stage}_done_at"], np.float64)
            cpu = np.asarray(batch[f"{stage}_cpu_s"], np.float64)
            self._rows.setdefault(stage, []).append(np.stack([done - wall, done, cpu, wall], axis=1))
            worked = wall > 0  # a row passed on without work (a failed input) starts nothing
            if worked.any():
                self._earliest(f"{stage}_started_at", float(np.min((done - wall)[worked])))
                self._earliest(f"{stage}_done_at", float(np.min(done[worked])))
            for stamp in STAMPS:
                column = batch.get(f"{stage}_{stamp}")
                if column is not None and len(column) and not np.all(np.isnan(column)):
                    self._earliest(f"{stage}_{stamp}", float(np.nanmin(column)))
            if f"{stage}_init_at" in batch:  # one actor per distinct constructor start
                for i in np.unique(np.asarray(batch[f"{stage}_init_at"]), return_index=True)[1]:
                    key = (stage, float(batch[f"{stage}_init_at"][i]))
                    self.actors[key] = {name: float(batch[f"{stage}_{name}"][i]) for name in STARTUP_CPU
                                        if f"{stage}_{name}" in batch}
        self.rows += len(next(iter(batch.values()))) if batch else 0

    def startup_cpu(self) -> dict[str, float]:
        """Per stage with actors: their count and mean CPU seconds of start-up and model build."""
        out: dict[str, float] = {}
        for stage in self.stages:
            actors = [v for (s, _), v in self.actors.items() if s == stage]
            if actors:
                out[f"{stage}_actors"] = len(actors)
                for name in STARTUP_CPU:
                    values = [a[name] for a in actors if name in a]
                    if values:
                        out[f"{stage}_{name}"] = round(sum(values) / len(values), 3)
        return out

    def _earliest(self, name: str, value: float) -> None:
        if math.isfinite(value) and value < self.first.get(name, math.inf):
            self.first[name] = value

    def _table(self, stage: str) -> np.ndarray:
        parts = self._rows.get(stage)
        return np.concatenate(parts) if parts else np.zeros((0, 4))

    @property
    def cpu_s(self) -> dict[str, float]:
        """Total CPU seconds of each stage's rows."""
        return {stage: float(self._table(stage)[:, 2].sum()) for stage in self._rows}

    @property
    def wall_s(self) -> dict[str, float]:
        """Total wall seconds of each stage's rows (a batch's rows share its wall time)."""
        return {stage: float(self._table(stage)[:, 3].sum()) for stage in self._rows}

    def window_cpu_s(self, start_at: float, end_at: float) -> float:
        """CPU seconds of the rows (any stage) whose work lies wholly inside [start_at, end_at]."""
        total = 0.0
        for stage in self._rows:
            t = self._table(stage)
            inside = (t[:, 0] >= start_at) & (t[:, 1] <= end_at)
            total += float(t[inside, 2].sum())
        return total


def efficiency(items: int, seconds: float, cores: float, cpu_s: dict[str, float],
               device_s: float = 0.0, device_slots: float = 0.0) -> dict:
    """The efficiency of a run of ``items`` in ``seconds`` on ``cores`` (see the module docstring).
    ``cpu_s``: total CPU seconds per stage; ``device_s``/``device_slots``: total wall seconds of the
    device stage and its actors (GPU runs only)."""
    total = sum(cpu_s.values())
    per_item = {stage: s / items for stage, s in cpu_s.items()} if items else {}
    rate = items / seconds if seconds > 0 else 0.0
    bound, kind = (cores * items / total, "cpu") if total > 0 and items else (math.inf, "none")
    if device_slots > 0 and device_s > 0 and items:
        device_bound = device_slots * items / device_s
        if device_bound < bound:
            bound, kind = device_bound, "device"
    value = rate / bound if math.isfinite(bound) and bound > 0 else float("nan")
    return {"items": items, "seconds": seconds, "items_per_s": rate, "cores": cores,
            "cpu_s_per_item": per_item, "bound_per_s": bound, "bound_kind": kind, "efficiency": value,
            "valid": not (value > 1 + TOLERANCE)}


def run_costs(totals: CostTotals, items: int, start_at: float, end_at: float, cores: float,
              device_stage: str | None = None, device_slots: float = 0.0,
              steady_from: float | None = None) -> dict:
    """``efficiency`` of the rows in ``totals`` over the window [start_at, end_at] (epoch seconds),
    with ``efficiency_steady`` over [steady_from, end_at] (rows wholly inside it only), e.g. from
    the first result on, which leaves the fixed start-up out."""
    device_s = totals.wall_s.get(device_stage, 0.0) if device_stage else 0.0
    costs = efficiency(items, end_at - start_at, cores, totals.cpu_s, device_s, device_slots)
    if steady_from is not None and end_at > steady_from and cores > 0:
        steady = totals.window_cpu_s(steady_from, end_at) / (cores * (end_at - steady_from))
        costs.update(efficiency_steady=steady, steady_s=end_at - steady_from,
                     valid=costs["valid"] and not (steady > 1 + TOLERANCE))
    return costs


def startup_timeline(started_at: float, marks: dict[str, float], first: dict[str, float]) -> dict:
    """Seconds from ``started_at`` (epoch) to each driver mark and to each earliest stage stamp
    (``CostTotals.first``), sorted by time. An actor whose process was started before the job
    (a worker Ray started in advance) shows a negative or early ``*_process_at``."""
    points = {**marks, **first}
    return dict(sorted(((name, round(at - started_at, 3)) for name, at in points.items()
                        if math.isfinite(at)), key=lambda kv: kv[1]))
