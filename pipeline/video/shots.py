"""The shots table of an index built with ``sampling.segments=shots``.

```
<root>/shots/part-<run>-<seq>.parquet   video_id (the whole video's id), path, shot, start_frame,
                                        end_frame, start_s, end_s, cut_prob, fps
```

It holds what the detector found (before ``min_s`` / ``max_s``), one row per detected shot, so the
segments can be recomputed without detection: on resume (a video is complete when every segment
of its stored shots has a row) and by another index (``sampling.shots.reuse``) with other lengths.
Written by the driver from the first row of each video (which carries the shots as JSON), in the
same atomic, run-named parts as the embeddings; readers keep the first part's copy of a video.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tomeray.models.errors import ConfigError, InputError
from tomeray.models.shots import Shot, segment_shots
from tomeray.operators.shot_decode import shots_from_json, shots_to_json
from tomeray.pipeline.core.atomic import atomic_write_parquet
from tomeray.pipeline.video.ids import stable_id

__all__ = ["SHOTS_SCHEMA", "ShotsTable", "reusable_shots", "segment_kind", "segmentation", "shot_rows"]

SHOTS_SCHEMA = pa.schema([
    ("video_id", pa.int64()), ("path", pa.string()), ("shot", pa.int32()),
    ("start_frame", pa.int64()), ("end_frame", pa.int64()),
    ("start_s", pa.float64()), ("end_s", pa.float64()),
    ("cut_prob", pa.float32()), ("fps", pa.float64()),
])

# What shots depend on: another index's shots are reused only when these agree.
DETECTION_KEYS = ("detector", "weights_id", "threshold", "window", "precision")


def shot_rows(key: str, path: str, fps: float, shots_json: str) -> list[dict]:
    """The table rows of one video's shots (``shots_json``: the decode stage's JSON)."""
    video_id = stable_id(key)
    return [{"video_id": video_id, "path": path, "shot": i, "start_frame": s.start, "end_frame": s.end,
             "start_s": s.start / fps, "end_s": s.end / fps, "cut_prob": s.cut_prob, "fps": fps}
            for i, s in enumerate(shots_from_json(shots_json))]


class ShotsTable:
    """The ``shots/`` folder of an index."""

    def __init__(self, root: str | Path):
        self.folder = Path(root) / "shots"

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def write(self, rows: list[dict], name: str) -> Path:
        table = pa.Table.from_pylist(rows, SHOTS_SCHEMA)
        return atomic_write_parquet(self.folder / f"part-{name}.parquet", table)

    def read(self) -> pa.Table:
        """Every video's shots once (the earliest part's copy), ordered by path and shot."""
        tables = []
        for part in self.parts():
            try:
                tables.append(pq.read_table(part, schema=SHOTS_SCHEMA))
            except (OSError, pa.ArrowException) as e:
                raise InputError(f"shots part '{part}' is unreadable ({e}); delete it and rerun "
                                 "'tomeray index'") from None
        if not tables:
            return SHOTS_SCHEMA.empty_table()
        table = pa.concat_tables(tables)
        keys = [f"{p}\0{s}" for p, s in zip(table["path"].to_pylist(), table["shot"].to_pylist())]
        _, first = np.unique(np.asarray(keys, dtype=object), return_index=True)
        table = table.take(np.sort(first))
        return table.sort_by([("path", "ascending"), ("shot", "ascending")])

    def by_path(self) -> dict[str, tuple[float, list[Shot]]]:
        """path -> (fps, its shots)."""
        table = self.read().to_pydict()
        out: dict[str, tuple[float, list[Shot]]] = {}
        for path, start, end, prob, fps in zip(table["path"], table["start_frame"], table["end_frame"],
                                               table["cut_prob"], table["fps"]):
            out.setdefault(path, (fps, []))[1].append(Shot(int(start), int(end), float(prob)))
        return out

    def stored_json(self) -> dict[str, str]:
        """path -> its shots as the decode stage's JSON."""
        return {path: shots_to_json(shots) for path, (_, shots) in self.by_path().items()}

    def completed_paths(self, row_counts: Counter, min_s: float, max_s: float) -> set[str]:
        """Paths whose every segment (the stored shots with ``min_s`` / ``max_s``) has a row."""
        return {path for path, (fps, shots) in self.by_path().items()
                if row_counts.get(path, 0) >= len(segment_shots(shots, fps, min_s, max_s))}


def segmentation(manifest: dict) -> dict:
    """How an index cut its videos into rows (from its manifest): ``mode`` none | fixed | shots,
    with the window length or the shot detector, its weights and thresholds."""
    sampling = manifest.get("sampling") or {}
    if sampling.get("segments") == "shots":
        return {"mode": "shots", **(sampling.get("shots") or {})}
    window = float(sampling.get("segment_s") or 0.0)
    return {"mode": "fixed", "segment_s": window} if window > 0 else {"mode": "none"}


def segment_kind(manifest: dict) -> str:
    """What one row of the index is: ``shot``, ``clip`` (a fixed window) or ``video``."""
    return {"shots": "shot", "fixed": "clip"}.get(segmentation(manifest)["mode"], "video")


def reusable_shots(index: str, shots_header: dict) -> dict[str, str]:
    """Stored shots of another index (``sampling.shots.reuse``), refused when they were detected
    differently (detector, weights, threshold)."""
    manifest_path = Path(index) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"sampling.shots.reuse={index}: not a readable index ({e})") from None
    theirs = (manifest.get("sampling") or {}).get("shots") or {}
    differ = [k for k in DETECTION_KEYS if theirs.get(k) != shots_header.get(k)]
    if differ:
        what = ", ".join(f"{k}: {theirs.get(k)!r} there, {shots_header.get(k)!r} here" for k in differ)
        raise ConfigError(f"sampling.shots.reuse={index}: its shots were detected with other settings "
                          f"({what}); reuse an index with the same detector and threshold, or detect again")
    return ShotsTable(index).stored_json()
