"""FAISS index files: write (atomically, in portable CPU form), read or memory-map, serialise, and
the ids an index holds. An index file may have a delta file of rows added since it was written
(:mod:`.faiss_delta`): :func:`load_index` returns the two as one index.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import faiss
import numpy as np
from tomeray.models.errors import TomerayError
from tomeray.pipeline.core.atomic import atomic_write_with
from tomeray.pipeline.video.faiss_runtime import faiss_reason, gpu_available, quiet_stdout

__all__ = ["deserialize_index", "ids_digest", "index_ids", "load_index", "mmap_flag", "save_index",
           "serialize_index"]


def serialize_index(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize_index(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """Write the index atomically, always in its portable CPU form."""
    cpu = faiss.index_gpu_to_cpu(index) if gpu_available() else index
    return atomic_write_with(path, lambda tmp: faiss.write_index(cpu, tmp))


def mmap_flag(factory: str) -> int:
    """What a memory-mapped load maps for an index made by ``factory``: the inverted lists of IVF
    indexes; the stored vectors / codes of the others (flat, HNSW, re-ranked IVF-PQ, whose
    re-ranking codes are its largest part). FAISS cannot map both at once."""
    spec = factory.upper().replace(" ", "")
    if spec.startswith("IVF") and "REFINE" not in spec and ",RFLAT" not in spec:
        return faiss.IO_FLAG_MMAP
    return faiss.IO_FLAG_MMAP_IFC


def load_index(path: str | Path, *, mmap: bool = False, factory: str = "", ondisk: bool = False,
               delta: bool = True) -> faiss.Index:
    """Read an index written by :func:`save_index` (a CPU index); one-line TomerayError if the file
    is missing, corrupt or not an id-mapped index. ``mmap``: map the index's largest part from
    the file instead of reading it (see :func:`mmap_flag`; ``factory`` says which part).
    ``ondisk``: the index keeps its inverted lists in an ``.ivfdata`` file next to it, always
    mapped (and found in the index's folder wherever that is moved); FAISS must be told, as a
    mapped read of such an index crashes it. ``delta``: include the rows added since the file
    was written (:mod:`.faiss_delta`); False: the file's own rows."""
    path = Path(path)
    index = _read_index(path, mmap, factory, ondisk)
    if delta:
        from tomeray.pipeline.video.faiss_delta import find_delta, join_delta

        if (extra := find_delta(path, index)) is not None:
            index = join_delta(index, _read_index(extra, False, "", False), mapped=mmap and not ondisk)
    return index


def _read_index(path: Path, mmap: bool, factory: str, ondisk: bool) -> faiss.Index:
    if not path.is_file():
        raise TomerayError(f"FAISS index {path} does not exist: build the index with 'tomeray index'")
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR  # harmless for indexes without on-disk lists
    if mmap and not ondisk:
        flags = mmap_flag(factory) | faiss.IO_FLAG_READ_ONLY
    try:
        with quiet_stdout():
            index = faiss.read_index(str(path), flags)
    except RuntimeError as e:
        raise TomerayError(f"FAISS index {path} is corrupt or not a FAISS index ({faiss_reason(e)}): "
                           "rebuild it with 'tomeray index'") from None
    if not isinstance(index, faiss.IndexIDMap):
        raise TomerayError(f"FAISS index {path} does not map video ids (it is a {type(index).__name__}, "
                           "not an IndexIDMap): rebuild it with 'tomeray index'")
    return index


def index_ids(index: faiss.Index) -> np.ndarray:
    """The int64 ids stored in an id-mapped index, in insertion (position) order."""
    return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)


def ids_digest(index: faiss.Index) -> str:
    """Which rows the index holds, in order (what its tuning's ground truth and its delta file
    belong to)."""
    return hashlib.blake2b(index_ids(index).tobytes(), digest_size=8).hexdigest()
