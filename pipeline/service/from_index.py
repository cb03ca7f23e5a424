"""``tomeray reconstruct --from-index IDX --out DIR [filters] [key=value ...]``: every row of a video index
(or those the filters select, as ``/api/search`` filters them) becomes a scene of its time window,
named by its id and times like the service's hit reconstructions, and reconstructed by the
reconstruction job (resumable: a rerun skips finished scenes). Without ``--from-index`` the command
is ``pipeline.reconstruction.cli``."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from tomeray.models.errors import InputError
from tomeray.pipeline.core.config import split_overrides
from tomeray.pipeline.core.runner import run_command
from tomeray.pipeline.reconstruction import cli as reconstruct_cli
from tomeray.pipeline.service.hit_jobs import hit_scene_name
from tomeray.pipeline.video.filters import SearchFilters, matching_ids

__all__ = ["index_scenes", "main"]

FILTERS = ("path_prefix", "path_glob", "duration_min", "duration_max", "time_min", "time_max")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tomeray reconstruct --from-index",
        description="Reconstruct the clip of every row of a video index (or of the rows the filters "
                    "select) as one scene each.",
        epilog="Example:\n  tomeray reconstruct --from-index idx --out recon --path-glob '*.mp4' "
               "video.num_frames=8",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-index", required=True, metavar="IDX", help="index made by 'tomeray index'")
    parser.add_argument("--out", required=True, help="output directory (created, or resumed)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    for name in FILTERS:
        kind = str if name.startswith("path_") else float
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help=f"the search filter {name}")
    parser.add_argument("items", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser


def index_scenes(index_dir: str | Path, filters: SearchFilters) -> list[dict]:
    """Scene specs of the index rows ``filters`` selects: each row's video, in its time window."""
    from tomeray.pipeline.video.layout import IndexLayout
    from tomeray.pipeline.video.metadata import MetadataTable

    layout = IndexLayout(index_dir)
    manifest = layout.read_manifest()
    table = layout.read_embeddings(["video_id", "path", "start_s", "end_s", "duration_s"])
    if filters:
        root = (manifest.get("ids") or {}).get("root")
        keep = np.isin(table["video_id"].to_numpy(), matching_ids(MetadataTable.open(layout), filters, root))
        table = table.filter(keep)
    specs = []
    for row in table.to_pylist():
        start = row["start_s"] if row["start_s"] is not None and math.isfinite(row["start_s"]) else 0.0
        end = row["end_s"] if row["end_s"] is not None and math.isfinite(row["end_s"]) else row["duration_s"]
        if end is None or not math.isfinite(end):
            end = float("inf")
        name = hit_scene_name(row["video_id"], start, end)
        specs.append({"scene": name, "video": row["path"], "window_s": [start, end],
                      "root": str(Path(row["path"]).parent), "input": str(index_dir)})
    return sorted(specs, key=lambda s: s["scene"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--from-index" not in argv and not any(a.startswith("--from-index=") for a in argv):
        return reconstruct_cli.main(argv)
    args = _parser().parse_intermixed_args(argv)
    inputs, overrides = split_overrides(args.items)

    def body() -> int:
        from tomeray.pipeline.reconstruction.job import run_reconstruct

        if inputs:
            raise InputError(f"--from-index takes no other inputs; got {inputs[:3]}")
        filters = SearchFilters(**{name: getattr(args, name) for name in FILTERS})
        specs = index_scenes(args.from_index, filters)
        if not specs:
            raise InputError(f"no row of '{args.from_index}' matches the filters")
        summary = run_reconstruct([], args.out, overrides, args.address, scenes=specs)
        reconstruct_cli.print_run(summary)
        return summary.exit_code

    return run_command("tomeray reconstruct", body, "interrupted; finished scenes are kept, rerun to resume")


if __name__ == "__main__":
    sys.exit(main())
