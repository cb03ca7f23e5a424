"""Atomic writes, for every output file: each lands under a temporary name in its final folder,
then is renamed into place.

A reader (or a rerun after a crash) therefore sees either the old file or the complete new
one, never a partial write.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_parquet(path: str | os.PathLike, table) -> Path:
    import pyarrow.parquet as pq

    return _atomic(path, lambda tmp: pq.write_table(table, tmp))


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Atomically create ``path`` with ``write(tmp_path)``, for writers that need a file name
    (FAISS, PLY, ...)."""
    return _atomic(path, write)


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete ``.*.tmp`` leftovers of writes interrupted by a crash; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = list(folder.rglob(".*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def utc_now() -> str:
    """A manifest timestamp: UTC, ISO 8601, to the second."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def tomeray_version() -> str:
    """The installed tomeray version, recorded in manifests ("unknown" in a bare source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tomeray")
    except PackageNotFoundError:
        return "unknown"
