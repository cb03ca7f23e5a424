"""``tomeray eval-retrieval DATA [key=value ...] [--json F]`` (and
``python -m tomeray.jobs.eval_retrieval``)."""

from __future__ import annotations

import argparse
import sys

from tomeray.models.errors import InputError
from tomeray.pipeline.core.atomic import atomic_write_json
from tomeray.pipeline.core.runner import command_parser, print_errors, run_job_command, weights_line
from tomeray.pipeline.training.evaluation import EvalResult, run_eval_retrieval
from tomeray.pipeline.video.layout import describe_adapter

__all__ = ["format_metrics", "main"]

COLUMNS = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR")


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "tomeray eval-retrieval",
        "Text-to-video and video-to-text retrieval metrics (R@1/5/10/50, median and mean rank) "
        "of the TempMe encoder, with or without a trained adapter, on captioned clips.",
        "Examples:\n"
        "  tomeray eval-retrieval /data/msrvtt model.adapter=ft/adapter.safetensors --json m.json\n"
        "  tomeray eval-retrieval pairs.csv eval.split=val model.pretrained=openai\n"
        "Exit status: 0 done, 1 done but some clips could not be used (listed), 2 nothing done.",
        "DATA|KEY=VALUE",
        "the data (a path,caption table or an MSR-VTT folder) and config overrides "
        "(see 'tomeray config eval-retrieval')")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the metrics to FILE as JSON")
    return parser


def format_metrics(metrics: dict) -> str:
    lines = [f"{'':<4}" + "".join(f"{c:>8}" for c in COLUMNS)]
    for direction in ("t2v", "v2t"):
        lines.append(f"{direction:<4}" + "".join(f"{metrics[direction][c]:>8.2f}" for c in COLUMNS))
    return "\n".join(lines)


def print_result(r: EvalResult) -> None:
    m = r.metrics
    print(f"retrieval on {m['n_videos']} clips and {m['n_captions']} captions ({r.source}, split {r.split}), "
          f"{r.seconds:.1f} s")
    print(format_metrics(m))
    print(weights_line(r.weights_id, "the metrics are not meaningful"))
    print(describe_adapter(r.adapter, r.adapter and r.adapter["path"]))
    print_errors(r.failures, "--json")


def _run(args, inputs: list[str], overrides: list[str]) -> int:
    if len(inputs) != 1:
        raise InputError(f"give one data source (a table or an MSR-VTT folder); got {len(inputs)}: {inputs}")
    result = run_eval_retrieval(inputs[0], overrides, args.address)
    print_result(result)
    if args.json:
        atomic_write_json(args.json, result.to_json())
        print(f"metrics written to {args.json}")
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    return run_job_command(_parser(), argv, _run, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
