"""Jobs and services built on Ray: ``video`` (index, search), ``reconstruction`` (scenes), and the
machinery they share in ``core`` (outputs with pinned manifests, error tables, run records, the
Ray session and Ray Data stages, config loading, the command-line runner)."""
