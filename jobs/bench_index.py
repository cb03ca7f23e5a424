"""Indexing throughput: each stage alone vs the streaming pipeline, on the same videos in one run.

    python -m tomeray.jobs.bench_index [--videos 48] [--arch ViT-B-32] [--json PATH]

Inputs: copies of the opencv-doc sample videos (vtest.avi, Megamind.avi, tree.avi, cycled), so
every copy has its own path and id. Weights: random init (``pretrained=none``, said in the
output): timing does not depend on the values.

Rows (one per measurement, all on the same inputs):

* ``profile``: decode and embed run in this process, one thread each, on a subset; the process
  CPU time per video is the stage's cost in core-seconds (``decode_core_s`` / ``embed_core_s``).
* ``decode``: decode tasks alone on the Ray cluster (same config as the job), videos/s.
* ``embed``: the embed actor pool alone, over clips decoded beforehand, videos/s.
* ``pipeline``: the real job (``run_index``: decode -> embed -> Parquet shards), videos/s over its
  Ray Data execution (actor start-up included, model load on the driver and FAISS excluded).
  ``overlap_ratio`` = pipeline / the slowest stage alone; ``efficiency`` = pipeline / the bound
  this machine allows: on CPU ``cores / (decode_core_s + embed_core_s)``, with GPU embedding the
  slowest stage alone. ``*_steady`` repeat both with the marginal rate of the job (a second run on
  a third of the videos; the difference cancels the fixed start-up of actors and models), which
  is what a long job converges to; ``startup_s`` is that fixed cost.
* ``faiss``: rows of ``tomeray.jobs.bench_faiss`` (Flat vs presets) at the model's dimension.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tomeray.pipeline.core.atomic import atomic_write_json
from tomeray.pipeline.core.config import load_config
from tomeray.pipeline.core.graph import actor_stage, task_stage
from tomeray.pipeline.video.config import IndexConfig
from tomeray.pipeline.video.graph import plan_embedding
from tomeray.pipeline.video.job import run_index

SOURCES = ("vtest.avi", "Megamind.avi", "tree.avi")
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


def profile_stages(paths: list[str], cfg: IndexConfig) -> dict:
    """Process CPU seconds per video of decoding and of embedding, one thread each, in-process;
    embedding runs in batches of the job's batch size, as the actors do."""
    import torch
    from tomeray.operators.video_decode import decode_clips
    from tomeray.operators.video_embed import VideoEmbedder

    torch.set_num_threads(1)
    embedder = VideoEmbedder(dataclasses.asdict(cfg.model), num_threads=1)
    size, t = embedder.encoder.image_size, cfg.model.num_frames
    clips = []
    cpu, wall = time.process_time(), time.perf_counter()
    for path in paths:
        clips.extend(decode_clips(path, size, t, cfg.sampling.fps, cfg.sampling.segment_s))
    decode_cpu, decode_wall = time.process_time() - cpu, time.perf_counter() - wall
    frames, masks = np.stack([c.frames for c in clips]), np.stack([c.mask for c in clips])
    batch = cfg.ray.actors.batch_size or 8
    embedder.embed(frames[:batch], masks[:batch])  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(clips), batch):
        embedder.embed(frames[start : start + batch], masks[start : start + batch])
    embed_cpu, embed_wall = time.process_time() - cpu, time.perf_counter() - wall
    n = len(paths)
    return {"decode_core_s": decode_cpu / n, "decode_wall_s": decode_wall / n,
            "embed_core_s": embed_cpu / n, "embed_wall_s": embed_wall / n, "image_size": size,
            "embed_dim": embedder.encoder.embed_dim}


def _timed(batches) -> tuple[int, float, float, float]:
    """(rows, seconds, seconds to the first batch, rows in the first batch)."""
    start = time.perf_counter()
    first_t, first_rows, rows = None, 0, 0
    for batch in batches:
        n = len(batch["path"])
        if first_t is None:
            first_t, first_rows = time.perf_counter() - start, n
        rows += n
    return rows, time.perf_counter() - start, first_t or 0.0, first_rows


def stage_alone(paths: list[str], cfg: IndexConfig, image_size: int) -> tuple[dict, dict]:
    """Decode tasks alone, then the embed actor pool alone over the already decoded clips."""
    import ray
    from tomeray.operators.video_decode import VideoDecoder
    from tomeray.operators.video_embed import VideoEmbedder

    items = [{"path": p, "key": p} for p in paths]
    ray.data.DataContext.get_current().enable_progress_bars = False
    decoder = VideoDecoder(image_size, cfg.model.num_frames, cfg.sampling.fps, cfg.sampling.segment_s)

    def decode(rows: list[dict]):
        return task_stage(ray.data.from_items(rows, override_num_blocks=len(rows)), decoder, cfg.ray.tasks)

    _timed(decode(items[:4]).iter_batches(batch_size=None))  # warm-up: worker processes and imports
    decoded = decode(items)
    rows, seconds, _, _ = _timed(decoded.iter_batches(batch_size=None))
    decode = {"videos": rows, "seconds": seconds, "videos_per_s": rows / seconds}

    clips = decoded.materialize()  # decoded once more, kept in the object store for the embed stage
    plan, batch_size = plan_embedding(cfg, len(paths))
    model = {"model": dataclasses.asdict(cfg.model), **dataclasses.asdict(cfg.inference)}
    embedded = actor_stage(clips, VideoEmbedder, model, plan, batch_size)
    rows, seconds, first_t, first_rows = _timed(embedded.iter_batches(batch_size=None))
    embed = {"videos": rows, "seconds": seconds, "videos_per_s": rows / seconds,
             "steady_videos_per_s": (rows - first_rows) / max(seconds - first_t, 1e-9),
             "actors": plan.actors}
    return decode, embed


