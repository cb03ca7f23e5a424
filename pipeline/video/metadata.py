"""The metadata of an index's rows by video id, served from one memory-mapped file.

A searcher turns FAISS ids into paths and times. Reading the whole metadata table would cost
memory in proportion to the corpus; instead the indexing job writes ``metadata.bin`` next to the
index (one atomic write, before the manifest), rows sorted by id:

    8 bytes magic | int64 n | int64 ids[n] | float64 times[n, 3] (start_s, end_s, duration_s)
    | int64 path_ends[n] | UTF-8 paths, concatenated

A lookup is a binary search over the mapped ids (about log2(n) pages touched) plus one slice of
the path bytes, so its cost does not grow with the corpus and the searcher's resident memory holds
only the pages queries touched.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tomeray.pipeline.core.atomic import atomic_write_bytes

__all__ = ["METADATA_COLUMNS", "MetadataLookup", "write_metadata"]

METADATA_COLUMNS = ["video_id", "path", "start_s", "end_s", "duration_s"]
MAGIC = b"TRMETA01"
_HEADER = len(MAGIC) + 8


def write_metadata(path: str | Path, table) -> Path:
    """Write the lookup file for an Arrow table with :data:`METADATA_COLUMNS` (unique ids)."""
    ids = table["video_id"].to_numpy().astype(np.int64)
    order = np.argsort(ids, kind="stable")
    times = np.stack([table[c].to_numpy(zero_copy_only=False).astype(np.float64)[order]
                      for c in ("start_s", "end_s", "duration_s")], axis=1)
    paths = table["path"].to_pylist()
    encoded = [paths[i].encode("utf-8") for i in order]
    ends = np.cumsum([len(p) for p in encoded], dtype=np.int64)
    parts = [MAGIC, np.int64(len(ids)).tobytes(), ids[order].tobytes(), np.ascontiguousarray(times).tobytes(),
             ends.tobytes(), b"".join(encoded)]
    return atomic_write_bytes(path, b"".join(parts))


class MetadataLookup:
    """Rows of a ``metadata.bin`` by video id, read through a memory map."""

    _fd = -1  # (until the file is open: ``close`` is safe after a failed ``__init__``)

    def __init__(self, path: str | Path):
        path = Path(path)
        with path.open("rb") as f:
            head = f.read(_HEADER)
        if len(head) != _HEADER or head[: len(MAGIC)] != MAGIC:
            raise ValueError(f"{path} is not a metadata file")
        n = int(np.frombuffer(head[len(MAGIC):], np.int64)[0])
        self._ids = np.memmap(path, np.int64, "r", offset=_HEADER, shape=(n,)) if n else np.zeros(0, np.int64)
        at = _HEADER + 8 * n
        self._times = np.memmap(path, np.float64, "r", offset=at, shape=(n, 3)) if n else np.zeros((0, 3))
        at += 24 * n
        self._ends = np.memmap(path, np.int64, "r", offset=at, shape=(n,)) if n else np.zeros(0, np.int64)
        self._paths_at = at + 8 * n
        self._fd = os.open(path, os.O_RDONLY)  # path bytes are read with pread: no copy of the blob

    def __len__(self) -> int:
        return len(self._ids)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    def get(self, video_id: int) -> tuple[str, float, float, float] | None:
        """(path, start_s, end_s, duration_s) of ``video_id``, or None when it has no row."""
        row = int(np.searchsorted(self._ids, video_id))
        if row >= len(self._ids) or self._ids[row] != video_id:
            return None
        start = int(self._ends[row - 1]) if row else 0
        path = os.pread(self._fd, int(self._ends[row]) - start, self._paths_at + start).decode("utf-8")
        start_s, end_s, duration_s = (float(x) for x in self._times[row])
        return path, start_s, end_s, duration_s
