"""A local Ray cluster started by a job driver does not outlive the driver, even when the driver is
killed with SIGKILL (Ray's own fate sharing leaves the raylet's agents running: the reaper that
``init_ray`` starts beside the cluster ends them)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
from tomeray.pipeline.core.reaper import cluster_processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DRIVER = textwrap.dedent("""
    import os, sys, time
    import ray
    from tomeray.pipeline.core.ray_session import init_ray

    init_ray(num_cpus=1)

    @ray.remote
    def pid():
        return os.getpid()

    ray.get(pid.remote())  # a worker process exists too
    node = ray.get_runtime_context().get_node_id()
    session = ray._private.worker.global_worker.node.get_session_dir_path()
    print(node, session, flush=True)
    time.sleep(600)
""")


def start_driver(cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=cwd)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.25)


def test_a_sigkilled_driver_leaves_no_cluster_processes(tmp_path):
    driver = start_driver(tmp_path)
    try:
        node, session = driver.stdout.readline().split()
        running = cluster_processes(node, session)
        # gcs_server, raylet, dashboard and runtime-env agents, log monitor, a worker, ...
        assert len(running) >= 4, running
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        wait_until(lambda: not cluster_processes(node, session), 60,
                   f"processes of the killed driver's cluster still run: {cluster_processes(node, session)}")
        def reaper_running() -> bool:
            found = subprocess.run(["pgrep", "-f", f"tomeray.pipeline.core.reaper {driver.pid} "],
                                   capture_output=True, text=True)
            return bool(found.stdout.strip())

        wait_until(lambda: not reaper_running(), 30, "the reaper did not exit")  # it ends once done
    finally:
        if driver.poll() is None:
            driver.kill()


def test_the_reaper_leaves_other_clusters_alone(ray_local, tmp_path):
    """A killed driver's reaper ends its own cluster only: this process's cluster keeps working."""
    driver = start_driver(tmp_path)
    try:
        node, session = driver.stdout.readline().split()
        driver.kill()
        driver.wait(timeout=30)
        wait_until(lambda: not cluster_processes(node, session), 60, "the killed driver's cluster still runs")

        @ray_local.remote
        def one():
            return 1

        assert ray_local.get(one.remote(), timeout=60) == 1
        mine = ray_local.get_runtime_context().get_node_id()
        my_session = ray_local._private.worker.global_worker.node.get_session_dir_path()
        assert mine != node and len(cluster_processes(mine, my_session)) >= 3  # gcs, raylet, workers
    finally:
        if driver.poll() is None:
            driver.kill()
