"""The video indexing job as a module, for ``python -m tomeray.jobs.index_videos`` and
``ray job submit -- python -m tomeray.jobs.index_videos <inputs...> --out <index_dir> [key=value ...]``.

Same arguments and exit status as ``tomeray index`` (see :mod:`tomeray.pipeline.video.job`). Under
``ray job submit`` the driver joins the submitting cluster through ``RAY_ADDRESS``; the output
directory must be writable from the node running the driver (the head node).
"""

from __future__ import annotations

import sys

from tomeray.pipeline.cli import configure_logging
from tomeray.pipeline.video.cli import main as index_main


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    return index_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
