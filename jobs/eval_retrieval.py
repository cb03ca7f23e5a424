"""Retrieval evaluation as a module, for ``python -m tomeray.jobs.eval_retrieval`` and
``ray job submit -- python -m tomeray.jobs.eval_retrieval DATA [key=value ...] --json F``.
Same arguments and exit status as ``tomeray eval-retrieval`` (:mod:`tomeray.pipeline.training.evaluation`)."""

from __future__ import annotations

import sys

from tomeray.pipeline.cli import configure_logging
from tomeray.pipeline.training.eval_cli import main as eval_main


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    return eval_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
