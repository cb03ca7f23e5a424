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

Paths are returned canonical (absolute, symlinks resolved) and deduplicated in input order, each
with the input it came from and the path as the user's tree shows it (for error rows: a link is
named as itself, with where it leads in the message). A link whose target is gone is an error row
of its own. An input that names nothing (a missing file, a glob
without matches, an unreadable list) becomes an error row, stage ``discover``, so that a job
reports it instead of silently indexing less.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from tomeray.models.errors import InputError, link_note
from tomeray.operators.video_io import VIDEO_EXTENSIONS
from tomeray.pipeline.core.errors_table import error_row
from tomeray.pipeline.core.inputs import (
    LIST_EXTENSIONS,
    TABLE_EXTENSIONS,
    normalise_extensions,
    read_table_rows,
    read_text_list,
    walk_files,
)
from tomeray.pipeline.video.ids import canonical_path

__all__ = ["VIDEO_EXTENSIONS", "LIST_EXTENSIONS", "Discovery", "discover_videos"]

_GLOB_CHARS = ("*", "?", "[")


@dataclass
class Discovery:
    paths: list[str] = field(default_factory=list)    # canonical video paths, in input order, unique
    errors: list[dict] = field(default_factory=list)  # rows for the errors table (stage "discover")
    origin: dict[str, str] = field(default_factory=dict)  # canonical path -> the input that named it
    shown: dict[str, str] = field(default_factory=dict)  # canonical -> as the tree shows it (if not the same)

    def error_row(self, item: str, stage: str, error_type: str, message: str) -> dict:
        """An error row about discovered video ``item`` (its canonical path): ``path`` names it as the
        user's tree shows it, and the message says where a link on the way leads."""
        shown = self.shown.get(item, item)
        return error_row(item, stage, error_type, message + link_note(shown),
                         input=self.origin.get(item, item), path=shown)


def discover_videos(
    inputs: list[str | os.PathLike],
    extensions: tuple[str, ...] | list[str] = VIDEO_EXTENSIONS,
    list_column: str = "path",
) -> Discovery:
    """Expand directories, globs and list files into video paths (see the module docstring)."""
    if not inputs:
        raise InputError("no inputs given: pass video files, directories, globs or a list file")
    exts = normalise_extensions(extensions)
    found = Discovery()
    seen: set[str] = set()

    given = ""  # the input being expanded, as the user gave it

    def add(path: str) -> None:
        canon = canonical_path(path)
        if canon in seen:
            return
        seen.add(canon)
        found.origin[canon] = given
        if canon != os.path.abspath(path):
            found.shown[canon] = os.path.abspath(path)
        if os.path.exists(canon):
            found.paths.append(canon)
        else:  # a link whose target is gone
            found.errors.append(found.error_row(canon, "discover", "FileNotFoundError", "a broken link"))

    def fail(path: str, error_type: str, message: str) -> None:
        found.errors.append(error_row(str(path), "discover", error_type, message, input=given,
                                      path=str(path)))

    def expand(entry: str, allow_lists: bool) -> None:
        if any(c in entry for c in _GLOB_CHARS) and not os.path.exists(entry):
            matches = sorted(glob.glob(entry, recursive=True))
            if not matches:
                fail(entry, "NoMatch", f"glob '{entry}' matches no file")
            for m in matches:
                if os.path.isdir(m):
                    for found_path in walk_files(m, exts):
                        add(found_path)
                elif os.path.isfile(m) or os.path.islink(m):
                    add(m)
        elif os.path.isdir(entry):
            for found_path in walk_files(entry, exts):
                add(found_path)
        elif allow_lists and entry.lower().endswith(LIST_EXTENSIONS) and os.path.isfile(entry):
            try:
                entries = _read_list(Path(entry), list_column)
            except (OSError, ValueError, UnicodeDecodeError) as e:
                fail(entry, type(e).__name__, f"cannot read the input list: {e}")
                return
            base = os.path.dirname(os.path.abspath(entry))
            for item in entries:
                expand(item if os.path.isabs(item) else os.path.join(base, item), allow_lists=False)
        elif os.path.isfile(entry) or os.path.islink(entry):
            add(entry)
        else:
            fail(entry, "FileNotFoundError", f"'{entry}' does not exist")

    for item in inputs:
        given = os.fspath(item)
        expand(given, allow_lists=True)
    return found


def _read_list(path: Path, column: str) -> list[str]:
    """The entries of a list file: the ``column`` column of a table (else its first column, for
    Parquet its first string column), or the lines of a text list."""
    if path.suffix.lower() not in TABLE_EXTENSIONS:
        return read_text_list(path)
    names, rows = read_table_rows(path)
    if column not in names:
        if path.suffix.lower() == ".parquet":
            strings = [n for n in names if rows and isinstance(rows[0][n], str)]
            if not strings:
                raise ValueError(f"no '{column}' column and no string column in {path}")
            names = strings
        if not names:
            return []
        column = names[0]
    values = (row.get(column) for row in rows)
    return [str(v).strip() for v in values if v is not None and str(v).strip()]
