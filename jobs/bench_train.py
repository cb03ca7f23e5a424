"""Benchmark a TempMe training step against per-frame CLIP with LoRA (preset ``none``) on the same data.

One training step is what every Ray Train worker does per batch (``pipeline.training.loop``): both
towers forward with gradient, the symmetric InfoNCE loss, backward, gradient clipping and an AdamW
step on the trainable parts (LoRA in both towers; with ``tempme`` also the temporal embeddings). The
batch is real frames (12 per clip from the opencv-doc sample videos, as in ``bench_tempme``) with
synthetic captions; both presets train separate copies of the same weights in the same run, their
timed rounds interleaved so that load from other processes affects them alike.

Per preset: trainable parameters, median step time, clips/s, peak memory of one step (CUDA: the
allocator's peak; CPU: the peak of live tensor memory in torch's profiler) and the ratios to ``none``.

    python -m tomeray.jobs.bench_train [--arch ViT-B-32] [--batch 4] [--repeats 3] [--device auto] \
        [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tomeray.jobs.bench_tempme import SAMPLE_DATA, load_batch
from tomeray.models.tempme import VideoModelConfig, VideoTextModel, contrastive_loss, create_video_encoder
from tomeray.pipeline.core.atomic import atomic_write_json

PRESETS = ("none", "tempme")


class Trainer:
    """One preset's encoder, optimizer and training step (the recipe's optimizer settings)."""

    def __init__(self, arch: str, pretrained: str, preset: str, num_frames: int, device: str):
        self.encoder = create_video_encoder(VideoModelConfig(arch=arch, pretrained=pretrained, preset=preset,
                                                             num_frames=num_frames), device=device)
        self.params = list(self.encoder.trainable_parameters().values())
        self.model = VideoTextModel(self.encoder)
        self.optimizer = torch.optim.AdamW(self.params, lr=6e-4, weight_decay=0.2)

    def step(self, frames: torch.Tensor, tokens: torch.Tensor) -> float:
        video, text = self.model(frames, None, tokens)
        loss = contrastive_loss(video, text)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        if frames.is_cuda:
            torch.cuda.synchronize()
        return float(loss.detach())


def peak_mb(trainer: Trainer, frames: torch.Tensor, tokens: torch.Tensor) -> float:
    """Peak memory of one step, in MiB."""
    if frames.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        trainer.step(frames, tokens)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.step(frames, tokens)
    # allocations (+) and frees (-) in time order: their running sum is the live tensor memory
    events = sorted((e for e in prof.events() if e.cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def run(arch: str, pretrained: str, batch: int, num_frames: int, repeats: int, device: str) -> dict:
    trainers = {p: Trainer(arch, pretrained, p, num_frames, device) for p in PRESETS}
    first = trainers["none"].encoder
    frames = load_batch(SAMPLE_DATA, num_frames, first.image_size, first.mean, first.std, batch)
    frames = frames.to(first.device)
    captions = [f"clip {i}: people walk through a {c} scene" for i, c in
                zip(range(batch), ["red", "blue", "green", "grey"] * batch)]
    tokens = first.tokenize(captions, 32).to(first.device)
    times: dict[str, list[float]] = {p: [] for p in PRESETS}
    for round_ in range(repeats + 1):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.step(frames, tokens)
            if round_:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    memory = {name: peak_mb(t, frames, tokens) for name, t in trainers.items()}
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    rows = [{
        "preset": name,
        "trainable_params": sum(p.numel() for p in trainer.params),
        "step_ms_median": ms[name],
        "clips_per_s": batch / (ms[name] / 1e3),
        "peak_mb": memory[name],
        "speedup": ms["none"] / ms[name],
        "memory_ratio": memory[name] / memory["none"] if memory["none"] else float("nan"),
    } for name, trainer in trainers.items()]
    return {"arch": arch, "weights_id": first.weights_id, "device": str(first.device),
            "precision": first.precision, "batch": batch, "num_frames": num_frames,
            "threads": torch.get_num_threads(), "repeats": repeats, "rows": rows}


def print_table(result: dict) -> None:
    random = " (RANDOM weights: timing only)" if result["weights_id"].startswith("random-init") else ""
    print(f"{result['arch']}, weights {result['weights_id']}{random}; {result['device']} "
          f"{result['precision']}; batch {result['batch']} clips x {result['num_frames']} frames; "
          f"{result['threads']} threads")
    columns = [("preset", "{preset}"), ("trainable params", "{trainable_params:,}"),
               ("step ms (median)", "{step_ms_median:.0f}"), ("clips/s", "{clips_per_s:.2f}"),
               ("peak MiB", "{peak_mb:.0f}"), ("speedup", "{speedup:.2f}x"),
               ("memory ratio", "{memory_ratio:.2f}")]
    lines = [[name for name, _ in columns], ["---"] * len(columns)]
    lines += [[fmt.format(**r) for _, fmt in columns] for r in result["rows"]]
    print("\n".join("| " + " | ".join(cells) + " |" for cells in lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none", help="open_clip tag, checkpoint path or none")
    parser.add_argument("--batch", type=int, default=4, help="clips per step (e.g. 32 on a GPU)")
    parser.add_argument("--num-frames", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per preset (median)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (bf16 autocast on GPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--json", type=Path, help="write {'rows': [...]} here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    result = run(args.arch, args.pretrained, args.batch, args.num_frames, args.repeats, args.device)
    print_table(result)
    if args.json:
        print(f"wrote {atomic_write_json(args.json, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
