"""What both jobs' discovery shares: extension lists, folder walks and list files (CSV / TSV /
Parquet tables, plain text lists)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["LIST_EXTENSIONS", "TABLE_EXTENSIONS", "normalise_extensions", "read_table_rows", "read_text_list",
           "walk_files"]

TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet")
LIST_EXTENSIONS = (".txt", ".lst", *TABLE_EXTENSIONS)


def normalise_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    """Lower-case extensions with their leading dot (``"MP4"`` -> ``".mp4"``)."""
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def walk_files(folder: str | os.PathLike, extensions: tuple[str, ...]) -> list[str]:
    """Files under ``folder`` (recursively) whose extension is in ``extensions`` (case-insensitive),
    hidden files and folders skipped, in the order of their paths relative to ``folder``."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in files
                  if not f.startswith(".") and f.lower().endswith(extensions)]
    return sorted(found, key=lambda p: os.path.relpath(p, folder))


def read_table_rows(path: Path) -> tuple[list[str], list[dict]]:
    """(column names, rows as dicts) of a CSV / TSV file (with a header row) or a Parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return table.column_names, table.to_pylist()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def read_text_list(path: Path) -> list[str]:
    """Non-empty lines of a text list, ``#`` comments skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
