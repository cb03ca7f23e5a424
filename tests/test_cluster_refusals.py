"""A Ray cluster that refuses tomeray (no token, a wrong token, an address where nothing listens,
another Ray version) ends a command with one ``error:`` line that says what is wrong and which README
section fixes it, and exit status 2, instead of Ray's retries and traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from media import write_video
from ray_cluster import REPO, RayHead, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FAST = ["model.arch=ViT-S-32", "model.pretrained=none", "inference.device=cpu", "ray.progress=false"]
SECTION = "README 'Run on a Ray cluster'"

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


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    with RayHead(tmp_path_factory.mktemp("ray"), num_cpus=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "clip.avi", 16, 64, 48)
    return root


def client_env(home, **auth) -> dict:
    """This machine without any Ray settings (and a HOME without ~/.ray/auth_token), plus ``auth``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **auth}


def the_error_line(proc: subprocess.CompletedProcess, prog: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert SECTION in errors[0], errors[0]
    return errors[0]


def index(address: str, corpus, out, env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tomeray.pipeline.cli", "index", str(corpus), "--out", str(out),
           "--address", address, *FAST]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


def connect(address: str, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CONNECT, address], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)


@pytest.mark.parametrize("form", ["dashboard", "gcs"])
def test_cluster_without_a_token_index_exits_2_naming_the_token(head, corpus, tmp_path, form):
    address = head.dashboard_url if form == "dashboard" else head.address
    line = the_error_line(index(address, corpus, tmp_path / "idx", client_env(tmp_path)), "tomeray index")
    assert "refused the connection" in line and "RAY_AUTH_MODE is not 'token'" in line, line
    assert "RAY_AUTH_TOKEN" in line and "ray get-auth-token" in line, line


def test_cluster_token_found_nowhere_is_said(head, tmp_path):
    line = the_error_line(connect(head.address, client_env(tmp_path, RAY_AUTH_MODE="token")), "tomeray")
    assert "has no authentication token" in line and "RAY_AUTH_TOKEN" in line, line


@pytest.mark.parametrize("form", ["dashboard", "gcs"])
def test_cluster_wrong_token_is_refused_in_one_line(head, tmp_path, form):
    address = head.dashboard_url if form == "dashboard" else head.address
    env = client_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    line = the_error_line(connect(address, env), "tomeray")
    assert "does not accept this process's authentication token (from RAY_AUTH_TOKEN)" in line, line


@pytest.mark.parametrize("form", ["dashboard", "gcs"])
def test_cluster_address_where_nothing_listens(tmp_path, form):
    port = free_port()
    address = f"http://127.0.0.1:{port}" if form == "dashboard" else f"127.0.0.1:{port}"
    line = the_error_line(connect(address, client_env(tmp_path)), "tomeray")
    assert "cannot reach the Ray" in line and "connection refused" in line and "6379" in line, line


def test_cluster_dashboard_address_says_how_to_submit(head, tmp_path):
    env = client_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(head.token_path))
    line = the_error_line(connect(head.dashboard_url, env), "tomeray")
    assert "is a Ray dashboard (job submission) address" in line and "ray job submit" in line, line


def test_cluster_with_the_token_connects(head, tmp_path):
    env = client_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(head.token_path))
    proc = connect(head.address, env)
    assert proc.returncode == 0 and "connected to 1 CPU" in proc.stdout, proc.stderr[-3000:]


def test_cluster_of_another_ray_version(head, tmp_path):
    import ray

    subprocess.run([sys.executable, "-c", SET_VERSION, head.address, "2.0.0"], env=head.env, check=True,
                   timeout=120)
    try:
        env = client_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(head.token_path))
        line = the_error_line(connect(head.address, env), "tomeray")
    finally:
        subprocess.run([sys.executable, "-c", SET_VERSION, head.address, ray.__version__], env=head.env,
                       check=True, timeout=120)
    python = sys.version.split()[0]
    assert f"runs Ray 2.0.0 on Python {python}, this process Ray {ray.__version__}" in line, line
