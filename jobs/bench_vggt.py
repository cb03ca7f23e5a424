"""Benchmark: FastVGGT merged global attention against plain VGGT, per merge mode, as views grow.

For every view count the aggregator runs on the same frames unmerged (the baseline) and in every
merge mode of ``--modes``, all in one process with the runs alternating, so that each ratio is
measured side by side under the same load. A mode is a preset of ``MergeConfig`` with optional
overrides: ``default``, ``reference``, ``fast``, ``default+rematch_every=2``, ``fast+region=3``.
Reported per (views, mode) row: aggregator wall time (median of ``--repeats`` runs after a
warm-up), speedup (median over the repeats of unmerged / merged; ``speedup_best`` from the
fastest run of each, the least disturbed on a shared machine; ``cpu_speedup``: the same median
from the process's CPU time, which other load on the machine hardly changes), the time of each merge
component in one profiled run (similarity, selection, gather/scatter, merged attention), peak
memory above the pre-call level (fresh process per variant), and the deviation of the camera
poses (max |pose_enc difference|) and of the depth and world-point maps (relative L2) from the
unmerged model, and from the ``reference`` mode when it is among the modes.

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
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tomeray.models.errors import ConfigError, TomerayError
from tomeray.models.vggt import MergeConfig, VGGTModelConfig, create_vggt, list_archs
from tomeray.models.vggt.preprocess import preprocess_images

DEFAULT_VIDEO = (
    Path(os.environ.get("TOMERAY_SAMPLE_DATA", "/usr/share/doc/opencv-doc/examples/data")) / "vtest.avi"
)
UNMERGED = "unmerged"
COMPONENTS = {  # profiler label -> column
    "merge.similarity": "similarity",
    "merge.select": "select",
    "merge.gather_scatter": "gather_scatter",
    "merge.attention": "attention",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_vggt", description=__doc__.split("\n\n")[0])
    p.add_argument("--views", default="8,32,64,128", help="comma-separated view counts")
    p.add_argument("--modes", default="default,reference,fast",
                   help="comma-separated merge modes: PRESET[+KEY=VALUE...] (MergeConfig fields)")
    p.add_argument("--arch", default="vggt-narrow", choices=list_archs())
    p.add_argument("--weights", default="none", help="'none' (random init) or a checkpoint path / hub id")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--width", type=int, default=140, help="image width in pixels (multiple of 14)")
    p.add_argument("--video", default=str(DEFAULT_VIDEO), help="frames source; 'random' for noise images")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest when shared)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant (the median is reported)")
    p.add_argument("--ratio", type=float, default=MergeConfig.ratio)
    p.add_argument("--start-block", type=int, default=MergeConfig.start_block)
    p.add_argument("--no-components", dest="components", action="store_false",
                   help="skip the profiled run that times each merge component")
    p.add_argument("--fixture", metavar="DIR",
                   help="instead: deviations of every mode on the tiny parity fixture in DIR")
    p.add_argument("--json", dest="json_path", help="write the rows as JSON here")
    return p.parse_args(argv)


def merge_config(mode: str, ratio: float, start_block: int) -> MergeConfig:
    """``PRESET[+KEY=VALUE...]`` -> a MergeConfig (ConfigError on an unknown key or value)."""
    preset, *overrides = mode.split("+")
    values: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or key not in MergeConfig.__dataclass_fields__:
            raise ConfigError(f"mode {mode!r}: {item!r} is not KEY=VALUE with a MergeConfig field")
        values[key] = json.loads(raw) if raw.lower() in ("true", "false") or raw[:1].isdigit() else raw
    cfg = MergeConfig(preset=preset, ratio=ratio, start_block=start_block, **values)
    cfg.resolved()
    return cfg


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

    def model(self, mode: str):
        spec = self.spec
        if mode == UNMERGED:
            merge = MergeConfig(enabled=False)
        else:
            merge = merge_config(mode, spec["ratio"], spec["start_block"])
        cfg = VGGTModelConfig(arch=spec["arch"], pretrained=spec["weights"], merge=merge)
        return create_vggt(cfg).to(self.device)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed_aggregate(self, model) -> tuple[float, float]:
        """Wall seconds and this process's CPU seconds of one aggregator call."""
        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad(), self.autocast():
            model.aggregate(self.images)
        self.sync()
        return time.perf_counter() - start, time.process_time() - cpu

    def components(self, model) -> dict:
        """Milliseconds of each merge component (profiler labels) in one run, and the rest."""
        with torch.no_grad(), self.autocast(), torch.profiler.profile() as prof:
            start = time.perf_counter()
            model.aggregate(self.images)
            self.sync()
            total = 1000 * (time.perf_counter() - start)
        parts = {column: 0.0 for column in COMPONENTS.values()}
        for event in prof.key_averages():
            if event.key in COMPONENTS:
                parts[COMPONENTS[event.key]] = event.cpu_time_total / 1000
        return {**parts, "other": total - sum(parts.values()), "total": total}


