"""Benchmark: FastVGGT merged global attention against plain VGGT, as the number of views grows.

For every view count the aggregator runs on the same frames unmerged (the baseline) and merged,
each in a fresh process so that peak memory is that run's alone. Reported per row: aggregator
wall time (best of ``--repeats`` runs after a warm-up), peak memory above the pre-call level,
speedup (unmerged / merged) and the relative deviation ||merged - unmerged|| / ||unmerged|| of
the depth and world-point maps that the DPT heads compute from the two aggregators' outputs.

Defaults fit a 2-core CPU in a few minutes: ``vggt-narrow`` (the 1B layout at width 64, random
weights), frames of opencv-doc's vtest.avi at 140 px wide (112 x 140, 85 tokens per view).
On a GPU, e.g.:
    python -m tomeray.jobs.bench_vggt --arch vggt-1b --device cuda --width 518 --views 100,200,500,1000

Memory: CPU = peak resident set size (getrusage ru_maxrss) minus the RSS just before the call;
CUDA = torch.cuda.max_memory_allocated minus the allocation just before the call.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tomeray.models.errors import TomerayError
from tomeray.models.vggt import MergeConfig, VGGTModelConfig, create_vggt, list_archs
from tomeray.models.vggt.preprocess import preprocess_images

DEFAULT_VIDEO = (
    Path(os.environ.get("TOMERAY_SAMPLE_DATA", "/usr/share/doc/opencv-doc/examples/data")) / "vtest.avi"
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_vggt", description=__doc__.split("\n\n")[0])
    p.add_argument("--views", default="8,32,64,128", help="comma-separated view counts")
    p.add_argument("--arch", default="vggt-narrow", choices=list_archs())
    p.add_argument("--weights", default="none", help="'none' (random init) or a checkpoint path / hub id")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--width", type=int, default=140, help="image width in pixels (multiple of 14)")
    p.add_argument("--video", default=str(DEFAULT_VIDEO), help="frames source; 'random' for noise images")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest when shared)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case (the fastest is reported)")
    p.add_argument("--ratio", type=float, default=MergeConfig.ratio)
    p.add_argument("--start-block", type=int, default=MergeConfig.start_block)
    p.add_argument("--json", dest="json_path", help="write the rows as JSON here")
    return p.parse_args(argv)


def load_frames(source: str, views: int, width: int) -> torch.Tensor:
    """``views`` frames spread evenly over the video (repeating when it is shorter), preprocessed
    like the official loader at ``width``; or seeded noise when ``source`` is 'random'."""
    if source == "random":
        height = round(width * 3 / 4 / 14) * 14
        return torch.rand(views, 3, height, width, generator=torch.Generator().manual_seed(0))
    import cv2

    capture = cv2.VideoCapture(source)
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    if not capture.isOpened() or total <= 0:
        raise SystemExit(f"cannot read video {source}; pass --video PATH or --video random")
    wanted = np.linspace(0, total - 1, views).round().astype(int)
    frames: dict[int, np.ndarray] = {}
    index = 0
    while index <= wanted.max():
        ok, frame = capture.read()
        if not ok:
            break
        if index in set(wanted.tolist()):
            frames[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        index += 1
    capture.release()
    picked = [frames[i] for i in wanted if i in frames]
    if len(picked) != views:
        raise SystemExit(f"{source}: decoded {len(picked)} of {views} wanted frames")
    return preprocess_images(picked, mode="crop", size=width)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Case:
    """Model(s), input and device handling shared by the measurements below (child processes)."""

    def __init__(self, spec: dict) -> None:
        torch.set_num_threads(spec["threads"])
        self.spec = spec
        self.device = torch.device(spec["device"])
        self.images = torch.load(spec["images"]).to(self.device)[None]
        self.cuda = self.device.type == "cuda"

    def model(self, merged: bool):
        spec = self.spec
        merge = MergeConfig(enabled=merged, ratio=spec["ratio"], start_block=spec["start_block"])
        cfg = VGGTModelConfig(arch=spec["arch"], pretrained=spec["weights"], merge=merge)
        return create_vggt(cfg).to(self.device)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed_aggregate(self, model) -> float:
        start = time.perf_counter()
        with torch.no_grad(), self.autocast():
            model.aggregate(self.images)
        self.sync()
        return time.perf_counter() - start


def measure_time(spec: dict) -> dict:
    """Both variants in one process, runs alternating, so that both see the same machine load;
    the best of ``repeats`` runs is reported."""
    case = _Case(spec)
    models = {merged: case.model(merged) for merged in (False, True)}
    with torch.no_grad(), case.autocast():
        for model in models.values():  # warm-up: kernels, allocator
            model.aggregate(case.images[:, :2])
    times: dict[bool, list[float]] = {False: [], True: []}
    errors = {}
    for _ in range(spec["repeats"]):
        for merged, model in models.items():
            if merged in errors:
                continue
            try:
                times[merged].append(case.timed_aggregate(model))
            except (TomerayError, torch.OutOfMemoryError) as e:
                errors[merged] = f"{type(e).__name__}: {e}"
                if case.cuda:
                    torch.cuda.empty_cache()
    return {
        merged: ({"error": errors[merged]} if merged in errors else {"ms": 1000 * min(times[merged])})
        for merged in models
    }


def measure_memory(spec: dict) -> dict:
    """One variant in a fresh process: peak memory of one aggregator call above the level before
    it, then the depth and point maps of the heads (saved for the deviation)."""
    case = _Case(spec)
    model = case.model(spec["merged"])
    with torch.no_grad(), case.autocast():
        model.aggregate(case.images[:, :2])  # warm-up
        case.sync()
        if case.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(case.device)
            before = torch.cuda.memory_allocated(case.device)
        else:
            before = _rss_bytes()
        layers, patch_start_idx = model.aggregate(case.images)
        case.sync()
        if case.cuda:
            peak = torch.cuda.max_memory_allocated(case.device) - before
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        hw = tuple(case.images.shape[-2:])
        with torch.autocast(case.device.type, enabled=False):
            depth, _ = model.depth_head(layers, hw, patch_start_idx)
            points, _ = model.point_head(layers, hw, patch_start_idx)
    # Deviation statistics do not need every pixel of a 1000-view scene: keep at most ~16M per map.
    step = max(1, int(np.sqrt(depth[..., 0].numel() / 2**24)))
    np.savez(
        spec["maps"],
        depth=depth[:, :, ::step, ::step].float().cpu().numpy(),
        points=points[:, :, ::step, ::step].float().cpu().numpy(),
    )
    views = case.images.shape[1]
    plan = model.merge_plan(views, hw, case.device)
    p = model.arch.patch_size
    tokens = views * (model.arch.tokens_before_patches + (hw[0] // p) * (hw[1] // p))
    return {
        "peak_mb": max(0, peak) / 2**20,
        "tokens": tokens,
        "attended_tokens": plan.merged_tokens if plan else tokens,
        "weights_id": model.weights_id,
    }


def _run_isolated(fn, spec: dict) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        try:
            return pool.apply(fn, (spec,))
        except (TomerayError, torch.OutOfMemoryError) as e:
            return {"error": f"{type(e).__name__}: {e}"}


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    if device == "auto":
        device = "cpu"
    views_list = [int(v) for v in args.views.split(",") if v.strip()]
    rows, meta = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_vggt_") as tmp:
        for views in views_list:
            frames = load_frames(args.video, views, args.width)
            image_file = Path(tmp) / "images.pt"
            torch.save(frames, image_file)
            spec = dict(
                arch=args.arch,
                weights=args.weights,
                device=device,
                threads=args.threads,
                ratio=args.ratio,
                start_block=args.start_block,
                repeats=args.repeats,
                images=str(image_file),
            )
            timing = _run_isolated(measure_time, spec)
            memory = {
                merged: _run_isolated(
                    measure_memory,
                    {**spec, "merged": merged, "maps": str(Path(tmp) / f"maps_{int(merged)}.npz")},
                )
                for merged in (False, True)
            }
            row = {"views": views, "height": int(frames.shape[-2]), "width": int(frames.shape[-1])}
            for merged, key in ((False, "unmerged"), (True, "merged")):
                result = {**timing.get(merged, timing), **memory[merged]}
                row[f"ms_{key}"] = result.get("ms")
                row[f"peak_mb_{key}"] = result.get("peak_mb")
                if "error" in result:
                    row.setdefault("error", f"{key}: {result['error']}")
            if "error" not in row:
                maps = [np.load(Path(tmp) / f"maps_{i}.npz") for i in (0, 1)]
                row.update(
                    speedup=row["ms_unmerged"] / row["ms_merged"],
                    depth_rel_err=_rel_err(maps[1]["depth"], maps[0]["depth"]),
                    points_rel_err=_rel_err(maps[1]["points"], maps[0]["points"]),
                    tokens=memory[False]["tokens"],
                    attended_tokens=memory[True]["attended_tokens"],
                )
                meta["weights_id"] = memory[False]["weights_id"]
            rows.append(row)
            _print_row(row, header=len(rows) == 1, args=args, device=device, meta=meta)

    if args.json_path:
        report = {
            "benchmark": "vggt aggregator: FastVGGT merged vs unmerged global attention",
            "arch": args.arch,
            "weights": meta.get("weights_id", args.weights),
            "device": device,
            "precision": "bfloat16 autocast" if device.startswith("cuda") else "float32",
            "threads": args.threads,
            "frames": args.video,
            "merge": {"ratio": args.ratio, "start_block": args.start_block},
            "memory_method": "CUDA max_memory_allocated above pre-call"
            if device.startswith("cuda")
            else "peak RSS (ru_maxrss) above pre-call RSS, fresh process per run",
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "rows": rows,
        }
        Path(args.json_path).write_text(json.dumps(report, indent=2))
    return 0


def _print_row(row: dict, *, header: bool, args, device: str, meta: dict) -> None:
    if header:
        weights = meta.get("weights_id", args.weights)
        print(
            f"# VGGT aggregator, arch {args.arch}, weights {weights}"
            + (
                " (RANDOM: timings are real, deviations only indicative)"
                if weights.startswith("random")
                else ""
            )
        )
        size = f"{row['height']}x{row['width']}"
        print(f"# device {device}, {args.threads} threads, frames {args.video}, images {size}")
        print(
            f"{'views':>6} {'tokens':>8} {'attended':>8} {'unmerged ms':>12} {'merged ms':>10} "
            f"{'speedup':>8} {'peak MB un':>11} {'peak MB m':>10} {'depth err':>10} {'points err':>10}"
        )
    if "error" in row:
        print(f"{row['views']:>6} {row['error']}")
    else:
        print(
            f"{row['views']:>6} {row['tokens']:>8} {row['attended_tokens']:>8} {row['ms_unmerged']:>12.0f} "
            f"{row['ms_merged']:>10.0f} {row['speedup']:>7.2f}x {row['peak_mb_unmerged']:>11.1f} "
            f"{row['peak_mb_merged']:>10.1f} {row['depth_rel_err']:>10.2e} {row['points_rel_err']:>10.2e}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
