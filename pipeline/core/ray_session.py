"""Connect to Ray once per process: the cluster named by ``--address`` / ``RAY_ADDRESS`` (refusals
become one-line :class:`~tomeray.pipeline.core.cluster_connect.ClusterError` messages), else a local
embedded cluster started on demand, with a watcher that ends it if this process is killed
(``reaper``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from tomeray.pipeline.core.cluster_connect import connect_cluster

log = logging.getLogger(__name__)

__all__ = ["init_ray"]


def init_ray(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Initialise Ray unless it already is. ``address`` wins over ``RAY_ADDRESS``; with neither (or
    ``local``), a local cluster starts (``num_cpus`` caps it, for tests and small machines), with the
    dashboard when ``dashboard`` (Ray Train watches its actors through the dashboard's state API). A
    cluster that refuses this process (token, address, versions) raises ``ClusterError``."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        connect_cluster(address)
        return
    kwargs: dict = {"log_to_driver": True, "include_dashboard": dashboard}
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    log.info("starting a local Ray cluster")
    # "local": never attach silently to some other cluster that `ray start` left on this machine
    ray.init(address="local", **kwargs)
    _watch_local_cluster()


def _watch_local_cluster() -> None:
    """Start the reaper for the local cluster this process just started."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    try:
        session_dir = ray._private.worker.global_worker.node.get_session_dir_path()
    except AttributeError:  # private API moved: the node id alone still finds the processes
        session_dir = ""
    subprocess.Popen(
        [sys.executable, "-m", "tomeray.pipeline.core.reaper", str(os.getpid()), node_id, session_dir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
