"""A real Ray cluster for tests: `ray start --head` with token authentication, optional extra raylets
on the same machine, and `ray job submit`. Every process it starts is stopped on exit, and nothing
else on the machine is touched (no global `ray stop`)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """``with RayHead(tmp_path) as head: head.submit([...])``."""

    def __init__(self, workdir: Path, num_cpus: int = 2, resources: dict | None = None):
        # Short temp dirs: Ray's unix socket paths must stay under ~100 characters.
        self.tmp = Path(tempfile.mkdtemp(prefix="tr", dir="/tmp"))
        self.workdir = Path(workdir)
        self.num_cpus = num_cpus
        self.resources = resources
        self.token_path = self.tmp / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_ADDRESS": self.address,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": str(REPO),
        }
        self._procs: list[subprocess.Popen] = []
        self._logs: list = []

    def _start(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.workdir / log_name, "w")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def start(self) -> RayHead:
        args = [
            "--head", f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
            "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--num-cpus={self.num_cpus}", f"--temp-dir={self.tmp}/r",
        ]
        if self.resources:
            import json

            args.append(f"--resources={json.dumps(self.resources)}")
        proc = self._start(args, "ray-head.log")
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start --head exited: {(self.workdir / 'ray-head.log').read_text()}")
            try:
                urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # 401 without the token: the server is up
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise TimeoutError("the Ray head did not come up within 120 s")
        self.wait_for_nodes(1)
        return self

    def add_worker(self, num_cpus: int = 1, resources: dict | None = None) -> None:
        """A second raylet on this machine joining the head (`ray start --address=...`)."""
        import json

        n = len(self._procs)
        args = [f"--address={self.address}", f"--num-cpus={num_cpus}", "--node-ip-address=127.0.0.1",
                f"--dashboard-agent-listen-port={free_port()}"]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        self._start(args, f"ray-worker-{n}.log")
        self.wait_for_nodes(n + 1)

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        code = (
            "import ray, time\n"
            "ray.init(log_to_driver=False)\n"
            f"deadline = time.time() + {timeout}\n"
            f"while sum(n['Alive'] for n in ray.nodes()) < {count} and time.time() < deadline:\n"
            "    time.sleep(0.5)\n"
            f"assert sum(n['Alive'] for n in ray.nodes()) >= {count}, ray.nodes()\n"
        )
        subprocess.run([sys.executable, "-c", code], env=self.env, check=True, timeout=timeout + 60,
                       capture_output=True)

    def submit(self, entrypoint: list[str], timeout: float = 600, working_dir: str | None = None):
        """`ray job submit` and wait; returns (succeeded, logs)."""
        cmd = [str(BIN / "ray"), "job", "submit", f"--address={self.dashboard_url}"]
        if working_dir:
            cmd.append(f"--working-dir={working_dir}")
        proc = subprocess.run([*cmd, "--", *entrypoint], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
        logs = proc.stdout + proc.stderr
        return proc.returncode == 0 and "succeeded" in logs, logs

    def stop(self) -> None:
        """Kill everything this cluster started. No graceful drain: a test cluster has nothing to
        save, and `ray start --block` would wait up to 30 s per node for it."""
        for proc in reversed(self._procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        kill_processes_naming(self.tmp)
        self._procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> RayHead:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def kill_processes_naming(temp_dir: Path) -> None:
    """SIGKILL every process whose command line names ``temp_dir``: the Ray processes of a cluster
    started with ``--temp-dir`` under it (workers run in process groups of their own, and
    daemons of a ``ray start`` without ``--block`` have no parent here), and nothing else."""
    subprocess.run(["pkill", "-KILL", "-f", str(temp_dir)], check=False)


def kill_driver_when(cmd: list[str], env: dict, ready, what: str, timeout: float = 300) -> None:
    """Start a job driver, SIGKILL it as soon as ``ready()`` is true (mid-run), and reap it.
    ``what`` names the awaited event in failure messages."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, f"the job ended before {what}"
            assert time.time() < deadline, f"no {what} after {timeout:.0f} s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
