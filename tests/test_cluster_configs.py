"""The example cluster configurations (configs/cluster/) and the README's job commands: valid YAML
(the launcher's against Ray's own schema), the commands they run are real tomeray entry points
whose config keys the real config loader accepts, and they set up what the README describes (token
authentication, the same ports, tomeray on every node, a volume shared at /shared, GPU workers)."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from readme_blocks import README, commands, job_entrypoint
from tomeray.pipeline.core.config import load_config, split_overrides
from tomeray.pipeline.reconstruction.config import ReconConfig
from tomeray.pipeline.video.config import IndexConfig
from tomeray.pipeline.video.serve.config import ServeConfig

CLUSTER = Path(__file__).resolve().parents[1] / "configs" / "cluster"
JOBS = {"tomeray.jobs.index_videos": (IndexConfig, "index"),
        "tomeray.jobs.reconstruct_scenes": (ReconConfig, "reconstruct"),
        "tomeray.jobs.serve_search": (ServeConfig, "serve")}
OUTPUT_JOBS = ("tomeray.jobs.index_videos", "tomeray.jobs.reconstruct_scenes")  # write to --out


def check_entrypoint(words: list[str]):
    """``python -m tomeray.jobs.X INPUTS [--out DIR] KEY=VALUE...``: a job module with ``main``,
    inputs, an output directory for the jobs that write one, and overrides the job's config
    accepts. Returns the loaded config."""
    assert words[:2] == ["python", "-m"] and words[2] in JOBS, words
    assert callable(importlib.import_module(words[2]).main)
    items, overrides = split_overrides(words[3:])
    if words[2] in OUTPUT_JOBS:
        assert "--out" in items and items.index("--out") < len(items) - 1, words
    flags_with_values = {"--out", "--port", "--host", "--replicas", "--address"}
    values = {items[i + 1] for i, item in enumerate(items[:-1]) if item in flags_with_values}
    assert [i for i in items if not i.startswith("-") and i not in values], f"no inputs: {words}"
    schema, name = JOBS[words[2]]
    return load_config(schema, name, overrides)


def test_cluster_launcher_config_is_valid_for_ray_and_matches_the_readme():
    cfg = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)  # what `ray up` checks first

    head, workers = cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]
    start_head = [c for c in head if "ray start" in c]
    start_worker = [c for c in workers if "ray start" in c]
    assert len(start_head) == len(start_worker) == 1
    for command in start_head + start_worker:
        assert command.startswith("RAY_AUTH_MODE=token ray start"), command
    assert "--port=6379" in start_head[0] and "--dashboard-port=8265" in start_head[0]
    assert "--address=$RAY_HEAD_IP:6379" in start_worker[0]
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"  # one token everywhere
    clone = next(remote for remote, local in cfg["file_mounts"].items() if local == ".")
    assert f"pip install --no-cache-dir {clone}" in cfg["setup_commands"]  # tomeray on every node
    assert "-v /shared:/shared" in cfg["docker"]["run_options"]
    assert any("/shared" in c and "mount" in c for c in cfg["initialization_commands"])
    gpu = cfg["available_node_types"]["ray.worker.gpu"]
    assert gpu["max_workers"] >= 1

    # the job command of the header: a real entry point, GPU actors sized for the GPU workers
    (submit,) = [line.lstrip("# ") for line in (CLUSTER / "ray-cluster.yaml").read_text().splitlines()
                 if line.startswith("#") and "ray job submit" in line]
    job = check_entrypoint(job_entrypoint(submit))
    assert job.ray.actors.num_gpus == 1 and 1 <= job.ray.actors.count <= gpu["max_workers"]


def test_kuberay_rayjob_runs_the_indexing_job_as_the_readme_describes():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["rayVersion"] == ray.__version__  # the Ray the README's commands are tested with

    words = shlex.split(spec["entrypoint"])
    cfg = check_entrypoint(words)
    items, _ = split_overrides(words[3:])
    out = items[items.index("--out") + 1]
    inputs = [i for i in items if i not in ("--out", out)]

    head = cluster["headGroupSpec"]["template"]["spec"]
    groups = cluster["workerGroupSpecs"]
    pods = [head] + [g["template"]["spec"] for g in groups]
    images = {c["image"] for pod in pods for c in pod["containers"]}
    assert len(images) == 1, images  # one image with tomeray on every node
    shared_claims = set()
    for pod in pods:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/shared") in claims, container["name"]
            shared_claims.add(claims[mounts["/shared"]])
    assert len(shared_claims) == 1, shared_claims  # one volume, the same in every pod
    for path in [out, *inputs]:
        assert path.startswith("/shared/"), path  # inputs and output on the volume every pod shares

    gpus = sum(g["replicas"] * int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
               for g in groups for c in g["template"]["spec"]["containers"])
    assert gpus >= 1 and cfg.ray.actors.num_gpus == 1 and cfg.ray.actors.count == gpus
    ports = {p["name"]: p["containerPort"] for p in head["containers"][0]["ports"]}
    assert ports["gcs-server"] == 6379 and ports["dashboard"] == 8265


def readme_job_commands() -> list[str]:
    """Every ``ray job submit`` command of the README, in any code block."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    return [c for block in blocks for c in commands(block) if c.startswith("ray job submit")]


@pytest.mark.parametrize("command", readme_job_commands())
def test_readme_job_commands_are_real_entry_points(command):
    entry = job_entrypoint(command)
    assert entry, command
    check_entrypoint(entry)
    assert "--address http://HEAD:8265" in command  # the dashboard address, as set up in the README


def test_cluster_error_messages_point_to_readme_sections_that_exist():
    from tomeray.pipeline.core.cluster_connect import README_SECTION, SUBSECTIONS

    text = README.read_text()
    title = README_SECTION.split("'")[1]
    assert f"\n## {title}\n" in text
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    for name in SUBSECTIONS.values():
        assert f"\n### {name}\n" in section, name
