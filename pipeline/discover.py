"""Turn the inputs of a job into a list of video files.

An input is one of:

* a directory: searched recursively for files whose extension is a video extension
  (case-insensitive); hidden files and folders (``.name``) are skipped;
* a glob (``*``, ``?``, ``[``; ``**`` recurses): every matching file is taken as named, matching
  directories are searched as above;
* a list file: ``.txt`` / ``.lst`` (one path per line, ``#`` comments), ``.csv`` / ``.tsv`` (a
  header row; the ``path`` column, else the first column) or ``.parquet`` (the ``path`` column,
  else the first string column). Relative entries are relative to the list file's folder;
* anything else: a video file.

Paths are returned canonical (absolute, symlinks resolved) and deduplicated in input order. An
input that names nothing (a missing file, a glob without matches, an unreadable list) becomes an
error row, stage ``discover``, so that a job reports it instead of silently indexing less.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from tomeray.models.errors import InputError
from tomeray.pipeline.index_layout import canonical_path

__all__ = ["VIDEO_EXTENSIONS", "LIST_EXTENSIONS", "Discovery", "discover_videos"]

VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp", ".ogv",
)
LIST_EXTENSIONS = (".txt", ".lst", ".csv", ".tsv", ".parquet")
_GLOB_CHARS = ("*", "?", "[")


@dataclass
class Discovery:
    paths: list[str] = field(default_factory=list)    # canonical video paths, in input order, unique
    errors: list[dict] = field(default_factory=list)  # rows for the errors table (stage "discover")


def discover_videos(
    inputs: list[str | os.PathLike],
    extensions: tuple[str, ...] | list[str] = VIDEO_EXTENSIONS,
    list_column: str = "path",
) -> Discovery:
    """Expand directories, globs and list files into video paths (see the module docstring)."""
    if not inputs:
        raise InputError("no inputs given: pass video files, directories, globs or a list file")
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    found = Discovery()
    seen: set[str] = set()

    def add(path: str) -> None:
        canon = canonical_path(path)
        if canon not in seen:
            seen.add(canon)
            found.paths.append(canon)

    def fail(path: str, error_type: str, message: str) -> None:
        found.errors.append(
            {"path": str(path), "stage": "discover", "error_type": error_type, "message": message})

    def expand(entry: str, allow_lists: bool) -> None:
        if any(c in entry for c in _GLOB_CHARS) and not os.path.exists(entry):
            matches = sorted(glob.glob(entry, recursive=True))
            if not matches:
                fail(entry, "NoMatch", f"glob '{entry}' matches no file")
            for m in matches:
                if os.path.isdir(m):
                    _walk(m, exts, add)
                elif os.path.isfile(m):
                    add(m)
        elif os.path.isdir(entry):
            _walk(entry, exts, add)
        elif allow_lists and entry.lower().endswith(LIST_EXTENSIONS) and os.path.isfile(entry):
            try:
                entries = _read_list(Path(entry), list_column)
            except (OSError, ValueError, UnicodeDecodeError) as e:
                fail(entry, type(e).__name__, f"cannot read the input list: {e}")
                return
            base = os.path.dirname(os.path.abspath(entry))
            for item in entries:
                expand(item if os.path.isabs(item) else os.path.join(base, item), allow_lists=False)
        elif os.path.isfile(entry):
            add(entry)
        else:
            fail(entry, "FileNotFoundError", f"'{entry}' does not exist")

    for item in inputs:
        expand(os.fspath(item), allow_lists=True)
    return found


def _walk(folder: str, exts: tuple[str, ...], add) -> None:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(exts):
                add(os.path.join(root, name))


def _read_list(path: Path, column: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if column not in table.column_names:
            strings = [f.name for f in table.schema if str(f.type) in ("string", "large_string")]
            if not strings:
                raise ValueError(f"no '{column}' column and no string column in {path}")
            column = strings[0]
        return [str(v) for v in table[column].to_pylist() if v]
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if not reader.fieldnames:
                return []
            key = column if column in reader.fieldnames else reader.fieldnames[0]
            return [row[key].strip() for row in reader if row.get(key) and row[key].strip()]
    lines = path.read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
