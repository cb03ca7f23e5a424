"""``tomeray search INDEX QUERY [-k N] [--json] [key=value ...]``: the command line of
:class:`~tomeray.pipeline.video.search.VideoSearcher`."""

from __future__ import annotations

import argparse
import json
import math
import sys

from tomeray.models.errors import InputError
from tomeray.pipeline.core.config import load_config, split_overrides
from tomeray.pipeline.core.runner import run_command
from tomeray.pipeline.video.config import SearchConfig
from tomeray.pipeline.video.layout import adapter_line
from tomeray.pipeline.video.search import SearchResult, VideoSearcher, check_k, is_video_query

__all__ = ["format_results", "format_time", "main"]


def format_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}:{secs:04.1f}"


def format_results(results: list[SearchResult]) -> str:
    header = f"{'rank':>4}  {'score':>7}  {'time range':<15}  {'duration':>9}  path"
    lines = [header, "-" * len(header)]
    for r in results:
        span = f"{format_time(r.start_s)}-{format_time(r.end_s)}"
        duration = f"{r.duration_s:.1f} s" if math.isfinite(r.duration_s) else "?"
        lines.append(f"{r.rank:>4}  {r.score:>7.4f}  {span:<15}  {duration:>9}  {r.path}")
    if not results:
        lines.append("(no results: the index is empty)")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tomeray search",
        description="Search a video index with a text query, or with a video file for similar videos.",
        epilog="Examples:\n"
               "  tomeray search idx \"people walking\" -k 5\n"
               "  tomeray search idx clip.mp4 --json inference.device=cpu",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index_dir", help="index directory written by 'tomeray index'")
    parser.add_argument("query", help="text query, or the path of a video file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. inference.device=cpu (see 'tomeray config search')")
    parser.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists to probe (recall vs speed)")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW search depth (recall vs speed)")
    parser.add_argument("--mmap", action="store_true", default=None,
                        help="memory-map the FAISS index instead of reading it (default: when it is large)")
    return parser


def _print(searcher: VideoSearcher, query: str, kind: str, results: list[SearchResult],
           as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "index": str(searcher.layout.root), "query": query, "query_type": kind,
            "weights_id": searcher.weights_id, "random_weights": searcher.random_weights,
            "adapter": searcher.manifest["model"].get("adapter"), "faiss": searcher.search_settings(),
            "results": [r.to_dict() for r in results],
        }, indent=2))
        return
    factory = searcher.manifest.get("faiss_factory") or "?"
    print(f"index:   {searcher.layout.root} ({len(searcher)} vectors, {factory})")
    print(f"weights: {searcher.weights_id}" + (
        "  (RANDOM weights: scores and rankings are not meaningful)" if searcher.random_weights else ""))
    print(adapter_line(searcher.manifest, searcher.model_config.adapter))
    print(f"query:   {query!r} ({kind})")
    print(format_results(results))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    rest, overrides = split_overrides(args.overrides)

    def body() -> int:
        if rest:
            raise InputError(f"unexpected arguments {rest}: overrides are section.key=value")
        if not args.query.strip():
            raise InputError("the query is empty: give a text query or the path of a video file")
        check_k(args.k)
        cfg = load_config(SearchConfig, "search", overrides)
        model = {k: v for k, v in vars(cfg.model).items() if v is not None}
        searcher = VideoSearcher(args.index_dir, cfg.inference.device, precision=cfg.inference.precision,
                                 nprobe=args.nprobe, ef_search=args.ef_search, mmap=args.mmap,
                                 text_precision=cfg.search.text_precision, **model)
        kind = "video" if is_video_query(args.query) else "text"
        _print(searcher, args.query, kind, searcher.search(args.query, k=args.k), args.json)
        return 0

    return run_command("tomeray search", body)


if __name__ == "__main__":
    sys.exit(main())
