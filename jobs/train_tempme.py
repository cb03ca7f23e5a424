"""The TempMe fine-tuning job as a module, for ``python -m tomeray.jobs.train_tempme`` and
``ray job submit -- python -m tomeray.jobs.train_tempme DATA --out DIR [key=value ...]``.

Same arguments and exit status as ``tomeray train`` (see :mod:`tomeray.pipeline.training.job`). Under
``ray job submit`` the driver joins the cluster through ``RAY_ADDRESS``; the output directory must be
on storage every node can reach (the workers write the checkpoints there).
"""

from __future__ import annotations

import sys

from tomeray.pipeline.cli import configure_logging
from tomeray.pipeline.training.cli import main as train_main


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    return train_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
