"""Ray Data graphs of the batch jobs: input rows -> a task stage (CPU work: decoding, loading) ->
an actor-pool stage (a model loaded once per actor) -> results streamed back to the driver.

Both jobs build their graph with these pieces, so failures, resources and progress behave alike:

* a worker that dies loses its block, not the job (``max_errored_blocks``); the items of such
  blocks come back as ``WorkerLost`` errors (``worker_lost_rows``) and are retried by a rerun;
* task stages declare their memory: besides being true, it keeps Ray Data from fusing them into
  the actors (it fuses stages whose resource requests are equal), so CPU work spreads over the
  cluster and overlaps with inference;
* actors take a fraction of a CPU by default, so an actor pool never takes every CPU slot and
  starves the task stage on small machines.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from tomeray.pipeline.core.errors_table import error_row

log = logging.getLogger(__name__)

__all__ = ["ActorPlan", "ActorPoolConfig", "RayJobConfig", "TaskPoolConfig", "actor_stage", "plan_actors",
           "source_dataset", "task_stage", "worker_lost_rows"]


@dataclass
class TaskPoolConfig:
    num_cpus: float = 0.5  # CPUs reserved per task
    memory_mb: int = 512  # memory reserved per task (its worker process included)
    concurrency: int | None = None  # max tasks at once (None: as many as fit)


@dataclass
class ActorPoolConfig:
    count: int = 0  # actors; 0: one per GPU, on CPU-only clusters the job's default (plan_actors)
    num_cpus: float = 0.5  # CPUs reserved per actor
    num_gpus: float | None = None  # None: 1 per actor when the cluster has GPUs, else 0
    threads: int = 0  # torch threads of a CPU actor (0: its reserved CPUs, at least 1)
    batch_size: int = 0  # rows per actor call (0: the job's default)


@dataclass
class RayJobConfig:
    """The ``ray`` section of every job: the cluster, and the resources of the graph's two stages."""

    address: str | None = None  # cluster to join; None: RAY_ADDRESS, else a local cluster
    num_cpus: int | None = None  # CPUs of the local cluster (None: all)
    tasks: TaskPoolConfig = field(default_factory=TaskPoolConfig)  # the CPU stage (decode / load)
    actors: ActorPoolConfig = field(default_factory=ActorPoolConfig)  # the model stage (embed / VGGT)
    max_blocks: int = 10_000  # inputs are split into this many blocks at most (a dying worker loses one)
    progress: bool = True  # Ray Data progress bars


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    num_cpus: float
    num_gpus: float
    threads: int  # 0: torch's default (GPU actors)

    @property
    def on_gpu(self) -> bool:
        return self.num_gpus > 0


def cluster_resources() -> dict[str, float]:
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}


def plan_actors(cfg: ActorPoolConfig, work_items: int, cpu_share: float = 0.0) -> ActorPlan:
    """The actor pool for the connected cluster: ``cfg.count`` when set; else one per GPU, or on a
    CPU-only cluster ``max(1, round(cpu_share * CPUs))``; never more actors than work items."""
    resources = cluster_resources()
    gpus = resources.get("GPU", 0.0)
    num_gpus = cfg.num_gpus if cfg.num_gpus is not None else (1.0 if gpus else 0.0)
    if cfg.count > 0:
        actors = cfg.count
    elif num_gpus > 0:
        actors = max(1, int(gpus / num_gpus))
    else:
        actors = max(1, round(cpu_share * resources.get("CPU", 1.0)))
    threads = 0 if num_gpus > 0 else (cfg.threads or max(1, round(cfg.num_cpus)))
    return ActorPlan(max(1, min(actors, work_items)), cfg.num_cpus, num_gpus, threads)


def source_dataset(items: list[dict], *, progress: bool, max_blocks: int = 10_000):
    """A dataset of ``items`` in up to ``max_blocks`` blocks (a dying worker loses one block)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.max_errored_blocks = len(items)
    return ray.data.from_items(items, override_num_blocks=max(1, min(len(items), max_blocks)))


def task_stage(ds, fn, pool: TaskPoolConfig):
    """``fn`` (a callable instance, cheap to build) over one row at a time, as Ray tasks."""
    import ray

    return ds.map_batches(fn, batch_size=1, num_cpus=pool.num_cpus, memory=pool.memory_mb * 2**20,
                          compute=ray.data.TaskPoolStrategy(size=pool.concurrency))


def actor_stage(ds, cls: type, kwargs: dict, plan: ActorPlan, batch_size: int):
    """``cls(**kwargs, num_threads=plan.threads)`` once per actor, called on batches of rows."""
    import ray

    log.info("%s: %d actor(s), %s CPU / %s GPU each, batches of %d", cls.__name__, plan.actors,
             plan.num_cpus, plan.num_gpus, batch_size)
    return ds.map_batches(cls, fn_constructor_kwargs={**kwargs, "num_threads": plan.threads},
                          batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=plan.actors),
                          num_cpus=plan.num_cpus, num_gpus=plan.num_gpus or None)


def worker_lost_rows(expected: Iterable[dict], seen: set[str], stage: str, advice: str = "") -> list[dict]:
    """Error rows for the items (dicts with ``item`` and optionally ``input``, ``path``) that went
    into the graph and never came back, because the worker processing them died."""
    message = f"no result came back (the worker processing it died{advice}); rerun to retry"
    return [error_row(e["item"], stage, "WorkerLost", message, input=e.get("input", ""),
                      path=e.get("path", "")) for e in expected if e["item"] not in seen]
