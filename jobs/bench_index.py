"""Indexing throughput and start-up: the real job end to end against the bound its own stage
costs allow, with each stage alone measured in the same run.

    python -m tomeray.jobs.bench_index [--videos 48] [--arch ViT-B-32] [--json PATH] [overrides ...]

Inputs: copies of the opencv-doc sample videos (vtest.avi, Megamind.avi, tree.avi, cycled), so
every copy has its own path and id. Weights: random init (``pretrained=none``, said in the
output): timing does not depend on the values.

Rows (all on the same videos, in this order):

* ``pipeline``: the real command, ``tomeray index`` in a fresh process (cold: Python start,
  imports, Ray start, actors; ``output.build_faiss=false``, FAISS has its own rows), read back
  from its run record. ``decode_cpu_s`` / ``embed_cpu_s``:
  CPU seconds per video the stages' workers spent on the rows' work (measured inside the
  operators; start-up is outside the rows). ``bound_videos_per_s`` = cores / (decode + embed
  core-s per video) on CPU (with GPU actors also at most actors / embed seconds per video).
  ``efficiency`` = videos/s over the Ray Data execution / bound, ``efficiency_steady`` the same
  from the first embedding on, ``efficiency_command`` over the whole command (Python start to
  exit): each is (CPU seconds of stage work) / (cores x seconds), so none can exceed 1; one that
  does means the measurement is wrong, and the bench says so and exits with status 1.
  ``first_embedding_s``: job start to the first embedding computed; ``startup``: the milestones.
* ``decode``: decode tasks alone on a Ray cluster (the job's settings), videos/s, its cost, and its
  efficiency alone (its work / (cores x its seconds)).
* ``embed``: the embed actor pool alone over clips decoded beforehand, likewise.
  ``cost_vs_pipeline`` = the stage's cost per video alone / in the pipeline (contention shows as
  a value below 1).
* ``faiss``: rows of ``tomeray.jobs.bench_faiss`` (Flat vs presets) at the model's dimension.

The machine's load average is recorded at the start and the end: on a shared machine the rates
move with it, the efficiencies (ratios within one run) much less.
"""

from __future__ import annotations

import argparse
import json
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
from tomeray.pipeline.core.graph import actor_stage, task_stage
from tomeray.pipeline.video.config import IndexConfig
from tomeray.pipeline.video.graph import embedder_kwargs, plan_embedding, video_decoder

SOURCES = ("vtest.avi", "Megamind.avi", "tree.avi")
STAGES = ("decode", "embed")
SAMPLE_DATA = Path(os.environ.get("TOMERAY_SAMPLE_DATA", "/usr/share/doc/opencv-doc/examples/data"))


def make_corpus(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        source = SAMPLE_DATA / SOURCES[i % len(SOURCES)]
        target = folder / f"{i:04d}_{source.name}"
        shutil.copyfile(source, target)
        paths.append(str(target))
    return paths


def pipeline_row(folder: Path, out: Path, overrides: list[str]) -> dict:
    """``tomeray index`` run cold; the row from its run record."""
    record, command_s = run_cold("index", [str(folder)], out, overrides)
    per_video = record["costs"]["cpu_s_per_item"]
    manifest = json.loads((out / "manifest.json").read_text())
    return {"stage": "pipeline", "videos": record["indexed"], "failed": record["failed"],
            "videos_per_s": record["costs"]["items_per_s"], "decode_cpu_s": per_video.get("decode", NAN),
            "embed_cpu_s": per_video.get("embed", NAN), "bound_videos_per_s": record["costs"]["bound_per_s"],
            **pipeline_figures(record, command_s), "first_embedding_s": record["first_embedding_s"],
            "image_size": int(manifest["model"]["image_size"]), "dim": int(manifest["dim"])}


def stages_alone(paths: list[str], cfg: IndexConfig, image_size: int, cores: float) -> list[dict]:
    """Decode tasks alone (materialised, so the embed stage then reads the clips from the object
    store), then the embed actor pool alone over them."""
    import ray
    from tomeray.operators.video_embed import VideoEmbedder

    ray.data.DataContext.get_current().enable_progress_bars = False
    items = [{"path": p, "key": p} for p in paths]
    source = ray.data.from_items(items, override_num_blocks=len(items))
    start = time.time()
    clips = task_stage(source, video_decoder(cfg, image_size), cfg.ray.tasks).materialize()
    decode = alone_row("decode", drain(clips, "decode"), len(paths), start, time.time(), cores, "videos")

    plan, batch_size = plan_embedding(cfg, len(paths))
    start = time.time()
    totals = drain(actor_stage(clips, VideoEmbedder, embedder_kwargs(cfg), plan, batch_size), "embed")
    embed = alone_row("embed", totals, len(paths), start, time.time(), cores, "videos")
    embed.update(actors=plan.actors, batch_size=batch_size)
    return [decode, embed]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=48, help="corpus size (copies of the 3 sample videos)")
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--preset", default="tempme")
    parser.add_argument("--faiss-n", type=int, default=20000, help="vectors for the FAISS rows (0: skip)")
    parser.add_argument("--faiss-gpu", action="store_true", help="FAISS rows on the GPU (needs faiss-gpu)")
    parser.add_argument("--skip-alone", action="store_true", help="only the pipeline row (no stages alone)")
    parser.add_argument("--json", type=Path, default=None, help="write {'rows': [...]} to this file")
    parser.add_argument("overrides", nargs="*", help="index config overrides, e.g. inference.device=cuda")
    return parser.parse_args(sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    overrides = [f"model.arch={args.arch}", f"model.preset={args.preset}", "model.pretrained=none",
                 "ray.progress=false", "output.build_faiss=false", *args.overrides]
    cfg = load_config(IndexConfig, "index", overrides)
    work = Path(tempfile.mkdtemp(prefix="bench_index_"))
    load_start = load_average()
    try:
        paths = make_corpus(work / "videos", args.videos)
        print(f"model {args.arch} preset {args.preset}, weights: random-init(seed={cfg.model.seed}) "
              f"(RANDOM: timing only); {len(paths)} videos ({', '.join(SOURCES)} cycled); "
              f"load average {load_start:.2f}", flush=True)
        rows = measure(lambda: pipeline_row(work / "videos", work / "index", overrides),
                       None if args.skip_alone else
                       lambda pipe, cores: stages_alone(paths, cfg, pipe["image_size"], cores),
                       cfg, dict(arch=args.arch, preset=args.preset, weights="random-init"), load_start)
        pipe = rows[0]
        print_report(rows, "videos", STAGES, "first_embedding_s", "embedding")
        if args.faiss_n:
            from tomeray.jobs.bench_faiss import format_table as faiss_table
            from tomeray.jobs.bench_faiss import run_faiss_bench

            faiss_rows = run_faiss_bench(args.faiss_n, pipe["dim"], 200, incremental=False, mmap=False,
                                         distributed_n=0, use_gpu=args.faiss_gpu)
            print(faiss_table(faiss_rows))
            rows.extend({**r, "stage": "faiss", "faiss_stage": r["stage"]} for r in faiss_rows)
        if args.json:
            atomic_write_json(args.json, {"rows": rows})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return check_valid(rows)


if __name__ == "__main__":
    sys.exit(main())
