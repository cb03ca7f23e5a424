"""The video indexing job as a module, for ``python -m tomeray.jobs.index_videos`` and
``ray job submit -- python -m tomeray.jobs.index_videos <inputs...> --out <index_dir> [key=value ...]``.

Same arguments and exit status as ``tomeray index`` (see :mod:`pipeline.video_index`). Under
``ray job submit`` the driver joins the submitting cluster through ``RAY_ADDRESS``; the output
directory must be writable from the node running the driver (the head node).
"""

from __future__ import annotations

import logging
import sys

from tomeray.pipeline.video_index import main as index_main


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return index_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
