"""Ray Data graphs built from config, storage layout, index build/merge, search and the CLI."""
