"""Stable ids of indexed videos and clips.

``video_id`` is a 63-bit BLAKE2b hash of the input's *id key*: its canonical path (absolute,
symlinks resolved) or, when the index is built with ``input.id_root``, the path relative to that
root, so the same corpus mounted at different places on different machines gets the same ids.
A segment id hashes the key plus the window's start in milliseconds. The same file indexed twice
gives one id (merges deduplicate by id); different keys collide with probability ~n²/2⁶⁴.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tomeray.models.errors import InputError

__all__ = ["canonical_path", "id_key", "stable_id"]


def canonical_path(path: str | os.PathLike) -> str:
    """Absolute path with symlinks resolved: the one spelling of a file stored in the index."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def id_key(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """The string an id is derived from: the canonical path, or the path relative to ``root``."""
    canon = canonical_path(path)
    if root:
        base = canonical_path(root)
        rel = os.path.relpath(canon, base)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise InputError(f"'{canon}' is not under input.id_root '{base}'; set input.id_root to the "
                             "corpus root")
        return Path(rel).as_posix()
    return Path(canon).as_posix()


def stable_id(key: str, start_s: float | None = None) -> int:
    """A positive int64 from ``key`` (and a window start for segments); -1 stays free for FAISS."""
    text = key if start_s is None else f"{key}#{round(start_s * 1000)}"
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF
