"""What the pipeline benchmarks (``bench_index``, ``bench_reconstruct``) share: the real command run
cold in a fresh process and read back from its run record, each stage alone on the cluster with
the same efficiency definition (``pipeline.core.timing``), and the validity check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tomeray.pipeline.core.timing import CostTotals, run_costs

__all__ = ["NAN", "alone_row", "check_valid", "drain", "fmt", "format_bound", "format_stage_table",
           "format_startup", "load_average", "measure", "print_report", "run_cold"]

NAN = float("nan")


def load_average() -> float:
    return os.getloadavg()[0]


def run_cold(command: str, inputs: list[str], out: Path, overrides: list[str]) -> tuple[dict, float]:
    """``tomeray <command> inputs --out out overrides`` in a fresh process (Python start, imports,
    Ray start, actors: what a user waits for); (its run record, the command's wall seconds)."""
    argv = [sys.executable, "-m", "tomeray.pipeline.cli", command, *inputs, "--out", str(out), *overrides]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    records = sorted((out / "runs").glob("*.json"))
    if done.returncode not in (0, 1) or not records:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise RuntimeError(f"the {command} command failed (exit {done.returncode}): {' '.join(argv)}")
    return json.loads(records[-1].read_text()), seconds


def drain(ds, stage: str) -> CostTotals:
    """Run ``ds`` to the end, keeping only its ``stage`` cost columns."""
    columns = [f"{stage}_cpu_s", f"{stage}_wall_s", f"{stage}_done_at"]
    totals = CostTotals((stage,))
    for batch in ds.select_columns(columns).iter_batches(batch_size=None, batch_format="numpy"):
        totals.add(batch)
    return totals


def alone_row(stage: str, totals: CostTotals, items: int, start: float, end: float, cores: float,
              unit: str) -> dict:
    """A stage run alone: items/s, its cost per item, its efficiency alone (its work / (cores x its
    seconds)), and from its first result on."""
    costs = run_costs(totals, items, start, end, cores, steady_from=totals.first.get(f"{stage}_done_at"))
    return {"stage": stage, unit: items, "seconds": end - start, f"{unit}_per_s": costs["items_per_s"],
            f"{stage}_cpu_s": costs["cpu_s_per_item"].get(stage, NAN), "efficiency": costs["efficiency"],
            "efficiency_steady": costs.get("efficiency_steady", NAN), "valid": costs["valid"]}


def pipeline_figures(record: dict, command_s: float) -> dict:
    """The pipeline row's efficiency figures from a run record (``efficiency_command``: the same
    work over the whole command, Python start to exit)."""
    costs = record["costs"]
    command = costs["efficiency"] * costs["seconds"] / command_s
    return {"seconds": costs["seconds"], "bound_kind": costs["bound_kind"], "efficiency": costs["efficiency"],
            "efficiency_steady": costs.get("efficiency_steady", NAN), "efficiency_command": command,
            "command_s": command_s, "startup": record["startup"], "startup_cpu": record["startup_cpu"],
            "cores": costs["cores"], "run_id": record["run_id"], "valid": costs["valid"] and command <= 1.001}


def measure(pipeline_row, run_stages, cfg, labels: dict, load_start: float) -> list[dict]:
    """The rows of a pipeline bench: ``pipeline_row()`` (the command run cold), then, unless
    ``run_stages`` is None, ``run_stages(pipeline, cores)``'s stages alone on a Ray session started as
    the job would, each with its cost per item alone over the pipeline's (``cost_vs_pipeline``:
    contention shows as a value below 1). Every row gets ``labels`` and the load averages."""
    rows = [pipeline_row()]
    if run_stages is not None:
        import ray
        from tomeray.pipeline.core.ray_session import init_ray

        init_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus)
        try:
            cores = float(ray.cluster_resources().get("CPU", 0.0))
            for row in run_stages(rows[0], cores):
                row["cost_vs_pipeline"] = row[f"{row['stage']}_cpu_s"] / rows[0][f"{row['stage']}_cpu_s"]
                rows.append(row)
        finally:
            ray.shutdown()
    load_end = load_average()
    for r in rows:
        r.update(labels, load_avg_start=load_start, load_avg_end=load_end)
    return rows


def print_report(rows: list[dict], unit: str, stages: tuple[str, str], first_key: str, what: str) -> None:
    """The stage table, the bound's definition and the start-up milestones of the pipeline row."""
    print(format_stage_table(rows, unit, stages))
    print(format_bound(rows[0], unit, stages))
    print(format_startup(rows[0], first_key, what))


def format_stage_table(rows: list[dict], unit: str, stages: tuple[str, str]) -> str:
    """The pipeline and stage rows: ``unit`` is the item ("videos", "scenes"), ``stages`` the two
    stages' names; costs in core-seconds per item."""
    u = unit[0]
    columns = [("stage", "stage", "<9", "s"), (unit, unit, ">6", "d"), ("seconds", "seconds", ">8", ".2f"),
               (f"{unit}/s", f"{unit}_per_s", ">9", ".3f"),
               *((f"{stage} cs/{u}", f"{stage}_cpu_s", f">{len(stage) + 5}", ".3f") for stage in stages),
               (f"bound {u}/s", f"bound_{unit}_per_s", ">9", ".3f"), ("eff", "efficiency", ">5", ".2f"),
               ("steady", "efficiency_steady", ">6", ".2f"), ("command", "efficiency_command", ">7", ".2f"),
               ("alone/pipe", "cost_vs_pipeline", ">10", ".2f")]
    header = " ".join(format(title, align) for title, _, align, _ in columns)
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(" ".join(format(fmt(r.get(key), spec), align) for _, key, align, spec in columns))
    return "\n".join(lines)


def format_bound(row: dict, unit: str, stages: tuple[str, str]) -> str:
    """How the pipeline row's bound and efficiency are defined, with its figures."""
    return (f"bound: {row['cores']:g} cores / ({' + '.join(stages)} core-s per {unit[:-1]}) = "
            f"{row[f'bound_{unit}_per_s']:.3f} {unit}/s ({row['bound_kind']}); efficiency = {unit}/s / "
            f"bound = stage work / (cores x seconds); load average {row['load_avg_end']:.2f} at the end")


def fmt(value, spec: str) -> str:
    return "" if value is None or value != value else format(value, spec)


def format_startup(row: dict, first_key: str, what: str) -> str:
    """The start-up milestones (seconds from the job's start) and start-up CPU seconds."""
    lines = [f"time to first {what}: {row[first_key]:.1f} s from the job's start (milestones, seconds from "
             "the job's start; a stage's *_at = its earliest row or actor):"]
    lines += [f"  {name:<22} {seconds:8.2f}" for name, seconds in sorted(row["startup"].items(),
                                                                          key=lambda kv: kv[1])]
    lines.append("start-up CPU seconds (they do not stretch with load): " +
                 ", ".join(f"{name} {value:g}" for name, value in row["startup_cpu"].items()))
    return "\n".join(lines)


def check_valid(rows: list[dict]) -> int:
    """0, or 1 after saying which figure exceeds 1 (a wrong measurement, by construction)."""
    wrong = [r["stage"] for r in rows if "valid" in r and not r["valid"]]
    if wrong:
        print(f"MEASUREMENT WRONG: an efficiency above 1 in {', '.join(wrong)} (CPU time counted outside the "
              "timed window, or fewer cores counted than the work ran on)", file=sys.stderr)
        return 1
    return 0
