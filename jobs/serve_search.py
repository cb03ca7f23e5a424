"""The search service on Ray Serve as a module, for ``python -m tomeray.jobs.serve_search`` and
``ray job submit -- python -m tomeray.jobs.serve_search <index_dir...> [--port P] [key=value ...]``.

Same arguments as ``tomeray serve --ray`` (see :mod:`tomeray.pipeline.video.serve.cli`): the job
deploys the replicas on the cluster it runs in and keeps serving until it is stopped
(``ray job stop``). ``serve run tomeray.pipeline.video.serve.ray_app:build`` is the alternative
for Ray Serve's own tooling.
"""

from __future__ import annotations

import sys

from tomeray.pipeline.cli import configure_logging
from tomeray.pipeline.video.serve.cli import main as serve_main


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    return serve_main(["--ray", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
