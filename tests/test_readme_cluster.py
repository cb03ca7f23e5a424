"""The README's "Run on a Ray cluster" commands, run as written on loopback: a head and a second node
with token authentication, the indexing job submitted with tomeray installed on the nodes, the
reconstruction job with the code shipped as ``py_modules``, then a rerun of the indexing job
submitted without waiting, followed, queried and stopped; and the README's table of refusals: a
client without the token, with a wrong one, at a dead address, at the dashboard address, or of
another Ray version ends with one ``error:`` line naming the fix and exit status 2. The blocks are
read from the README (``readme_blocks``), so the two cannot drift apart.

What the test changes, and why: placeholders (``HEAD``, the ports 6379 / 8265, ``/shared/``) become
loopback values and free ports; ``ray start`` gets flags that keep this cluster apart from any other
on the machine (its own temp dir, agent and client ports, 1 CPU per node); jobs get tiny models and
one actor (``FAST_*``); ``ssh HEAD`` is dropped (the head is this machine); ``HOME`` is a temp dir,
so the token lands in its own ``~/.ray/auth_token``; pip runs offline. The README's ``ray stop`` is
not run: it would end every Ray process of this user on the machine; the test ends its own by temp
dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from media import write_video
from ray_cluster import BIN, REPO, free_port, kill_processes_naming
from readme_blocks import commands, job_entrypoint, readme_blocks
from tomeray.pipeline.reconstruction.layout import ReconLayout
from tomeray.pipeline.video.layout import IndexLayout

FAST_INDEX = ["model.arch=ViT-S-32", "model.pretrained=none", "inference.device=cpu", "ray.progress=false",
              "ray.actors.count=1"]
FAST_RECON = ["model.arch=vggt-tiny", "model.pretrained=none", "ray.progress=false", "points.max_points=2000",
              "ray.actors.count=1"]
PAIRS = [1, 2, 3]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


class Loopback:
    """Runs README blocks against a cluster on this machine."""

    def __init__(self, root: Path):
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="trdoc", dir="/tmp"))  # Ray's socket paths stay short
        self.home, self.shared, self.clone = root / "home", root / "shared", root / "clone"
        self.home.mkdir()
        self.shared.mkdir()
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env = {**base, "HOME": str(self.home), "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
                    "RAY_USAGE_STATS_ENABLED": "0", "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0",
                    "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        shutil.copytree(REPO, self.clone, ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "out", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"))

    def script(self, block: str) -> str:
        lines = []
        for cmd in commands(block):
            cmd = cmd.replace("ssh HEAD ", "")
            cmd = re.sub(r"\bHEAD\b", "127.0.0.1", cmd)
            cmd = re.sub(r"\b6379\b", str(self.gcs_port), cmd)
            cmd = re.sub(r"\b8265\b", str(self.dashboard_port), cmd)
            cmd = cmd.replace("/shared/", f"{self.shared}/")
            if cmd.startswith("ray start"):
                cmd = self._own_ports(cmd)
            entry = job_entrypoint(cmd)
            if entry and entry[:2] == ["python", "-m"]:
                fast = FAST_INDEX if entry[2] == "tomeray.jobs.index_videos" else FAST_RECON
                code, _, comment = cmd.partition("  #")
                cmd = f"{code.rstrip()} {' '.join(fast)}" + (f"  #{comment}" if comment else "")
            lines.append(cmd)
        return "set -euo pipefail\n" + "\n".join(lines) + "\n"

    def _own_ports(self, cmd: str) -> str:
        flags = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
                 f"--dashboard-agent-listen-port={free_port()}"]
        if "--head" in cmd:
            flags += [f"--temp-dir={self.ray_tmp}/r", f"--ray-client-server-port={free_port()}"]
        return f"{cmd} {' '.join(flags)}"

    def run(self, block: str, timeout: float = 300) -> str:
        start = time.monotonic()
        proc = subprocess.run(["bash", "-c", self.script(block)], env=self.env, cwd=self.clone,
                              capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
        print(f"{time.monotonic() - start:6.1f} s  {commands(block)[-1][:90]}")  # step times, with -s
        assert proc.returncode == 0, f"rc {proc.returncode}:\n{self.script(block)}\n{out[-4000:]}"
        return out

    def export(self, block: str) -> None:
        """Run a block of ``export`` lines and keep what it exports for the blocks after it, as one
        shell would."""
        proc = subprocess.run(["bash", "-c", self.script(block) + "env -0"], env=self.env, cwd=self.clone,
                              capture_output=True, text=True, timeout=60, check=True)
        self.env = dict(item.split("=", 1) for item in proc.stdout.split("\0") if "=" in item)

    def alive_nodes(self) -> int:
        code = "import ray; ray.init(log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
        env = {**self.env, "RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}"}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=120, check=True)
        return int(proc.stdout.split()[-1])

    def running(self) -> str:
        found = subprocess.run(["pgrep", "-f", str(self.ray_tmp)], capture_output=True, text=True)
        return found.stdout.strip()

    def stop(self) -> None:
        kill_processes_naming(self.ray_tmp)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)  # the session's logs and spilled objects


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, opencv_data):
    """The README's cluster: its head, worker and client blocks, run once for this module."""
    loopback = Loopback(tmp_path_factory.mktemp("readme"))
    try:
        make_inputs(loopback.shared, opencv_data)
        blocks = readme_blocks()
        loopback.run(blocks["head"])
        loopback.run(blocks["worker"])
        loopback.export(blocks["client"])
        yield loopback
    finally:
        loopback.stop()
    deadline = time.monotonic() + 20  # SIGKILLed processes take a moment to go
    while (left := loopback.running()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes of the README cluster still run: {left}"


def make_inputs(shared: Path, opencv_data: Path) -> None:
    (shared / "videos").mkdir()
    for i in range(6):
        write_video(shared / "videos" / f"clip{i}.avi", 24, 160, 120, seed=i)
    for i in PAIRS:
        scene = shared / "scenes" / f"pair{i:02d}"
        scene.mkdir(parents=True)
        for side in ("left", "right"):
            shutil.copy(opencv_data / f"{side}{i:02d}.jpg", scene)


def test_readme_cluster_starts_with_token_authentication(cluster):
    token = (cluster.home / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 32  # `ray get-auth-token --generate` wrote the head's token
    assert cluster.env["RAY_AUTH_TOKEN"] == token and cluster.env["RAY_AUTH_MODE"] == "token"
    assert cluster.alive_nodes() == 2  # the worker joined with the token it was given


def test_readme_cluster_jobs_as_written(cluster):
    blocks = readme_blocks()
    # indexing, tomeray installed in the nodes' environment
    logs = cluster.run(blocks["submit"])
    assert "succeeded" in logs and "indexed 6 videos" in logs, logs[-3000:]
    index = IndexLayout(cluster.shared / "idx")
    assert index.read_manifest()["counts"]["rows"] == 6 and (index.root / "index.faiss").is_file()

    # reconstruction, the code shipped with the job
    logs = cluster.run(blocks["ship"])
    assert "succeeded" in logs and f"reconstructed {len(PAIRS)} scene(s)" in logs, logs[-3000:]
    recon = ReconLayout(cluster.shared / "recon")
    assert set(recon.finished_scenes()) == {f"pair{i:02d}" for i in PAIRS}
    cameras = pq.read_table(recon.cameras_path)
    assert cameras.num_rows == 2 * len(PAIRS) and recon.read_manifest()["complete"]
    # ... and that job imported the shipped copy, not the one installed here
    (runtime_env,) = re.findall(r"--runtime-env-json '([^']+)'", blocks["ship"])
    assert json.loads(runtime_env)["py_modules"]
    probe = ("ray job submit --address http://HEAD:8265 --runtime-env-json '" + runtime_env + "' -- "
             "python -c \"import importlib.util as u; "
             "print('tomeray_from=' + u.find_spec('tomeray.jobs.index_videos').origin)\"")
    (where,) = re.findall(r"tomeray_from=(/\S+)", cluster.run(probe))
    assert "runtime_resources" in where and not where.startswith(str(REPO)), where

    # submit, follow, status and stop; rerunning the indexing job resumes it (here: nothing left)
    logs = cluster.run(blocks["follow"])
    assert "indexed 0 videos" in logs and "skipped 6 already indexed" in logs, logs[-3000:]
    assert "Job 'index-videos-2' succeeded" in logs, logs[-3000:]
    assert index.read_manifest()["counts"]["rows"] == 6


# ------------------------------------------------------------ the README's table of refusals


# init_ray through the CLI runner, without a job around it (imports Ray only, so it is quick)
CONNECT = textwrap.dedent("""
    import sys
    from tomeray.pipeline.core.ray_session import init_ray
    from tomeray.pipeline.core.runner import run_command

    def body():
        init_ray(sys.argv[1])
        import ray
        print("connected to", int(ray.cluster_resources()["CPU"]), "CPU")

    sys.exit(run_command("tomeray", body))
""")

# Make the head report another Ray version, the way a head of another release would.
SET_VERSION = textwrap.dedent("""
    import json, sys
    from ray._raylet import GcsClient
    from ray._common.usage.usage_constants import CLUSTER_METADATA_KEY
    from ray._private.ray_constants import KV_NAMESPACE_CLUSTER

    gcs = GcsClient(address=sys.argv[1])
    meta = json.loads(gcs.internal_kv_get(CLUSTER_METADATA_KEY, namespace=KV_NAMESPACE_CLUSTER))
    meta["ray_version"] = sys.argv[2]
    gcs.internal_kv_put(CLUSTER_METADATA_KEY, json.dumps(meta).encode(), True, KV_NAMESPACE_CLUSTER)
""")
SECTION = "README 'Run on a Ray cluster'"


def client_env(home: Path, **auth) -> dict:
    """This machine without any Ray settings (and a HOME without ~/.ray/auth_token), plus ``auth``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **auth}


def the_error_line(proc: subprocess.CompletedProcess, prog: str) -> str:
    """The one ``prog: error:`` line of a command that did nothing (exit 2), without a traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert SECTION in errors[0], errors[0]
    return errors[0]


def connect(address: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CONNECT, address], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def addresses(cluster: Loopback) -> dict[str, str]:
    """The two address forms the README documents: the dashboard's and the GCS's."""
    return {"dashboard": cluster.dashboard, "gcs": f"127.0.0.1:{cluster.gcs_port}"}


@pytest.mark.parametrize("form", ["dashboard", "gcs"])
def test_cluster_without_a_token_index_exits_2_naming_the_token(cluster, tmp_path, form):
    cmd = [sys.executable, "-m", "tomeray.pipeline.cli", "index", str(cluster.shared / "videos"), "--out",
           str(tmp_path / "idx"), "--address", addresses(cluster)[form], *FAST_INDEX]
    proc = subprocess.run(cmd, env=client_env(tmp_path), capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    line = the_error_line(proc, "tomeray index")
    assert "refused the connection" in line and "RAY_AUTH_MODE is not 'token'" in line, line
    assert "RAY_AUTH_TOKEN" in line and "ray get-auth-token" in line, line


def test_cluster_token_found_nowhere_is_said(cluster, tmp_path):
    proc = connect(addresses(cluster)["gcs"], client_env(tmp_path, RAY_AUTH_MODE="token"))
    line = the_error_line(proc, "tomeray")
    assert "has no authentication token" in line and "RAY_AUTH_TOKEN" in line, line


@pytest.mark.parametrize("form", ["dashboard", "gcs"])
def test_cluster_wrong_token_is_refused_in_one_line(cluster, tmp_path, form):
    env = client_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    line = the_error_line(connect(addresses(cluster)[form], env), "tomeray")
    assert "does not accept this process's authentication token (from RAY_AUTH_TOKEN)" in line, line


@pytest.mark.parametrize("form", ["dashboard", "gcs"])
def test_cluster_address_where_nothing_listens(tmp_path, form):
    port = free_port()
    address = f"http://127.0.0.1:{port}" if form == "dashboard" else f"127.0.0.1:{port}"
    line = the_error_line(connect(address, client_env(tmp_path)), "tomeray")
    assert "cannot reach the Ray" in line and "connection refused" in line and "6379" in line, line


def test_cluster_dashboard_address_says_how_to_submit(cluster, tmp_path):
    env = client_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.env["RAY_AUTH_TOKEN"])
    line = the_error_line(connect(addresses(cluster)["dashboard"], env), "tomeray")
    assert "is a Ray dashboard (job submission) address" in line and "ray job submit" in line, line


def test_cluster_with_the_token_connects(cluster, tmp_path):
    env = client_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.env["RAY_AUTH_TOKEN"])
    proc = connect(addresses(cluster)["gcs"], env)
    assert proc.returncode == 0 and "connected to 2 CPU" in proc.stdout, proc.stderr[-3000:]


def test_cluster_of_another_ray_version(cluster, tmp_path):
    import ray

    gcs = addresses(cluster)["gcs"]
    subprocess.run([sys.executable, "-c", SET_VERSION, gcs, "2.0.0"], env=cluster.env, check=True,
                   timeout=120)
    try:
        env = client_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.env["RAY_AUTH_TOKEN"])
        line = the_error_line(connect(gcs, env), "tomeray")
    finally:
        subprocess.run([sys.executable, "-c", SET_VERSION, gcs, ray.__version__], env=cluster.env, check=True,
                       timeout=120)
    python = sys.version.split()[0]
    assert f"runs Ray 2.0.0 on Python {python}, this process Ray {ray.__version__}" in line, line
