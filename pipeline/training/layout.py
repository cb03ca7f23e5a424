"""The output directory of ``tomeray train``.

```
<out>/adapter.safetensors        the trained adapter (model.adapter=<out>/adapter.safetensors)
<out>/metrics.json               {"epochs": [{"epoch", "train_loss", "val": {...}, ...}], ...}
<out>/manifest.json              pinned: base model identity, data (source, digest, counts), recipe
<out>/config.yaml                the resolved configuration of the latest run
<out>/runs/<run_id>.json         what each run did (resumed from where, steps, time)
<out>/errors/part-*.parquet      rows that could not be used (pipeline.core.errors_table)
<out>/checkpoints/train/...      Ray Train's checkpoints (adapter + optimizer + progress each)
```

A rerun into the same directory resumes from the latest checkpoint; it must use the same model,
data and recipe (the worker count may change: a global batch is the same on any number of workers).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from tomeray.pipeline.core.errors_table import current_errors, read_error_parts, write_error_part
from tomeray.pipeline.core.output import JobOutput

__all__ = ["RUN_NAME", "TrainLayout"]

RUN_NAME = "train"  # Ray Train's run name: the same every time, so a rerun finds the checkpoints


class TrainLayout(JobOutput):
    kind = "training output"
    command = "tomeray train"
    schema_version = 1
    pinned = ("model", "data", "recipe")
    incompatible_hint = ("rerun with the settings and data this output was trained with, or train into a "
                         "new --out directory")

    def __init__(self, root):
        super().__init__(root)
        self.adapter_path = self.root / "adapter.safetensors"
        self.metrics_path = self.root / "metrics.json"
        self.checkpoints_dir = self.root / "checkpoints"

    @property
    def run_dir(self) -> Path:
        return self.checkpoints_dir / RUN_NAME

    def has_results(self) -> bool:
        return self.adapter_path.exists() or any(self.run_dir.glob("checkpoint*"))

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint Ray Train will restore (the latest one its run snapshot registered), or None."""
        try:
            snapshot = self.run_dir / "checkpoint_manager_snapshot.json"
            snapshot = json.loads(snapshot.read_text(encoding="utf-8"))
            name = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        path = self.run_dir / str(name)
        return path if path.is_dir() else None

    def write_errors(self, rows: list[dict], name: str) -> Path | None:
        return write_error_part(self.errors_dir / f"part-{name}.parquet", rows) if rows else None

    def read_errors(self) -> pa.Table:
        """The latest error of each clip (or row) that could not be used."""
        table = read_error_parts(sorted(self.errors_dir.glob("part-*.parquet")))
        return current_errors(table, set()) if table.num_rows else table