def measure_time(spec: dict) -> dict:
    """Every variant in one process, runs alternating, so that all see the same machine load."""
    case = _Case(spec)
    variants = [UNMERGED, *spec["modes"]]
    models = {name: case.model(name) for name in variants}
    with torch.no_grad(), case.autocast():
        for model in models.values():  # warm-up: kernels, allocator
            model.aggregate(case.images[:, :2])
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    errors: dict[str, str] = {}
    for _ in range(spec["repeats"]):
        for name, model in models.items():
            if name in errors:
                continue
            try:
                wall, used = case.timed_aggregate(model)
                times[name].append(wall)
                cpu[name].append(used)
            except (TomerayError, torch.OutOfMemoryError) as e:
                errors[name] = f"{type(e).__name__}: {e}"
                if case.cuda:
                    torch.cuda.empty_cache()
    out = {}
    for name in variants:
        if name in errors:
            out[name] = {"error": errors[name]}
            continue
        out[name] = {"ms": 1000 * statistics.median(times[name]), "ms_runs": [1000 * t for t in times[name]]}
        if name != UNMERGED and UNMERGED not in errors:
            ratios = [u / m for u, m in zip(times[UNMERGED], times[name])]
            out[name]["speedup"] = statistics.median(ratios)
            out[name]["speedup_best"] = min(times[UNMERGED]) / min(times[name])  # least disturbed runs
            # CPU time is what the process computed, however busy the machine (CPU device only)
            out[name]["cpu_speedup"] = statistics.median(u / m for u, m in zip(cpu[UNMERGED], cpu[name]))
            if spec["components"]:
                out[name]["components_ms"] = case.components(models[name])
    return out


