"""How every ``tomeray`` command ends: it owns stderr for errors and the exit status. Also the
pieces every job's command line shares (its arguments, the weights line, the error lines).

* 0: done; 1: done, but some inputs failed (listed in the output's error table);
* 2: nothing done: a bad argument, config, input, weights or output (one ``prog: error: ...`` line
  on stderr, never a traceback; argparse's own usage errors exit 2 as well);
* 130: interrupted (Ctrl-C); what was finished is kept, and a rerun resumes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tomeray.models.errors import TomerayError, one_line
from tomeray.pipeline.core.config import split_overrides

__all__ = ["EXIT_FAILED_INPUTS", "EXIT_INTERRUPTED", "EXIT_NOTHING_DONE", "EXIT_OK", "command_parser",
           "job_parser", "print_errors", "print_report", "run_command", "run_job_command", "weights_line"]

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_NOTHING_DONE, EXIT_INTERRUPTED = 0, 1, 2, 130


def run_command(prog: str, body: Callable[[], int | None],
                interrupted: str = "interrupted; what finished is kept, rerun to resume") -> int:
    """Run ``body`` (which prints its own results and returns 0 or 1) and turn errors into exit codes."""
    try:
        return int(body() or EXIT_OK)
    except TomerayError as e:
        print(f"{prog}: error: {one_line(e, limit=2000)}", file=sys.stderr)
        return EXIT_NOTHING_DONE
    except OSError as e:  # a file system problem outside tomeray's checks (permissions, disk full)
        print(f"{prog}: error: {one_line(e, limit=2000)}", file=sys.stderr)
        return EXIT_NOTHING_DONE
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED


# ------------------------------------------------------------------------------- job commands


def command_parser(prog: str, description: str, epilog: str, items_metavar: str,
                   items_help: str) -> argparse.ArgumentParser:
    """A command on Ray whose positional ``items`` mix its inputs with ``section.key=value``
    overrides (``split_overrides`` tells them apart), with its examples kept as written, and the Ray
    cluster it runs on."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="*", metavar=items_metavar, help=items_help)
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    return parser


def job_parser(prog: str, description: str, epilog: str, items_help: str, out_help: str,
               out_required: bool = True) -> argparse.ArgumentParser:
    """The arguments every batch job takes: inputs mixed with overrides, the output directory and
    the Ray cluster. Commands add their own options."""
    parser = command_parser(prog, description, epilog, "INPUT|KEY=VALUE", items_help)
    parser.add_argument("--out", required=out_required, help=out_help)
    return parser


def run_job_command(parser: argparse.ArgumentParser, argv: list[str] | None,
                    body: Callable[[argparse.Namespace, list[str], list[str]], int], interrupted: str) -> int:
    """Parse a job command line and run ``body(args, inputs, overrides)`` through ``run_command``."""
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    inputs, overrides = split_overrides(args.items)
    return run_command(parser.prog, lambda: body(args, inputs, overrides), interrupted)


def weights_line(weights_id: str, meaning: str) -> str:
    """``weights: <id>``, saying so loudly when they are random (``meaning``: what is not real)."""
    random = f" (RANDOM weights: {meaning})" if weights_id.startswith("random") else ""
    return f"weights: {weights_id}{random}"


def print_report(lines: list[str], weights_id: str, meaning: str, errors: list[dict], more_at: str) -> None:
    """A run's summary: its own lines, the weights it used, and its errors."""
    for line in lines:
        print(line)
    print(weights_line(weights_id, meaning))
    print_errors(errors, more_at)


def print_errors(rows: list[dict], more_at: str, limit: int = 20, file=None) -> None:
    """One line per error row (``pipeline.core.errors_table``), at most ``limit``."""
    for r in rows[:limit]:
        where = r["path"] if r["path"] and r["path"] != r["item"] else ""
        print(f"  error [{r['stage']}] {r['item']}{': ' + where if where else ''}: {r['error_type']}: "
              f"{r['message']}", file=file)
    if len(rows) > limit:
        print(f"  ... and {len(rows) - limit} more (see {more_at})", file=file)
