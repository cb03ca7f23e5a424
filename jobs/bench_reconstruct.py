"""Reconstruction throughput: the real job end to end against the bound its own stage costs allow,
with the load stage alone and the model stage alone measured in the same run.

    python -m tomeray.jobs.bench_reconstruct [--scenes 16] [--views 4] [--arch vggt-tiny] [--json PATH]
        [overrides ...]

Inputs: ``--scenes`` scene folders of ``--views`` images each, taken in turn from the opencv-doc
stereo chessboard photographs (left01.jpg, right01.jpg, ...; 640 x 480 JPEG), so every scene has
its own files. Weights: random init (``model.pretrained=none``, said in the output): timing does
not depend on the values.

Rows (all on the same scenes, in this order; the efficiency definition is ``bench_index``'s, from
``pipeline.core.timing``):

* ``pipeline``: the real command, ``tomeray reconstruct`` in a fresh process (cold), read back from
  its run record. ``load_cpu_s`` / ``model_cpu_s``: CPU seconds per scene the stages' workers spent
  on the rows' work; ``bound_scenes_per_s`` = cores / (load + model core-s per scene) on CPU (with
  GPU actors also at most actors / model seconds per scene); ``efficiency`` = scenes/s over the Ray
  Data execution / bound, ``efficiency_steady`` from the first scene on, ``efficiency_command`` over
  the whole command. None can exceed 1; one that does means the measurement is wrong, and the
  bench says so and exits with status 1. ``first_scene_s``: job start to the first scene
  reconstructed; ``startup``: the milestones.
* ``load``: the load tasks alone (materialised), scenes/s, cost, efficiency alone.
* ``model``: the VGGT actor pool alone over the loaded scenes, likewise. ``cost_vs_pipeline`` = cost
  per scene alone / in the pipeline.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tomeray.jobs.pipeline_bench import (
    NAN,
    alone_row,
    check_valid,
    drain,
    load_average,
    measure,
    pipeline_figures,
    print_report,
    run_cold,
)
from tomeray.pipeline.core.atomic import atomic_write_json
from tomeray.pipeline.core.config import load_config
from tomeray.pipeline.core.graph import actor_stage, plan_actors, task_stage
from tomeray.pipeline.reconstruction.config import ReconConfig
from tomeray.pipeline.reconstruction.graph import reconstructor_kwargs, scene_items, scene_loader

STAGES = ("load", "model")
SAMPLE_DATA = Path(os.environ.get("TOMERAY_SAMPLE_DATA", "/usr/share/doc/opencv-doc/examples/data"))


def source_images() -> list[Path]:
    images = sorted(p for p in SAMPLE_DATA.glob("*.jpg") if p.name.startswith(("left", "right"))
                    and p.stem.rstrip("0123456789") in ("left", "right"))
    if not images:
        raise FileNotFoundError(f"no left*.jpg / right*.jpg under {SAMPLE_DATA}: install opencv-doc "
                                "(see the README) or set TOMERAY_SAMPLE_DATA")
    return images


def make_scenes(root: Path, scenes: int, views: int) -> Path:
    """``scenes`` folders of ``views`` images each, the sample photographs taken in turn."""
    images = source_images()
    for s in range(scenes):
        folder = root / f"scene_{s:03d}"
        folder.mkdir(parents=True)
        for v in range(views):
            source = images[(s * views + v) % len(images)]
            shutil.copyfile(source, folder / f"{v:02d}_{source.name}")
    return root


def actor_overrides(actors: int | None) -> list[str]:
    """The model stage's pool: ``actors`` of half a core each; by default, on a CPU-only machine,
    enough of them to use every core (the model dominates; one single-threaded actor would leave
    the other cores to the load tasks alone), and with a GPU the job's own plan."""
    import torch

    if actors is None:
        if torch.cuda.is_available():
            return []
        actors = max(1, round(0.75 * len(os.sched_getaffinity(0))))
    return [f"ray.actors.count={actors}", "ray.actors.num_cpus=0.5"]


