"""Entry points for ``python -m jobs.X`` and ``ray job submit -- python -m jobs.X``, and benchmarks."""
