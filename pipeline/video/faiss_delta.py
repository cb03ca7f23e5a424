"""Small additions to a large IVF index without rewriting it: the rows added since the index file
was written live in a delta file next to it, and every reader sees the two as one index.

    index.faiss                    the base, as its last full build wrote it
    index.delta-<digest>.faiss     every row added since: an IVF index with the same trained parts

An add of 1 % to a 1M-vector IVF index otherwise reads, merges and rewrites the whole 2 GB file
(~9 s of an add's ~10 s on this project's 2-core machine, against a ~115 s rebuild); with a delta
it encodes the new rows and rewrites the delta alone. The delta is named by the ids digest of the
base it extends, so a base rewritten later never picks up a delta meant for an older one, and
each file is still replaced atomically. The delta's positions continue the base's (its first row
is position ``base.ntotal``) and it carries the tuned search settings of the pair.

Only plain IVF indexes with in-memory lists (``ivf`` and IVF factory strings without re-ranking)
take a delta, and only for additions: removals, on-disk lists, or a delta that would pass
``DELTA_SHARE`` of the base fold everything back into one file (the build's full path).

Joining: a memory-mapped load stacks the base's mapped lists and the delta's (FAISS's
``HStackInvertedLists``, read-only, nothing copied); an in-memory load merges the delta into the
base's lists, so the result can be grown or merged like any index.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
from tomeray.pipeline.video.faiss_files import ids_digest, index_ids, load_index
from tomeray.pipeline.video.faiss_merge import ondisk_file, set_ids, set_ntotal
from tomeray.pipeline.video.faiss_runtime import inner_index

__all__ = ["DELTA_SHARE", "current_delta", "delta_files", "delta_path", "extend_delta", "find_delta",
           "join_delta", "takes_delta"]

DELTA_SHARE = 0.1  # a delta larger than this share of its base is folded into it


def delta_path(faiss_path: Path, base: faiss.Index) -> Path:
    return faiss_path.parent / f"{faiss_path.stem}.delta-{ids_digest(base)}.faiss"


def delta_files(faiss_path: Path) -> list[Path]:
    return sorted(faiss_path.parent.glob(f"{faiss_path.stem}.delta-*.faiss"))


def find_delta(faiss_path: Path, base: faiss.Index) -> Path | None:
    """The delta file that extends ``base`` (read from ``faiss_path``), if there is one."""
    if not takes_delta(base) or not delta_files(faiss_path):  # (no need to hash the base's ids)
        return None
    path = delta_path(faiss_path, base)
    return path if path.is_file() else None


def current_delta(faiss_path: Path, factory: str) -> str | None:
    """The name of the delta file the index at ``faiss_path`` (made by ``factory``) has, if any;
    the file is read memory-mapped."""
    if not delta_files(faiss_path):
        return None
    found = find_delta(faiss_path, load_index(faiss_path, mmap=True, factory=factory, delta=False))
    return found.name if found else None


def takes_delta(index: faiss.Index) -> bool:
    """Whether ``index`` may have a delta: a plain IVF index whose lists are in the file (or
    mapped from it), not in an ``.ivfdata`` file."""
    return isinstance(inner_index(index), faiss.IndexIVF) and ondisk_file(index) is None


def extend_delta(delta: faiss.Index, part: faiss.Index, base_rows: int) -> None:
    """Append ``part`` (an index encoded with the same trained parts, positions 0..n-1) to
    ``delta``, whose positions continue a base of ``base_rows`` rows."""
    ivf, part_ivf = inner_index(delta), inner_index(part)
    ids = np.concatenate([index_ids(delta), index_ids(part)])
    ivf.merge_from(part_ivf, base_rows + delta.ntotal)  # FAISS shifts the part's positions
    set_ids(delta, ids)
    set_ntotal(delta, len(ids))


def join_delta(base: faiss.Index, delta: faiss.Index, mapped: bool) -> faiss.Index:
    """One index holding ``base``'s rows and then ``delta``'s, with the delta's search settings;
    ``mapped``: ``base`` is memory-mapped, and a new index reads both sets of lists stacked
    (they stay owned by ``base`` and ``delta``, which it keeps alive); else the delta's lists
    are merged into ``base``'s, which is returned."""
    ids = np.concatenate([index_ids(base), index_ids(delta)])
    if mapped:
        joined = faiss.clone_index(delta)  # the same index type and trained parts ...
        joined.reset()  # ... with no rows
        pointers = faiss.InvertedListsPtrVector()
        for part in (base, delta):
            pointers.push_back(inner_index(part).invlists)
        stack = faiss.HStackInvertedLists(pointers.size(), pointers.data())
        stack.this.disown()
        inner_index(joined).replace_invlists(stack, True)
        joined.referenced_objects = [base, delta]
    else:
        joined = base
        inner_index(base).merge_from(inner_index(delta), 0)  # its positions continue the base's
    set_ids(joined, ids)
    set_ntotal(joined, len(ids))
    inner_index(joined).nprobe = inner_index(delta).nprobe
    return joined