def measure_memory(spec: dict) -> dict:
    """One variant in a fresh process: peak memory of one aggregator call above the level before
    it, then the poses, depth and point maps of the heads (saved for the deviations)."""
    case = _Case(spec)
    model = case.model(spec["mode"])
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
            pose = model.camera_head(layers[model.arch.depth - 1].float())[-1]
            depth, _ = model.depth_head(layers, hw, patch_start_idx)
            points, _ = model.point_head(layers, hw, patch_start_idx)
    # Deviation statistics do not need every pixel of a 1000-view scene: keep at most ~16M per map.
    step = max(1, int(np.sqrt(depth[..., 0].numel() / 2**24)))
    np.savez(
        spec["maps"],
        pose=pose.float().cpu().numpy(),
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


def deviations(maps: dict, base: dict) -> dict:
    return {
        "pose_max_abs": float(np.abs(maps["pose"] - base["pose"]).max()),
        "depth_rel_err": _rel_err(maps["depth"], base["depth"]),
        "points_rel_err": _rel_err(maps["points"], base["points"]),
    }


def bench_views(args, device: str, views: int, modes: list[str], tmp: Path) -> list[dict]:
    frames = load_frames(args.video, views, args.width)
    image_file = tmp / "images.pt"
    torch.save(frames, image_file)
    spec = dict(
        arch=args.arch, weights=args.weights, device=device, threads=args.threads, ratio=args.ratio,
        start_block=args.start_block, repeats=args.repeats, images=str(image_file), modes=modes,
        components=args.components,
    )
    timing = _run_isolated(measure_time, spec)
    memory, maps = {}, {}
    for i, name in enumerate([UNMERGED, *modes]):
        path = tmp / f"maps_{i}.npz"
        memory[name] = _run_isolated(measure_memory, {**spec, "mode": name, "maps": str(path)})
        if "error" not in memory[name]:
            maps[name] = dict(np.load(path))
    base = {**timing.get(UNMERGED, timing), **memory[UNMERGED]}
    rows = []
    for name in modes:
        result = {**timing.get(name, timing), **memory[name]}
        options = merge_config(name, args.ratio, args.start_block).options()
        row = {"views": views, "mode": name, "options": options,
               "height": int(frames.shape[-2]), "width": int(frames.shape[-1]),
               "tokens": base.get("tokens"), "attended_tokens": result.get("attended_tokens"),
               "ms_unmerged": base.get("ms"), "ms_merged": result.get("ms"), "speedup": result.get("speedup"),
               "speedup_best": result.get("speedup_best"), "cpu_speedup": result.get("cpu_speedup"),
               "ms_runs_unmerged": base.get("ms_runs"), "ms_runs_merged": result.get("ms_runs"),
               "peak_mb_unmerged": base.get("peak_mb"), "peak_mb_merged": result.get("peak_mb"),
               "components_ms": result.get("components_ms"), "weights_id": base.get("weights_id")}
        for source in (base, result):
            if "error" in source:
                row.setdefault("error", source["error"])
        if name in maps and UNMERGED in maps:
            row["vs_unmerged"] = deviations(maps[name], maps[UNMERGED])
        if "reference" in maps and name != "reference" and name in maps:
            row["vs_reference"] = deviations(maps[name], maps["reference"])
        rows.append(row)
    return rows


def bench_fixture(args, modes: list[str]) -> list[dict]:
    """Every mode on the tiny parity fixture (4 real views, the fixture's weights): how far its
    poses, depth, points and last aggregated tokens move from the unmerged model and from
    ``reference`` (with these weights depth and points move little: compare the poses and tokens)."""
    from safetensors.torch import load_file

    root = Path(args.fixture)
    images = load_file(str(root / "vggt_tiny_io.safetensors"))["images"]
    weights = str(root / "vggt_tiny_state_dict.safetensors")
    outputs = {}
    for name in [UNMERGED, *modes]:
        off = name == UNMERGED
        merge = MergeConfig(enabled=False) if off else merge_config(name, args.ratio, args.start_block)
        model = create_vggt(VGGTModelConfig(arch="vggt-tiny", pretrained=weights, merge=merge))
        with torch.no_grad():
            out = model(images)
            tokens = model.aggregate(images)[0][model.arch.depth - 1]
        outputs[name] = {"pose": out["pose_enc"].numpy(), "depth": out["depth"].numpy(),
                         "points": out["world_points"].numpy(), "tokens": tokens.numpy()}

    def compare(a: dict, b: dict) -> dict:
        return {**deviations(a, b), "tokens_rel_err": _rel_err(a["tokens"], b["tokens"])}

    rows = []
    for name in modes:
        row = {"fixture": str(root), "views": 4, "mode": name,
               "options": merge_config(name, args.ratio, args.start_block).options(),
               "vs_unmerged": compare(outputs[name], outputs[UNMERGED])}
        if "reference" in outputs and name != "reference":
            row["vs_reference"] = compare(outputs[name], outputs["reference"])
        rows.append(row)
    print(f"# tiny parity fixture {root}: 4 views, deviation from the unmerged model and from reference")
    print(f"{'mode':<40} {'pose d':>8} {'depth e':>8} {'point e':>8} {'token e':>8} {'pose d ref':>10}")
    for row in rows:
        dev, ref = row["vs_unmerged"], row.get("vs_reference", {})
        print(f"{row['mode']:<40} {dev['pose_max_abs']:>8.2e} {dev['depth_rel_err']:>8.2e}"
              f" {dev['points_rel_err']:>8.2e} {dev['tokens_rel_err']:>8.2e}"
              f" {_fmt(ref.get('pose_max_abs'), '.2e', 10)}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    if device == "auto":
        device = "cpu"
    views_list = [int(v) for v in args.views.split(",") if v.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    try:
        for mode in modes:
            merge_config(mode, args.ratio, args.start_block)
    except ConfigError as e:
        raise SystemExit(f"bench_vggt: {e}") from None
    rows: list[dict] = []
    if args.fixture:
        rows = bench_fixture(args, modes)
        views_list = []
    with tempfile.TemporaryDirectory(prefix="bench_vggt_") as tmp:
        for views in views_list:
            new = bench_views(args, device, views, modes, Path(tmp))
            _print_rows(new, header=not rows, args=args, device=device)
            rows += new

    if args.json_path:
        report = {
            "benchmark": "vggt aggregator: FastVGGT merged vs unmerged global attention, per merge mode",
            "arch": args.arch,
            "weights": next((r["weights_id"] for r in rows if r.get("weights_id")), args.weights),
            "device": device,
            "precision": "bfloat16 autocast" if device.startswith("cuda") else "float32",
            "threads": args.threads,
            "frames": args.video,
            "repeats": args.repeats,
            "timing": "median of the repeats; speedup: median over repeats of unmerged/merged, same process",
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


def _fmt(value, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def _print_rows(rows: list[dict], *, header: bool, args, device: str) -> None:
    if header and rows:
        weights = rows[0].get("weights_id") or args.weights
        random = weights.startswith("random")
        random = " (RANDOM: timings are real, deviations only indicative)" if random else ""
        print(f"# VGGT aggregator, arch {args.arch}, weights {weights}{random}")
        print(f"# device {device}, {args.threads} threads, frames {args.video}, "
              f"images {rows[0]['height']}x{rows[0]['width']}, median of {args.repeats} runs")
        print(f"{'views':>5} {'mode':<24} {'tokens':>6} {'attend':>6} {'unmerged':>9} {'merged':>7}"
              f" {'speedup':>7} {'cpu':>6}"
              f" {'sim':>6} {'g/s':>5} {'attn':>6} {'other':>6} {'pose d':>8} {'depth e':>8} {'point e':>8}"
              f" {'d vs ref':>8} {'MB m':>6}")
    for row in rows:
        if "error" in row:
            print(f"{row['views']:>5} {row['mode']:<24} {row['error']}")
            continue
        parts = row.get("components_ms") or {}
        dev, ref = row.get("vs_unmerged", {}), row.get("vs_reference", {})
        print(f"{row['views']:>5} {row['mode']:<24} {row['tokens']:>6} {row['attended_tokens']:>6}"
              f" {row['ms_unmerged']:>9.0f} {row['ms_merged']:>7.0f} {row['speedup']:>6.2f}x"
              f" {_fmt(row.get('cpu_speedup'), '.2f', 5)}x"
              f" {_fmt(parts.get('similarity'), '.0f', 6)} {_fmt(parts.get('gather_scatter'), '.0f', 5)}"
              f" {_fmt(parts.get('attention'), '.0f', 6)} {_fmt(parts.get('other'), '.0f', 6)}"
              f" {_fmt(dev.get('pose_max_abs'), '.2e', 8)} {_fmt(dev.get('depth_rel_err'), '.2e', 8)}"
              f" {_fmt(dev.get('points_rel_err'), '.2e', 8)} {_fmt(ref.get('depth_rel_err'), '.2e', 8)}"
              f" {_fmt(row.get('peak_mb_merged'), '.0f', 6)}")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
