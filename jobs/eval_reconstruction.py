"""Evaluate a reconstruction against reference cameras and / or a reference point cloud.

    python -m tomeray.jobs.eval_reconstruction --pred recon --scene kitchen \\
        --ref-cameras gt/kitchen/sparse/0 --ref-points gt/kitchen.ply --json eval.json

``--pred``: a ``tomeray reconstruct`` output directory (with ``--scene`` when it holds several), a
COLMAP text model folder or a cameras Parquet file. ``--ref-cameras``: a COLMAP text model folder
or a cameras Parquet file; views are matched by image name. ``--ref-points``: a PLY file, a points
Parquet file or folder, or a COLMAP model (its points3D). The prediction is aligned to the
reference with a similarity (``--align sim3``, Umeyama on camera centres; ``se3`` without scale;
``none``), which also maps the predicted points; see :mod:`pipeline.evaluation` for every metric.
Prints a table; ``--json PATH`` writes the metrics.
"""

from __future__ import annotations

import argparse
import math
import sys

from tomeray.pipeline.core.atomic import atomic_write_json
from tomeray.pipeline.core.runner import run_command
from tomeray.pipeline.reconstruction.evaluation import evaluate


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tomeray.jobs.eval_reconstruction",
                                description=__doc__.split("\n")[0])
    p.add_argument("--pred", required=True,
                   help="reconstruction output dir, COLMAP text model or cameras .parquet")
    p.add_argument("--scene", default=None,
                   help="scene of --pred (and of Parquet references unless --ref-scene)")
    p.add_argument("--pred-points", default=None, help="predicted points, if not those of --pred")
    p.add_argument("--ref-cameras", default=None, help="reference COLMAP text model or cameras .parquet")
    p.add_argument("--ref-points", default=None, help="reference PLY, points .parquet, or COLMAP model")
    p.add_argument("--ref-scene", default=None, help="scene of Parquet references (default: --scene)")
    p.add_argument("--align", choices=("sim3", "se3", "none"), default="sim3")
    p.add_argument("--tau", type=float, default=None,
                   help="distance threshold for precision / recall / F-score")
    p.add_argument("--max-points", type=int, default=200_000, help="subsample larger clouds (seeded)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the metrics as JSON")
    return p


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def print_table(result: dict, file=None) -> None:
    file = file or sys.stdout
    rows = [("align", result["align"]), ("scale (pred -> ref)", result["alignment"]["scale"])]
    for section in ("pose", "points"):
        rows += [(f"{section}.{k}", v) for k, v in result.get(section, {}).items()]
    width = max(len(k) for k, _ in rows)
    print(f"{'metric'.ljust(width)}  value", file=file)
    for k, v in rows:
        print(f"{k.ljust(width)}  {_fmt(v)}", file=file)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        result = evaluate(args.pred, args.ref_cameras, args.ref_points, scene=args.scene,
                          ref_scene=args.ref_scene or args.scene, pred_points=args.pred_points,
                          align=args.align, tau=args.tau, max_points=args.max_points)
        print_table(result)
        if args.json:
            atomic_write_json(args.json, {"pred": args.pred, "scene": args.scene,
                                          "ref_cameras": args.ref_cameras, "ref_points": args.ref_points,
                                          **result})
        return 0

    return run_command(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
