"""The scene reconstruction job as a module, for ``python -m tomeray.jobs.reconstruct_scenes`` and
``ray job submit -- python -m tomeray.jobs.reconstruct_scenes <scenes...> --out <dir> [key=value ...]``.

Same arguments and exit status as ``tomeray reconstruct`` (see
:mod:`tomeray.pipeline.reconstruction.job`). Under
``ray job submit`` the driver joins the submitting cluster through ``RAY_ADDRESS`` and writes every
output file itself, so the output directory must be writable from the node running the driver (the
head node): a shared file system, or a path local to the head node. Image paths are read by the
load tasks wherever they run, so inputs must be visible to every node.
"""

from __future__ import annotations

import sys

from tomeray.pipeline.cli import configure_logging
from tomeray.pipeline.reconstruction.cli import main as reconstruct_main


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    return reconstruct_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
