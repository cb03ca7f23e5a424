"""A training checkpoint: everything a worker needs to continue exactly where a run stopped.

```
<checkpoint>/adapter.safetensors  the trainable tensors (an adapter file: model.adapter=... loads it)
<checkpoint>/optimizer.pt         AdamW's state (moments, step counts)
<checkpoint>/progress.json        epoch, step within it, optimisation steps, the epoch's running loss,
                                  the finished epochs' records and the decode errors seen so far
```

Ray Train stores checkpoints under ``<out>/checkpoints/`` and hands the latest one to the workers
when a run restarts (a worker failure) or is rerun with the same output directory (a killed driver).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ADAPTER_FILE", "Progress", "load_checkpoint", "read_progress", "save_checkpoint"]

ADAPTER_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
PROGRESS_FILE = "progress.json"


@dataclass
class Progress:
    epoch: int = 0  # the epoch in progress (0-based); == epochs when training is done
    step: int = 0  # the next step within that epoch
    global_step: int = 0  # optimisation steps taken (drives the learning-rate schedule)
    loss_sum: float = 0.0  # this epoch's losses so far ...
    loss_steps: int = 0  # ... over this many steps
    clips: int = 0  # clips this epoch's steps trained on (failed ones excluded)
    seconds: float = 0.0  # this epoch's training time so far (restarts excluded) ...
    wait_s: float = 0.0  # ... of which waiting for decoded clips
    history: list[dict] = field(default_factory=list)  # one record per finished epoch
    errors: list[dict] = field(default_factory=list)  # error rows of clips that failed to decode

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0
        self.loss_sum, self.loss_steps, self.clips, self.seconds, self.wait_s = 0.0, 0, 0, 0.0, 0.0

    def add_errors(self, rows: list[dict]) -> int:
        """Record new error rows (one per item and stage); returns how many were new."""
        seen = {(e["item"], e["stage"]) for e in self.errors}
        added = 0
        for row in rows:
            if (row["item"], row["stage"]) not in seen:
                seen.add((row["item"], row["stage"]))
                self.errors.append(row)
                added += 1
        return added


def save_checkpoint(folder: str | Path, encoder, optimizer, progress: Progress, *, name: str,
                    extra: dict) -> None:
    import torch
    from tomeray.models.tempme import save_adapter

    folder = Path(folder)
    save_adapter(encoder, folder / ADAPTER_FILE, name=name, extra=extra)
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    (folder / PROGRESS_FILE).write_text(json.dumps(dataclasses.asdict(progress), indent=1), encoding="utf-8")


def read_progress(folder: str | Path) -> Progress:
    data = json.loads((Path(folder) / PROGRESS_FILE).read_text(encoding="utf-8"))
    names = {f.name for f in dataclasses.fields(Progress)}
    return Progress(**{k: v for k, v in data.items() if k in names})


def load_checkpoint(folder: str | Path, encoder, optimizer) -> Progress:
    """Restore the adapter tensors and the optimizer; returns where training stopped."""
    import torch
    from tomeray.models.tempme import load_adapter

    folder = Path(folder)
    load_adapter(encoder, folder / ADAPTER_FILE)
    state = torch.load(folder / OPTIMIZER_FILE, map_location=encoder.device, weights_only=True)
    optimizer.load_state_dict(state)
    return read_progress(folder)
