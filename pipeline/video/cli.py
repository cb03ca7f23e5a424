"""``tomeray index`` (and ``python -m tomeray.jobs.index_videos``): arguments, summary, exit status."""

from __future__ import annotations

from tomeray.models.errors import InputError
from tomeray.pipeline.core.runner import job_parser, print_report, run_job_command
from tomeray.pipeline.video.job import IndexSummary, run_index

__all__ = ["main"]


def _parser():
    parser = job_parser(
        "tomeray index",
        "Embed videos into a FAISS + Parquet index with the TempMe encoder on Ray (resumable: a rerun "
        "indexes only what is missing).",
        "Examples:\n"
        "  tomeray index videos/ --out idx model.pretrained=none\n"
        "  tomeray index 'clips/**/*.mp4' list.csv --out idx sampling.segment_s=10\n"
        "  tomeray index --merge idx_a idx_b --out idx_all\n"
        "Exit status: 0 all inputs indexed, 1 some inputs failed (see the errors table),\n"
        "2 nothing done (bad arguments, config, weights, incompatible index), 130 interrupted.",
        "video files, directories (recursive), globs, or .txt/.csv/.parquet lists of paths; and config "
        "overrides such as model.pretrained=none (see 'tomeray config index')",
        "index directory (created, or extended when it exists)")
    parser.add_argument("--merge", nargs="+", metavar="INDEX", default=None,
                        help="merge these index directories into --out instead of indexing videos")
    return parser


def print_summary(s: IndexSummary, merged: bool = False) -> None:
    if merged:
        lines = [f"merged: {s.rows} new rows from {s.indexed} videos, {s.skipped} duplicate rows skipped "
                 f"-> {s.out}"]
    else:
        lines = [f"indexed {s.indexed} videos ({s.rows} rows), skipped {s.skipped} already indexed, "
                 f"failed {s.failed} -> {s.out}",
                 f"time {s.seconds:.1f} s (decode + embed pipeline {s.pipeline_s:.1f} s), "
                 f"{s.videos_per_s:.2f} videos/s"]
        if s.costs:
            c = s.costs
            lines.append(f"first embedding {s.first_embedding_s:.1f} s after the start; efficiency "
                         f"{c['efficiency']:.2f} (stage work / {c['cores']:g} cores x {c['seconds']:.1f} s; "
                         f"bound {c['bound_per_s']:.2f} videos/s; run record runs/{s.run_id}.json)")
    lines.append(f"index now holds {s.total_rows} rows from {s.total_videos} videos")
    if s.faiss.get("build"):
        b = s.faiss["build"]
        why = f": {b['reason']}" if b.get("reason") else ""
        lines.append(f"FAISS {s.faiss['factory']}: {b['mode']}{why}; {b['added']} vectors added, "
                     f"{b['removed']} removed, {s.faiss['ntotal']} in all "
                     f"(trained on {s.faiss['trained_on']})")
    if tuning := s.faiss.get("tuning"):
        lines.append(tuning_line(tuning))
    if s.adapter:
        lines.append(s.adapter)
    print_report(lines, s.weights_id, "not meaningful for retrieval", s.failures, f"{s.out}/errors")


def tuning_line(tuning: dict) -> str:
    """The summary's line on the tuned search settings (a WARNING when the target is missed)."""
    if tuning.get("exact"):
        return f"FAISS search: exact (recall@10 1.0, target {tuning['target_recall']:g})"
    from tomeray.pipeline.video.faiss_tune import settings_text

    search = settings_text(tuning.get("search", {}))
    lower = tuning.get("recall_at_10_lower")  # (absent from records written before it was kept)
    bound = f", at least {lower:.3f} at {tuning['confidence']:.0%} confidence," if lower is not None else ""
    line = (f"FAISS search tuned: {search}: recall@10 {tuning['recall_at_10']:.3f}{bound} on "
            f"{tuning['queries']} held-out rows (target {tuning['target_recall']:g}), "
            f"{tuning['ms_per_query']:.2f} ms/query")
    return line if tuning.get("met") else f"WARNING: {tuning['warning']}\n{line}"


def _run(args, inputs: list[str], overrides: list[str]) -> int:
    if args.merge is None:
        if not inputs:
            raise InputError("no inputs given: pass video files, directories, globs or list files")
        summary = run_index(inputs, args.out, overrides, args.address)
        print_summary(summary)
        return summary.exit_code
    if inputs:
        raise InputError(f"--merge takes index directories only; unexpected inputs: {inputs}")
    from tomeray.pipeline.video.merge import merge_indexes

    print_summary(merge_indexes(args.merge, args.out, overrides), merged=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job_command(_parser(), argv, _run, "interrupted; completed shards are kept, rerun to resume")
