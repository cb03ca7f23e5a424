"""The ``tomeray`` command. Each sub-command lives in a module exposing ``main(argv) -> int`` (which
runs through ``pipeline.core.runner``); this file only dispatches, so ``tomeray --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

P = "tomeray.pipeline."
# name -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (P + "video.demo", "index the opencv-doc sample videos, then search them (the quick start)"),
    "index": (P + "video.cli", "embed a video corpus into a FAISS + Parquet index (resumable)"),
    "search": (P + "video.search_cli", "search an index with a text query or a video"),
    "serve": (P + "service.cli", "serve indexes and reconstructions over HTTP: API, search page, 3D viewer"),
    "train": (P + "training.cli", "fine-tune TempMe's adapter on video-caption pairs (Ray Train, resumable)"),
    "eval-retrieval": (P + "training.eval_cli", "text-video retrieval metrics (R@K, MdR, MnR) of an encoder"),
    "reconstruct": (P + "service.from_index",
                    "cameras and point clouds from image folders, videos or an index"),
    "config": (P + "config_cli", "print a job's resolved configuration (defaults + overrides)"),
}


def available_commands() -> dict[str, tuple[str, str]]:
    return {n: c for n, c in COMMANDS.items() if importlib.util.find_spec(c[0]) is not None}


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:  # libraries that narrate their start-up at INFO (open_clip logs on the root logger)
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda r: r.name != "root" or r.levelno >= logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = available_commands()
    parser = argparse.ArgumentParser(
        prog="tomeray",
        description="Token-merged video retrieval and 3D reconstruction on Ray.",
        epilog="Run 'tomeray COMMAND --help' for the options of a command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("command", choices=sorted(commands), metavar="COMMAND",
                        help="; ".join(f"{n}: {h}" for n, (_, h) in sorted(commands.items())))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    verbose = argv[0] in ("-v", "--verbose")
    if verbose:
        argv = argv[1:]
    args = parser.parse_args(argv[:1] if argv else [])
    configure_logging(verbose)
    module = importlib.import_module(commands[args.command][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
