"""Connect to Ray once per process: the cluster named by ``--address`` / ``RAY_ADDRESS``, else a
local embedded cluster started on demand."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Initialise Ray unless it already is. ``address`` wins over ``RAY_ADDRESS``; with neither, a
    local cluster starts (``num_cpus`` caps it, for tests and small machines)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"log_to_driver": True, "include_dashboard": False}
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        log.info("starting a local Ray cluster")
        # "local": never attach silently to some other cluster that `ray start` left on this machine
        ray.init(address="local", **kwargs)
