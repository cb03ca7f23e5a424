"""The distributed part of a FAISS build on Ray: training on one worker (a GPU worker when the
cluster has GPUs), and encoding groups of shards in parallel tasks, each returning a part over
the same trained parts (:func:`.faiss_merge.encode_part`) that the driver merges in group order.

The driver reads each group and hands it to a task, so the workers need no access to the index
directory; at most ``workers`` groups are in flight, which bounds memory on both sides.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator

import numpy as np
from tomeray.pipeline.video.faiss_index import deserialize_index, serialize_index, train_index

log = logging.getLogger(__name__)

__all__ = ["encode_on_workers", "ray_workers", "train_on_worker"]


def ray_workers(requested: int | None, n_groups: int) -> int:
    """How many Ray tasks encode at once: ``requested`` (0: none, in this process), or with
    ``None`` one per cluster CPU when Ray is already running and there is more than one group."""
    if requested is not None:
        if requested > 0:
            from tomeray.pipeline.core.ray_session import init_ray

            init_ray()
        return max(0, int(requested))
    ray = sys.modules.get("ray")  # not imported: not running (and not worth seconds of import)
    if n_groups < 2 or ray is None or not ray.is_initialized():
        return 0
    return max(1, min(n_groups, int(ray.cluster_resources().get("CPU", 1))))


def _gpus_in_cluster() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def _threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(max(1, int(n)))


def _train_task(template: bytes, sample: np.ndarray, factory: str, use_gpu: str) -> tuple[bytes, str]:
    from tomeray.operators.worker import node_id

    index = deserialize_index(template)
    train_index(index, sample, factory, use_gpu)
    return serialize_index(index), node_id()


def _encode_task(template: bytes, vectors: np.ndarray, ids: np.ndarray, threads: int) -> tuple[bytes, str]:
    from tomeray.operators.worker import node_id
    from tomeray.pipeline.video.faiss_merge import encode_part

    _threads(threads)
    part = encode_part(deserialize_index(template), vectors, ids)
    return serialize_index(part), node_id()


def train_on_worker(template, sample: np.ndarray, factory: str, use_gpu: str, cpus: int = 1):
    """The template trained on ``sample`` by one Ray task; (trained index, node id)."""
    import ray

    gpu = use_gpu != "never" and _gpus_in_cluster()
    task = ray.remote(num_cpus=cpus, num_gpus=1 if gpu else 0)(_train_task)
    trained, node = ray.get(task.remote(serialize_index(template), sample, factory,
                                        use_gpu if gpu else "never"))
    return deserialize_index(trained), node


def _cpu_nodes(cpus: int) -> list[str]:
    import ray

    return [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= cpus]


def encode_on_workers(template, groups: list, read: Callable, workers: int,
                      cpus_per_task: int = 1) -> Iterator[tuple[object, str]]:
    """(part, node id) for each group, in group order; ``read(group)`` gives (vectors, ids).
    Groups go round the nodes that can run a task (soft affinity: a busy or lost node's group
    runs elsewhere), so every node encodes even when groups are quick."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=cpus_per_task)(_encode_task)
    nodes = _cpu_nodes(cpus_per_task)
    template_ref = ray.put(serialize_index(template))
    in_flight: dict[int, object] = {}
    submitted = 0
    for position in range(len(groups)):
        while submitted < len(groups) and len(in_flight) < workers:
            vectors, ids = read(groups[submitted])
            options = {"scheduling_strategy": NodeAffinitySchedulingStrategy(
                nodes[submitted % len(nodes)], soft=True)} if nodes else {}
            in_flight[submitted] = task.options(**options).remote(template_ref, vectors, ids, cpus_per_task)
            del vectors, ids  # the object store holds the group now
            submitted += 1
        data, node = ray.get(in_flight.pop(position))
        yield deserialize_index(data), node
