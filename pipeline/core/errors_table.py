"""The error table of every job: one row per failure, in Parquet parts under ``<output>/errors/``.

Columns (all strings):

* ``item``: the unit of work that failed and is retried by a rerun: a video's canonical path for
  indexing, a scene name for reconstruction (the input as given when the input itself is bad);
* ``input``: the input as the user gave it (a directory, glob, list file or file);
* ``path``: the resolved file or folder the error is about (a video, an image, a scene's folder);
* ``stage``: where it failed (``discover``, ``decode``, ``embed``, ``load``, ``reconstruct``, ...);
* ``error_type``, ``message``: the exception type and a one-line reason.

A rerun retries failed items; an item that then succeeds is no longer a current error (its
history stays in the parts). Parts
written by tomeray 0.1 (``path, stage, error_type, message`` for indexes; ``scene, image_path,
...`` for reconstructions) are read into these columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tomeray.models.errors import InputError, one_line
from tomeray.pipeline.core.atomic import atomic_write_parquet

__all__ = ["ERRORS_SCHEMA", "current_errors", "error_row", "errors_table", "exception_row",
           "read_error_parts", "write_error_part"]

ERRORS_SCHEMA = pa.schema([(name, pa.string()) for name in
                           ("item", "input", "path", "stage", "error_type", "message")])


def error_row(item: str, stage: str, error_type: str, message: str, *, input: str = "",
              path: str = "") -> dict:
    return {"item": str(item), "input": str(input), "path": str(path), "stage": str(stage),
            "error_type": str(error_type), "message": " ".join(str(message).split())}


def exception_row(item: str, stage: str, error: BaseException, *, input: str = "", path: str = "") -> dict:
    return error_row(item, stage, type(error).__name__, one_line(error), input=input, path=path)


def errors_table(rows: Iterable[dict]) -> pa.Table:
    return pa.Table.from_pylist([{k: str(r.get(k) or "") for k in ERRORS_SCHEMA.names} for r in rows],
                                schema=ERRORS_SCHEMA)


def write_error_part(path: str | Path, rows: list[dict]) -> Path:
    return atomic_write_parquet(path, errors_table(rows))


def _normalise(table: pa.Table) -> pa.Table:
    """A part in the current columns (older parts: see the module docstring)."""
    names = set(table.column_names)
    if names >= set(ERRORS_SCHEMA.names):
        return table.select(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA)
    rows = table.to_pylist()
    if "scene" in names:  # reconstruction, 0.1: scene, image_path, stage, error_type, message
        return errors_table({**r, "item": r["scene"] or r["image_path"], "input": "" if r["scene"] else
                             r["image_path"], "path": r["image_path"]} for r in rows)
    return errors_table({**r, "item": r["path"], "input": r["path"]} for r in rows)  # index, 0.1


def read_error_parts(paths: Iterable[Path]) -> pa.Table:
    """Every row of the given parts, in order."""
    tables = []
    for path in paths:
        try:
            tables.append(_normalise(pq.read_table(path)))
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"error table part '{path}' is unreadable ({e}); delete it and rerun") from None
    return pa.concat_tables(tables) if tables else ERRORS_SCHEMA.empty_table()


def current_errors(table: pa.Table, done: set[str]) -> pa.Table:
    """The latest row of each item not in ``done``, in the order of those latest rows (for tables
    that append one row per failed attempt, such as an index's)."""
    latest: dict[str, int] = {}
    for i, item in enumerate(table["item"].to_pylist()):
        if item not in done:
            latest.pop(item, None)  # re-inserted, so the order follows the latest occurrence
            latest[item] = i
    return table.take(sorted(latest.values()))