def pipeline_run(paths: list[str], overrides: list[str], out: Path) -> dict:
    """The real job: discovery, decode, embed, Parquet shards; timed over its Ray Data execution."""
    summary = run_index(paths, out, overrides)
    return {"videos": summary.indexed, "seconds": summary.pipeline_s,
            "videos_per_s": summary.indexed / summary.pipeline_s, "failed": summary.failed}


def format_table(rows: list[dict]) -> str:
    header = f"{'stage':<9} {'videos':>6} {'seconds':>8} {'videos/s':>9} {'core-s/video':>13} {'ratio':>28}"
    lines = [header, "-" * len(header)]
    for r in rows:
        if r["stage"] == "faiss":
            continue
        core = r.get("core_s_per_video")
        ratio = ""
        if r["stage"] == "pipeline":
            ratio = f"overlap {r['overlap_ratio']:.2f} eff {r['efficiency']:.2f}"
        elif "vs_pipeline" in r:
            ratio = f"pipeline / this {r['vs_pipeline']:.2f}"
        core_text = "" if core is None else f"{core:.3f}"
        lines.append(f"{r['stage']:<9} {r.get('videos', 0):>6} {r.get('seconds', 0):>8.2f} "
                     f"{r.get('videos_per_s', 0):>9.3f} {core_text:>13} {ratio:>28}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=48,
                        help="corpus size (copies of the 3 sample videos)")
    parser.add_argument("--profile-videos", type=int, default=8, help="videos profiled in-process")
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--preset", default="tempme")
    parser.add_argument("--faiss-n", type=int, default=20000, help="vectors for the FAISS rows (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="write {'rows': [...]} to this file")
    parser.add_argument("overrides", nargs="*", help="index config overrides, e.g. ray.actors.count=2")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)

    import ray
    from tomeray.pipeline.core.ray_session import init_ray

    overrides = [f"model.arch={args.arch}", f"model.preset={args.preset}", "model.pretrained=none",
                 "ray.progress=false", *args.overrides]
    cfg = load_config(IndexConfig, "index", overrides)
    work = Path(tempfile.mkdtemp(prefix="bench_index_"))
    try:
        paths = make_corpus(work / "videos", args.videos)
        print(f"model {args.arch} preset {args.preset}, weights: random-init(seed={cfg.model.seed}) "
              f"(RANDOM: timing only); {len(paths)} videos ({', '.join(SOURCES)} cycled)")
        profile = profile_stages(paths[: args.profile_videos], cfg)
        init_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus)
        cores = float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        gpus = float(ray.cluster_resources().get("GPU", 0))
        decode, embed = stage_alone(paths, cfg, profile["image_size"])
        pipe = pipeline_run(paths, overrides, work / "index")
        # A second, smaller run: the difference cancels the fixed start-up (actor processes, imports,
        # model build), leaving the marginal rate a long job converges to.
        small = pipeline_run(paths[: max(3, len(paths) // 3)], overrides, work / "index_small")
        steady = (pipe["videos"] - small["videos"]) / max(pipe["seconds"] - small["seconds"], 1e-9)
        startup_s = max(0.0, pipe["seconds"] - pipe["videos"] / steady)

        slowest = min(decode["videos_per_s"], embed["videos_per_s"])
        slowest_steady = min(decode["videos_per_s"], embed["steady_videos_per_s"])
        if gpus:
            bound, bound_steady = slowest, slowest_steady
        else:
            bound = bound_steady = cores / (profile["decode_core_s"] + profile["embed_core_s"])
        rows = [
            {"stage": "decode", **decode, "core_s_per_video": profile["decode_core_s"],
             "vs_pipeline": pipe["videos_per_s"] / decode["videos_per_s"]},
            {"stage": "embed", **embed, "core_s_per_video": profile["embed_core_s"],
             "vs_pipeline": pipe["videos_per_s"] / embed["videos_per_s"]},
            {"stage": "pipeline", **pipe, "steady_videos_per_s": steady, "startup_s": startup_s,
             "small_run_videos": small["videos"], "small_run_seconds": small["seconds"],
             "bound_videos_per_s": bound,
             "cores": cores, "gpus": gpus,
             "overlap_ratio": pipe["videos_per_s"] / slowest, "efficiency": pipe["videos_per_s"] / bound,
             "overlap_ratio_steady": steady / slowest_steady, "efficiency_steady": steady / bound_steady},
        ]
        for r in rows:
            r.update(arch=args.arch, preset=args.preset, weights="random-init")
        print(format_table(rows))
        p = rows[2]
        print(f"bound ({'slowest stage alone' if gpus else f'{cores:g} cores / (decode + embed core-s)'}): "
              f"{bound:.3f} videos/s; steady state: pipeline {steady:.3f} videos/s, "
              f"overlap {p['overlap_ratio_steady']:.2f}, efficiency {p['efficiency_steady']:.2f} "
              f"(fixed start-up {startup_s:.1f} s, from a second run on {small['videos']} videos)")
        if args.faiss_n:
            from tomeray.jobs.bench_faiss import format_table as faiss_table
            from tomeray.jobs.bench_faiss import run_faiss_bench

            faiss_rows = run_faiss_bench(args.faiss_n, profile["embed_dim"], 200, incremental=False,
                                         mmap=False, distributed_n=0)
            print(faiss_table(faiss_rows))
            rows.extend({**r, "stage": "faiss", "faiss_stage": r["stage"]} for r in faiss_rows)
        if args.json:
            atomic_write_json(args.json, {"rows": rows})
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
