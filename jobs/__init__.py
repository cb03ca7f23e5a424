"""Entry points for ``python -m tomeray.jobs.X`` and ``ray job submit -- python -m tomeray.jobs.X``,
and the benchmarks ``tomeray.jobs.bench_*``."""
