"""Ends what is left of a local Ray cluster once the process that started it is gone.

A driver that starts its own cluster (``ray.init(address="local")``) shuts it down when it exits
normally. Killed outright (SIGKILL, the OOM killer), it cannot, and Ray's fate sharing does not
reach every process: the raylet's dashboard and runtime-env agents keep running, orphaned. So
``init_ray`` starts this watcher beside every local cluster, in a session of its own (a signal
to the driver's process group does not reach it). It waits for the driver to exit, then ends the
processes of that cluster, recognised by the cluster's node id in their environment or by open
files in the cluster's session directory, and exits.

    python -m tomeray.pipeline.core.reaper DRIVER_PID NODE_ID SESSION_DIR
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

GRACE_S = 1.0  # let Ray's own fate sharing finish first
ROUNDS = 10  # processes can still be starting when the driver dies


def _is_ray_process(pid: int) -> bool:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
        return b"ray" in f.read()
    return False


def cluster_processes(node_id: str, session_dir: str) -> list[int]:
    """Processes of this user that belong to the cluster (see the module docstring)."""
    marker = f"RAY_NODE_ID={node_id}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if node_id and marker in f.read().split(b"\0"):
                    found.append(pid)
                    continue
            if session_dir and _is_ray_process(pid):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(session_dir):
                        found.append(pid)
                        break
        except OSError:  # gone, or another user's
            continue
    return found


def wait_for_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd support: poll
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass
            time.sleep(0.5)
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def reap(node_id: str, session_dir: str) -> int:
    """Kill the cluster's processes until none is left; returns how many were killed."""
    killed: set[int] = set()
    for _ in range(ROUNDS):
        pids = cluster_processes(node_id, session_dir)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.3)
    return len(killed)


def main(argv: list[str]) -> int:
    driver_pid, node_id, session_dir = int(argv[0]), argv[1], argv[2]
    wait_for_exit(driver_pid)
    time.sleep(GRACE_S)
    reap(node_id, session_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
