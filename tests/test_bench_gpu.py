"""The GPU benchmark script (jobs/bench_gpu.sh), checked without a GPU: every command it would run
parses with the bench it names, config overrides are valid keys, outputs land in the given folder,
and without a visible GPU or an output folder it refuses to run."""

from __future__ import annotations

import importlib
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from tomeray.pipeline.core.config import load_config
from tomeray.pipeline.reconstruction.config import ReconConfig
from tomeray.pipeline.video.config import IndexConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "jobs" / "bench_gpu.sh"
STEPS = {"tempme", "index", "faiss", "reconstruct", "vggt_100_500", "vggt_1000"}
OVERRIDES = {"tomeray.jobs.bench_index": (IndexConfig, "index"),
             "tomeray.jobs.bench_reconstruct": (ReconConfig, "reconstruct")}


def printed_steps(out: Path) -> dict[str, list[str]]:
    proc = subprocess.run(["bash", str(SCRIPT), "--print-commands", str(out)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = {}
    for line in proc.stdout.splitlines():
        name, command = line.split("\t", 1)
        steps[name] = shlex.split(command)
    return steps


def test_every_step_parses_with_the_bench_it_names(tmp_path):
    out = tmp_path / "gpu out"  # a space: the script must quote its paths
    steps = printed_steps(out)
    assert set(steps) == STEPS
    for name, argv in steps.items():
        assert argv[1] == "-m" and argv[2].startswith("tomeray.jobs.bench_"), name
        module = importlib.import_module(argv[2])
        args = module.parse_args(argv[3:])  # argparse exits on an unknown or malformed flag
        json_path = getattr(args, "json", None) or getattr(args, "json_path", None)
        assert Path(json_path) == out / f"{name}.json"
        if argv[2] in OVERRIDES:
            schema, name_ = OVERRIDES[argv[2]]
            load_config(schema, name_, list(args.overrides))  # unknown keys or bad values raise
    assert "cuda" in steps["tempme"] and "bf16" in steps["tempme"]
    assert "inference.device=cuda" in steps["index"] and "--gpu" in steps["faiss"]
    views = {v for step in ("vggt_100_500", "vggt_1000")
             for v in steps[step][steps[step].index("--views") + 1].split(",")}
    assert views == {"100", "200", "500", "1000"}


def test_without_an_output_folder_it_is_a_usage_error():
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "output folder" in proc.stderr


@pytest.mark.parametrize("listing", ["", "No devices were found"])
def test_without_a_visible_gpu_it_refuses_to_run(tmp_path, listing):
    """nvidia-smi that lists no GPU (a machine without one): nothing runs, exit status 2."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text(f"#!/bin/sh\necho '{listing}'\n")
    (tools / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 2 and "no GPU visible" in proc.stderr
    assert not any((tmp_path / "out").glob("*.json"))
