"""Long-scene alignment and bundle adjustment against ground truth that needs no model weights.

    python -m tomeray.jobs.bench_alignment [--views 100,500,2000] [--json PATH]

Rows (``stage``):

* ``alignment``: synthetic corridors (``jobs/alignment_data.py``: every model call imitated by the
  true outputs in a random frame and scale of its own, noise, 5 % outlier points, views that share
  nothing with the rest of their call placed grossly wrong) run in ``views.max_views`` = ``chunk``
  views per call under each policy: ``split`` (chunks anchored on view 0) and ``chunks``
  (overlapping chunks chained by robust Sim(3) fits). ``ate_rel``: RMSE of the camera centres after
  one global Sim(3), over the trajectory length; ``rpe_deg``: mean rotation error between
  consecutive views; ``seconds``: the alignment alone (not the imitation); ``ate_vs_split``.
* ``refine`` (synthetic cameras and points, 1 px noise, poses perturbed by 3 degrees / 0.2 m):
  ``none`` is the perturbed start, ``ba`` after bundle adjustment: ``reproj_px_before`` /
  ``reproj_px_after`` (mean), ``pose_err_mm`` / ``pose_err_deg`` (largest, after the gauge).
* ``chessboard``: the opencv-doc ``left*.jpg`` views, reference poses by PnP on the known board with
  ``left_intrinsics.yml``, the same two rows started 5 degrees / 20 mm off, corners as tracks.
* ``share`` (``--share-views N``): one N-view scene of opencv-doc photos through the reconstruction
  actor with ``refine.ba=true`` (SIFT tracks): bundle adjustment (tracks + solve) time over the
  model time. Random weights of ``--arch``: a timing, not a reconstruction.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tomeray.jobs.alignment_data import (
    bundle_scene,
    chessboard_reference,
    chunk_outputs,
    corridor,
    perturb,
    pose_errors,
)
from tomeray.models.bundle_adjustment import Tracks, bundle_adjust, reprojection_errors
from tomeray.models.chunks import align_chunks, overlapping_chunks
from tomeray.models.pose import umeyama
from tomeray.pipeline.core.atomic import atomic_write_json
from tomeray.pipeline.reconstruction.evaluation import pose_metrics

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")


def alignment_rows(views: int, chunk: int, overlap: int, seed: int = 0) -> list[dict]:
    from tomeray.operators.scene_reconstruct import SceneReconstructor, split_chunks

    scene = corridor(views, seed=seed)
    rows = []
    for policy in ("split", "chunks"):
        chunks = (overlapping_chunks(views, chunk, overlap) if policy == "chunks"
                  else split_chunks(views, chunk))
        outputs = chunk_outputs(scene, chunks, seed=seed + 1, outliers=0.05)
        started = time.perf_counter()
        if policy == "chunks":
            merged, _ = align_chunks(outputs, chunks)
        else:
            merged = SceneReconstructor._assemble(outputs, chunks)
        seconds = time.perf_counter() - started
        metrics, _ = pose_metrics(merged["extrinsic"], scene.extrinsic)
        rows.append({"stage": "alignment", "policy": policy, "views": views, "chunks": len(chunks),
                     "chunk": chunk, "overlap": overlap if policy == "chunks" else 1,
                     "ate_rel": metrics["ate_rmse"] / scene.length, "rpe_deg": metrics["rpe_rot_mean_deg"],
                     "seconds": round(seconds, 4)})
    rows[1]["ate_vs_split"] = rows[1]["ate_rel"] / rows[0]["ate_rel"]
    return rows


def refine_pair(stage: str, start: np.ndarray, ref: np.ndarray, K: np.ndarray, tracks: Tracks, width: int,
                height: int, to_mm: float, true_points: np.ndarray | None = None) -> list[dict]:
    """Rows ``none`` (the start) and ``ba`` (after bundle adjustment) against the reference poses."""
    started = time.perf_counter()
    result = bundle_adjust(start, K, [width] * len(K), [height] * len(K), tracks)
    seconds = time.perf_counter() - started
    r = result.record
    gauge = umeyama(result.xyz, true_points) if true_points is not None else None
    rows = []
    for refine, E, px, sim in (("none", start, r["reproj_px_before"], None), ("ba", result.extrinsic,
                                                                              r["reproj_px_after"], gauge)):
        dist, rot = pose_errors(E, ref, sim)
        rows.append({"stage": stage, "refine": refine, "views": len(K), "tracks": r["tracks"],
                     "observations": r["observations"], "reproj_px_before": r["reproj_px_before"],
                     "reproj_px_after": px, "pose_err_mm": dist * to_mm, "pose_err_deg": rot,
                     "iterations": r["iterations"] if refine == "ba" else 0,
                     "seconds": round(seconds, 4) if refine == "ba" else 0.0})
    return rows


def synthetic_refine_rows(views: int, points: int) -> list[dict]:
    scene = bundle_scene(views=views, points=points, noise_px=1.0, seed=1)  # units: metres
    start = perturb(scene.extrinsic, 3.0, 0.2, seed=2)
    tracks = Tracks(scene.view, scene.track, scene.xy)
    rows = refine_pair("refine", start, scene.extrinsic, scene.intrinsic, tracks, scene.width, scene.height,
                       1000.0, scene.points)
    errors = reprojection_errors(tracks, scene.points, scene.extrinsic, scene.intrinsic)
    for row in rows:
        row["noise_px"] = round(float(errors.mean()), 4)  # the mean error of the true cameras
    return rows


def chessboard_rows(data: Path) -> list[dict]:
    K, ref, corners = chessboard_reference(data)
    V = len(ref)
    tracks = Tracks(np.repeat(np.arange(V), 54), np.tile(np.arange(54), V), corners.reshape(-1, 2))
    return refine_pair("chessboard", perturb(ref, 5.0, 20.0, seed=0), ref, np.repeat(K[None], V, 0), tracks,
                       640, 480, 1.0)


def share_row(views: int, arch: str, data: Path) -> dict:
    from tomeray.operators.scene_load import load_scene_views
    from tomeray.operators.scene_reconstruct import SceneReconstructor

    photos = sorted(str(p) for p in data.glob("left*.jpg")) + sorted(str(p) for p in data.glob("right*.jpg"))
    photos = (photos * (views // len(photos) + 1))[:views]
    spec = {"scene": "share", "images": photos, "frame_idx": list(range(views))}
    scene = load_scene_views(spec, max_views=0)
    rec = SceneReconstructor({"arch": arch, "pretrained": "none"}, {"max_points": 0}, max_views=views,
                             policy="chunks", refine={"ba": True, "tracks": "features", "match_window": 8})
    _, stats = rec.reconstruct(scene["images"], scene["scale_xy"], scene["offset_xy"], scene["content_hw"],
                               scene["orig_hw"], scene["image_path"])
    refine = stats["refine"]
    ba_seconds = refine.get("tracks_seconds", 0.0) + refine.get("seconds", 0.0)
    return {"stage": "share", "views": views, "arch": arch, "weights": "random-init",
            "model_seconds": stats["model_seconds"], "ba_seconds": round(ba_seconds, 3),
            "ba_share": ba_seconds / stats["model_seconds"], "tracks": refine.get("tracks", 0),
            "applied": refine["applied"]}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'policy':<7} {'views':>6} {'chunks':>6} {'ate_rel':>9} {'rpe_deg':>8} {'seconds':>8} "
             f"{'x split':>8}"]
    for r in (r for r in rows if r["stage"] == "alignment"):
        ratio = f"{r['ate_vs_split']:>8.4f}" if "ate_vs_split" in r else f"{'':>8}"
        lines.append(f"{r['policy']:<7} {r['views']:>6} {r['chunks']:>6} {r['ate_rel']:>9.5f} "
                     f"{r['rpe_deg']:>8.3f} {r['seconds']:>8.3f} {ratio}")
    lines.append("")
    lines.append(f"{'stage':<11} {'refine':<6} {'views':>5} {'tracks':>6} {'reproj_px_before':>16} "
                 f"{'reproj_px_after':>15} {'pose_err_mm':>11} {'pose_err_deg':>12} {'seconds':>8}")
    for r in (r for r in rows if r["stage"] in ("refine", "chessboard")):
        lines.append(f"{r['stage']:<11} {r['refine']:<6} {r['views']:>5} {r['tracks']:>6} "
                     f"{r['reproj_px_before']:>16.3f} {r['reproj_px_after']:>15.3f} "
                     f"{r['pose_err_mm']:>11.3f} {r['pose_err_deg']:>12.3f} {r['seconds']:>8.3f}")
    for r in (r for r in rows if r["stage"] == "share"):
        lines.append(f"\nbundle adjustment at {r['views']} views ({r['arch']}, RANDOM weights, SIFT "
                     f"tracks): {r['ba_seconds']:.2f} s = {r['ba_share']:.1%} of the model's "
                     f"{r['model_seconds']:.2f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", default="100,500,2000", help="trajectory lengths (comma-separated)")
    parser.add_argument("--chunk", type=int, default=60, help="views per model call (VGGT-Long: 60)")
    parser.add_argument("--overlap", type=int, default=30, help="views shared by neighbouring chunks")
    parser.add_argument("--ba-views", type=int, default=12, help="synthetic bundle adjustment: views")
    parser.add_argument("--ba-points", type=int, default=400, help="synthetic bundle adjustment: points")
    parser.add_argument("--data", type=Path, default=OPENCV_DATA, help="opencv-doc sample data")
    parser.add_argument("--share-views", type=int, default=0, help="also time BA vs the model on N views")
    parser.add_argument("--arch", default="vggt-tiny", help="model of the --share-views row")
    parser.add_argument("--json", type=Path, default=None, help="write {'rows': [...]} to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for views in (int(v) for v in args.views.split(",") if v):
        rows += alignment_rows(views, args.chunk, args.overlap)
    rows += synthetic_refine_rows(args.ba_views, args.ba_points)
    rows += chessboard_rows(args.data)
    if args.share_views:
        rows.append(share_row(args.share_views, args.arch, args.data))
    print(format_table(rows))
    if args.json:
        atomic_write_json(args.json, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
