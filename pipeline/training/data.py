"""Video-caption data for training and retrieval evaluation: which clips, which captions, which split.

A data source is either

* a table (``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``) with one row per caption: ``path`` and
  ``caption`` columns (names set by ``data.path_column`` / ``data.caption_column``), optional
  ``start_s`` and ``end_s`` (a clip of the video; empty: the whole video) and an optional ``split``
  column (``train``, ``val``, ``test``; empty: ``train``). Several rows may name the same clip: they are
  its captions. Relative paths are relative to ``data.video_root``, else to the table's folder; or
* MSR-VTT (``pipeline.training.msrvtt``): a folder holding ``MSRVTT_data.json``.

A *clip* is one (video, time range); retrieval ranks clips, and training pairs each caption with its
clip. Rows that cannot be used (empty caption, missing video, a time range that is not one) become
error rows (``pipeline.core.errors_table``, stage ``load``) and the rest is used. Without a split
column, ``data.val_fraction`` of the clips (never of the captions, so no clip is in both) is held out
for validation, chosen by ``data.seed``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tomeray.models.errors import InputError, link_note
from tomeray.pipeline.core.errors_table import error_row
from tomeray.pipeline.core.inputs import read_table_rows
from tomeray.pipeline.training.config import DataConfig
from tomeray.pipeline.video.ids import canonical_path

__all__ = ["SPLITS", "Clip", "ClipBuilder", "ClipSet", "clip_key", "load_clips", "select_split",
           "splits_needed", "train_val_split"]

SPLITS = ("train", "val", "test")
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "": "train"}
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


@dataclass
class Clip:
    key: str  # the clip's name in outputs: the path, plus "@start-end s" for a time range
    path: str  # canonical video path
    start_s: float = math.nan  # NaN: the whole video
    end_s: float = math.nan
    captions: list[str] = field(default_factory=list)
    split: str = "train"

    def item(self, **extra) -> dict:
        """The row a decode stage takes."""
        return {"path": self.path, "key": self.key, "start_s": self.start_s, "end_s": self.end_s, **extra}


@dataclass
class ClipSet:
    source: str  # the data source as resolved
    format: str  # table | msrvtt
    clips: list[Clip]
    errors: list[dict] = field(default_factory=list)  # rows for the errors table

    @property
    def n_captions(self) -> int:
        return sum(len(c.captions) for c in self.clips)

    def digest(self) -> str:
        """A hash of the clips, their captions and splits: what a resumed training run must match."""
        h = hashlib.sha256()
        for c in self.clips:
            h.update(json.dumps([c.key, c.split, c.captions], ensure_ascii=False).encode())
        return h.hexdigest()[:16]


def clip_key(path: str, start_s: float, end_s: float) -> str:
    return path if math.isnan(start_s) else f"{path}@{start_s:g}-{end_s:g}s"


def _number(value) -> float:
    """A start/end cell as a float; NaN when empty. Raises ValueError on text that is no number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    return float(value)


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"'{path}' line {number} is not JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise InputError(f"'{path}' line {number} is not a JSON object")
                rows.append(row)
        return sorted({k for r in rows for k in r}), rows
    try:
        return read_table_rows(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the table '{path}': {e}") from None


class ClipBuilder:
    """Collects (video, range, caption, split) rows into clips, with the rows' errors."""

    def __init__(self, source: str):
        self.source = source
        self.clips: dict[str, Clip] = {}
        self.errors: list[dict] = []
        self._exists: dict[str, bool] = {}
        self._missing: set[str] = set()  # clips already reported as missing (one row per clip)

    def add(self, where: str, path: str, caption, start_s: float, end_s: float, split: str) -> None:
        """``path``: the video as the table names it (absolute; a link stays a link, and error rows name
        it so); the clip's key is made from its canonical path."""
        key = clip_key(canonical_path(path), start_s, end_s)
        if path not in self._exists:
            self._exists[path] = os.path.isfile(path)
        if not self._exists[path]:
            if key not in self._missing:
                self._missing.add(key)
                self.errors.append(error_row(key, "load", "MissingVideo", f"{where}: the video file does not "
                                             f"exist{link_note(path)}", input=self.source, path=path))
            return
        if not isinstance(caption, str) or not caption.strip():
            self.errors.append(error_row(key, "load", "EmptyCaption", f"{where}: the caption is empty",
                                         input=self.source, path=path))
            return
        clip = self.clips.setdefault(key, Clip(key, path, start_s, end_s, [], split))
        if clip.split != split:
            self.errors.append(error_row(key, "load", "InputError", f"{where}: the clip is in split "
                                         f"'{clip.split}' on an earlier row, '{split}' here; kept in "
                                         f"'{clip.split}'", input=self.source, path=path))
        clip.captions.append(" ".join(caption.split()))

    def bad(self, where: str, key: str, path: str, message: str) -> None:
        self.errors.append(error_row(key, "load", "InputError", f"{where}: {message}", input=self.source,
                                     path=path))

    def result(self, fmt: str) -> ClipSet:
        return ClipSet(self.source, fmt, list(self.clips.values()), self.errors)


def load_table(path: Path, cfg: DataConfig) -> ClipSet:
    columns, rows = _read_rows(path)
    for needed in (cfg.path_column, cfg.caption_column):
        if needed not in columns:
            raise InputError(f"the table '{path}' has no '{needed}' column (columns: {', '.join(columns)}); "
                             "name the columns with data.path_column / data.caption_column")
    root = Path(cfg.video_root).expanduser() if cfg.video_root else path.parent
    builder = ClipBuilder(str(path))
    for number, row in enumerate(rows, 1):
        where = f"row {number}"
        raw = row.get(cfg.path_column)
        if not isinstance(raw, str) or not raw.strip():
            builder.bad(where, f"{path}#{number}", "", "the video path is empty")
            continue
        video = os.path.abspath(root / raw.strip())  # as the table names it (see ClipBuilder.add)
        try:
            start, end = _number(row.get("start_s")), _number(row.get("end_s"))
        except (TypeError, ValueError):
            builder.bad(where, canonical_path(video), video, "start_s / end_s are not numbers "
                        f"({row.get('start_s')!r}, {row.get('end_s')!r})")
            continue
        if math.isnan(start) != math.isnan(end) or (not math.isnan(start) and not 0 <= start < end):
            builder.bad(where, clip_key(canonical_path(video), start, end), video,
                        f"start_s={start:g}, end_s={end:g} is not a clip (give both, 0 <= start_s < end_s)")
            continue
        label = str(row.get(cfg.split_column) or "").strip().lower()
        if label not in _SPLIT_NAMES:
            builder.bad(where, clip_key(canonical_path(video), start, end), video,
                        f"split '{label}' is not one of {', '.join(SPLITS)}")
            continue
        builder.add(where, video, row.get(cfg.caption_column), start, end, _SPLIT_NAMES[label])
    return builder.result("table")


def detect_format(data: Path, cfg: DataConfig) -> str:
    if cfg.format not in ("auto", "table", "msrvtt"):
        raise InputError(f"data.format must be auto, table or msrvtt; got '{cfg.format}'")
    if cfg.format != "auto":
        return cfg.format
    if (data.is_dir() and (data / "MSRVTT_data.json").is_file()) or data.name == "MSRVTT_data.json":
        return "msrvtt"
    if data.suffix.lower() in TABLE_SUFFIXES:
        return "table"
    raise InputError(f"cannot tell what '{data}' is: give a table ({', '.join(TABLE_SUFFIXES)}) of "
                     "path,caption rows, or an MSR-VTT folder holding MSRVTT_data.json")


def load_clips(data: str | os.PathLike, cfg: DataConfig, splits: tuple[str, ...] = SPLITS) -> ClipSet:
    """Every clip of the data source, each with its captions and split (see the module docstring).
    ``splits``: the MSR-VTT lists to read (a table is always read whole)."""
    path = Path(data).expanduser()
    if not path.exists():
        raise InputError(f"data source '{path}' does not exist")
    fmt = detect_format(path, cfg)
    if fmt == "msrvtt":
        from tomeray.pipeline.training.msrvtt import load_msrvtt

        return load_msrvtt(path, cfg, splits)
    if path.is_dir():
        raise InputError(f"'{path}' is a folder; data.format=table needs a table file")
    return load_table(path.resolve(), cfg)


def _held_out(n: int, fraction: float, seed: int) -> np.ndarray:
    if not 0 <= fraction < 1:
        raise InputError(f"data.val_fraction must be in [0, 1); got {fraction}")
    n_val = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    return np.random.default_rng(seed).permutation(n)[:n_val]


def train_val_split(clips: ClipSet, cfg: DataConfig) -> tuple[list[Clip], list[Clip]]:
    """(training clips, validation clips): by the split labels when there are any besides ``train``
    (``test`` clips are left out of both), else ``data.val_fraction`` of the clips by ``data.seed``."""
    if any(c.split != "train" for c in clips.clips):
        return [c for c in clips.clips if c.split == "train"], [c for c in clips.clips if c.split == "val"]
    held = set(_held_out(len(clips.clips), cfg.val_fraction, cfg.seed).tolist())
    train = [c for i, c in enumerate(clips.clips) if i not in held]
    return train, [c for i, c in enumerate(clips.clips) if i in held]


def splits_needed(split: str) -> tuple[str, ...]:
    """The MSR-VTT lists an evaluation of ``split`` reads."""
    return {"auto": ("test",), "test": ("test",), "train": ("train",), "val": ("train",)}.get(split, SPLITS)


def select_split(clips: ClipSet, split: str, cfg: DataConfig) -> list[Clip]:
    """The clips an evaluation ranks: ``all``; ``train`` / ``val`` as training splits them; ``test``;
    ``auto``: the ``test`` clips when there are any, else all."""
    if split == "all":
        return list(clips.clips)
    if split == "auto":
        test = [c for c in clips.clips if c.split == "test"]
        return test or list(clips.clips)
    if split == "test":
        return [c for c in clips.clips if c.split == "test"]
    if split in ("train", "val"):
        return train_val_split(clips, cfg)[0 if split == "train" else 1]
    raise InputError(f"eval.split must be auto, all, train, val or test; got '{split}'")
