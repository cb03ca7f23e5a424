"""Benchmark TempMe presets against the CLIP4Clip baseline (preset ``none``) on real video frames.

Input: 12 frames decoded from each opencv-doc sample video (vtest.avi, Megamind.avi, tree.avi;
the first repeated to make a batch of 4), sampled and preprocessed as at indexing time. Every
preset runs the same tower with the same weights (random init by default: no download needed;
timing and FLOPs do not depend on the values, cosines are only indicative).

Per preset: tokens per video after the last layer, GFLOPs per video
(``torch.utils.flop_counter.FlopCounterMode``; its CPU registry has no entry for
``scaled_dot_product_attention``, so the attention matmuls are added with torch's own SDPA
formula), median wall time of one batch, mean cosine of the video embeddings to ``none``, and
``gflops_ratio`` / ``speedup`` relative to ``none`` measured in the same run.

    python -m tomeray.jobs.bench_tempme [--arch ViT-B-32] [--pretrained none] [--repeats 5] [--threads 1] \
        [--device cpu|cuda] [--precision auto|fp32|bf16|fp16] [--json PATH]

On a GPU (``--device cuda``; precision ``auto`` is bf16 autocast there, ``models.device``) times are
taken after ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from tomeray.models.clip import load_clip
from tomeray.models.device import resolve_device, resolve_precision
from tomeray.models.frames import preprocess_frames, sample_frame_indices
from tomeray.models.tempme import PRESETS, TempMeEncoder
from tomeray.pipeline.core.atomic import atomic_write_json
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop

VIDEOS = ("vtest.avi", "Megamind.avi", "tree.avi")
SAMPLE_DATA = Path(os.environ.get("TOMERAY_SAMPLE_DATA", "/usr/share/doc/opencv-doc/examples/data"))


def load_batch(folder: Path, num_frames: int, image_size: int, mean, std, batch: int = 4) -> torch.Tensor:
    """(batch, T, 3, S, S) normalised frames: one clip per sample video, repeated cyclically."""
    from tomeray.operators.video_decode import load_decord

    decord = load_decord()

    clips = []
    for name in VIDEOS:
        reader = decord.VideoReader(str(folder / name), ctx=decord.cpu(0))
        idx = sample_frame_indices(len(reader), reader.get_avg_fps(), num_frames)
        clips.append(preprocess_frames(reader.get_batch(list(idx)).asnumpy(), image_size, mean, std))
    return torch.stack([clips[i % len(clips)] for i in range(batch)])


def count_gflops(encoder: TempMeEncoder, frames: torch.Tensor) -> float:
    sdpa = {torch.ops.aten.scaled_dot_product_attention.default: sdpa_flop}
    with FlopCounterMode(display=False, custom_mapping=sdpa) as counter:
        encoder.encode_video(frames)
    return counter.get_total_flops() / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(encoders: dict[str, TempMeEncoder], frames: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median wall time per preset; presets alternate within each round so that load from other
    processes on a shared machine affects them alike."""
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for round_ in range(repeats + 1):
        for name, encoder in encoders.items():
            _sync(frames.device)
            start = time.perf_counter()
            encoder.encode_video(frames)
            _sync(frames.device)
            if round_:  # round 0 warms up
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def run(arch: str, pretrained: str, presets: list[str], repeats: int, num_frames: int, batch: int,
        device: str = "cpu", precision: str = "auto") -> dict:
    where = resolve_device(device)
    precision = resolve_precision(precision, where)
    clip = load_clip(arch, pretrained, text=False)
    frames = load_batch(SAMPLE_DATA, num_frames, clip.image_size, clip.mean, clip.std, batch).to(where)
    names = ["none"] + [p for p in presets if p != "none"]
    encoders = {
        name: TempMeEncoder(clip.visual, name, num_frames=num_frames, arch=arch, weights_id=clip.weights_id,
                            mean=clip.mean, std=clip.std, precision=precision).to(where)
        for name in names
    }
    embeddings = {name: enc.encode_video(frames) for name, enc in encoders.items()}
    gflops = {name: count_gflops(enc, frames) / batch for name, enc in encoders.items()}
    ms = median_ms(encoders, frames, repeats)
    rows = []
    for name, encoder in encoders.items():
        last = encoder.plan[-1]
        rows.append({
            "preset": name,
            "tokens_last": last.groups * last.tokens,
            "gflops": gflops[name],
            "ms_median": ms[name],
            "cosine_to_none": float((embeddings[name] * embeddings["none"]).sum(-1).mean()),
            "gflops_ratio": gflops[name] / gflops["none"],
            "speedup": ms["none"] / ms[name],
        })
    return {"arch": arch, "weights_id": clip.weights_id, "num_frames": num_frames, "batch": batch,
            "threads": torch.get_num_threads(), "repeats": repeats, "device": str(where),
            "precision": precision, "rows": rows}


def print_table(result: dict) -> None:
    random = result["weights_id"].startswith("random-init")
    print(f"{result['arch']}, weights {result['weights_id']}"
          f"{' (RANDOM weights: cosines are indicative only)' if random else ''}; "
          f"batch {result['batch']} videos x {result['num_frames']} frames; {result['threads']} threads; "
          f"{result['device']} {result['precision']}")
    header = ("preset", "tokens_last", "GFLOPs/video", "ms/batch (median)", "cos to none", "gflops_ratio",
              "speedup")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in result["rows"]:
        print(f"| {r['preset']} | {r['tokens_last']} | {r['gflops']:.2f} | {r['ms_median']:.1f} | "
              f"{r['cosine_to_none']:.4f} | {r['gflops_ratio']:.3f} | {r['speedup']:.2f}x |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none", help="open_clip tag, checkpoint path or none")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per preset (median)")
    parser.add_argument("--num-frames", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 keeps timings stable on a shared machine (oversubscribed "
                             "OpenMP threads stall on small merge ops)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--precision", default="auto", help="auto (fp32 CPU, bf16 GPU), fp32, bf16, fp16")
    parser.add_argument("--json", type=Path, help="write {'rows': [...]} here")
    return parser.parse_args(sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    torch.set_num_threads(args.threads)
    result = run(args.arch, args.pretrained, args.presets, args.repeats, args.num_frames, args.batch,
                 args.device, args.precision)
    print_table(result)
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
