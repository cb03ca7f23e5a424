"""``tomeray reconstruct`` (and ``python -m tomeray.jobs.reconstruct_scenes``): arguments, summaries,
exit status."""

from __future__ import annotations

import sys
from pathlib import Path

from tomeray.models.errors import InputError
from tomeray.pipeline.core.runner import job_parser, print_errors, print_report, run_job_command, weights_line
from tomeray.pipeline.reconstruction.job import ReconSummary, run_reconstruct
from tomeray.pipeline.reconstruction.layout import ReconLayout

__all__ = ["main", "print_output_summary", "print_run"]


def _parser():
    parser = job_parser(
        "tomeray reconstruct",
        "Reconstruct cameras and point clouds from image folders (one folder per scene) or videos with "
        "VGGT + FastVGGT merging on Ray (resumable: a rerun does only what is missing).",
        "Examples:\n"
        "  tomeray reconstruct scenes/ --out recon\n"
        "  tomeray reconstruct scenes/ --out recon model.arch=vggt-tiny model.pretrained=none\n"
        "  tomeray reconstruct list.csv --out recon views.policy=split export.ply=true\n"
        "  tomeray reconstruct --summary recon\n"
        "Exit status: 0 all scenes reconstructed, 1 some scenes or images failed (errors.parquet),\n"
        "2 nothing done (bad arguments, config, weights, other settings), 130 interrupted.",
        "scenes folders, videos or .csv/.parquet lists (scene,image_path); and config overrides such as "
        "model.pretrained=none (see 'tomeray config reconstruct')",
        "output directory (created, or resumed when it exists)", out_required=False)
    parser.add_argument("--summary", metavar="DIR", default=None,
                        help="print the scenes, views, points and errors of an output directory and exit")
    return parser


def print_output_summary(root: str | Path, file=None) -> int:
    """Per-scene table of an output directory (finished and failed scenes, errors). Returns the number
    of current error rows."""
    file = file or sys.stdout
    layout = ReconLayout(root)
    manifest = layout.read_manifest()
    records = layout.finished_scenes()
    errors = layout.read_errors().to_pylist()
    by_scene: dict[str, int] = {}
    for e in errors:
        by_scene[e["item"]] = by_scene.get(e["item"], 0) + 1
    failed = sorted(s for s in layout.scenes_with_errors() if s not in records)
    weights = weights_line(str(manifest.get("weights_id", "?")), "not a real reconstruction")
    print(f"{layout.root}: {len(records)} scene(s) reconstructed, {len(failed)} failed; {weights}", file=file)
    rows = [(s, str(r.get("views", 0)), str(r.get("skipped_views", 0)), str(r.get("points", 0)),
             str(by_scene.get(s, 0)), "ok") for s, r in sorted(records.items())]
    rows += [(s, "0", "-", "0", str(by_scene[s]), "failed") for s in failed]
    header = ("scene", "views", "skipped", "points", "errors", "status")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)), file=file)
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)), file=file)
    print_errors(errors, str(layout.errors_path), limit=50, file=file)
    return len(errors)


def print_run(s: ReconSummary) -> None:
    print_report([f"reconstructed {s.reconstructed} scene(s) ({s.views} views, {s.points} points), skipped "
                  f"{s.skipped} already finished, failed {s.failed} -> {s.out}",
                  f"time {s.seconds:.1f} s (load + model pipeline {s.pipeline_s:.1f} s)"],
                 s.weights_id, "not a real reconstruction", s.failures, f"{s.out}/errors.parquet")


def _run(args, inputs: list[str], overrides: list[str]) -> int:
    if args.summary is not None:
        if inputs or overrides or args.out:
            raise InputError("--summary takes an output directory only")
        print_output_summary(args.summary)
        return 0
    if not args.out:
        raise InputError("--out is required: the output directory")
    summary = run_reconstruct(inputs, args.out, overrides, args.address)
    print_run(summary)
    return summary.exit_code


def main(argv: list[str] | None = None) -> int:
    return run_job_command(_parser(), argv, _run, "interrupted; finished scenes are kept, rerun to resume")