def pipeline_row(root: Path, out: Path, overrides: list[str]) -> dict:
    """``tomeray reconstruct`` run cold; the row from its run record."""
    record, command_s = run_cold("reconstruct", [str(root)], out, overrides)
    per_scene = record["costs"]["cpu_s_per_item"]
    return {"stage": "pipeline", "scenes": record["reconstructed"], "failed": record["failed"],
            "views": record["views"], "scenes_per_s": record["costs"]["items_per_s"],
            "load_cpu_s": per_scene.get("load", NAN), "model_cpu_s": per_scene.get("model", NAN),
            "bound_scenes_per_s": record["costs"]["bound_per_s"], **pipeline_figures(record, command_s),
            "first_scene_s": record["first_scene_s"]}


def stages_alone(root: Path, cfg: ReconConfig, cores: float) -> list[dict]:
    """The load tasks alone (materialised in the object store), then the VGGT actors alone over them."""
    import ray
    from tomeray.operators.scene_reconstruct import SceneReconstructor
    from tomeray.pipeline.reconstruction.discover import discover_scenes

    ray.data.DataContext.get_current().enable_progress_bars = False
    specs, _ = discover_scenes([str(root)], cfg)
    items = scene_items(specs)
    source = ray.data.from_items(items, override_num_blocks=len(items))
    start = time.time()
    loaded = task_stage(source, scene_loader(cfg), cfg.ray.tasks).materialize()
    load = alone_row("load", drain(loaded, "load"), len(items), start, time.time(), cores, "scenes")

    plan = plan_actors(cfg.ray.actors, len(items))
    start = time.time()
    totals = drain(actor_stage(loaded, SceneReconstructor, reconstructor_kwargs(cfg), plan, 1), "model")
    model = alone_row("model", totals, len(items), start, time.time(), cores, "scenes")
    model.update(actors=plan.actors, threads=plan.threads)
    return [load, model]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=16, help="scene folders (default 16)")
    parser.add_argument("--views", type=int, default=4, help="images per scene (default 4)")
    parser.add_argument("--arch", default="vggt-tiny", help="VGGT layout (random weights)")
    parser.add_argument("--actors", type=int, default=None,
                        help="VGGT actors; default: on a CPU-only machine one per 4/3 cores at half a core "
                             "each (as indexing; the job's CPU default is one), with GPUs the job's default")
    parser.add_argument("--skip-alone", action="store_true", help="only the pipeline row (no stages alone)")
    parser.add_argument("--json", type=Path, default=None, help="write {'rows': [...]} to this file")
    parser.add_argument("overrides", nargs="*", help="reconstruct config overrides, e.g. load.size=224")
    return parser.parse_args(sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    overrides = [f"model.arch={args.arch}", "model.pretrained=none", "ray.progress=false",
                 *actor_overrides(args.actors), *args.overrides]
    cfg = load_config(ReconConfig, "reconstruct", overrides)
    work = Path(tempfile.mkdtemp(prefix="bench_reconstruct_"))
    load_start = load_average()
    try:
        root = make_scenes(work / "scenes", args.scenes, args.views)
        print(f"model {args.arch}, weights: random-init (RANDOM: timing only); {args.scenes} scenes x "
              f"{args.views} views (opencv-doc left*/right*.jpg, 640x480) at load.size={cfg.load.size}; "
              f"actors: {cfg.ray.actors.count or 'job default'} x {cfg.ray.actors.num_cpus} CPU; "
              f"load average {load_start:.2f}", flush=True)
        rows = measure(lambda: pipeline_row(root, work / "out", overrides),
                       None if args.skip_alone else lambda pipe, cores: stages_alone(root, cfg, cores),
                       cfg, dict(arch=args.arch, weights="random-init", views_per_scene=args.views,
                                 load_size=cfg.load.size), load_start)
        print_report(rows, "scenes", STAGES, "first_scene_s", "scene")
        if args.json:
            atomic_write_json(args.json, {"rows": rows})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return check_valid(rows)


if __name__ == "__main__":
    sys.exit(main())
