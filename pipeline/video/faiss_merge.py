"""Growing and combining id-mapped FAISS indexes that share the same trained parts, without
encoding any vector again.

Every index here is an ``IndexIDMap`` whose inner index stores its vectors at positions 0..N-1
(:mod:`.faiss_index`); the id map turns positions into video ids. A *part* is such an index
over one group of rows, made from the same trained template (:func:`encode_part`). Supported
inner indexes: flat codes (``Flat``, ``SQ8`` ...), IVF (any codec), an IVF or flat index
re-ranked by flat codes (``...,Refine(SQ8)``), and HNSW (whose parts hold raw vectors, since
graphs cannot be merged: they are inserted into the graph).

:class:`IndexMerger` takes parts in order and either appends them to an index in memory, or
writes the merged inverted lists of an IVF index into an ``.ivfdata`` file
(``OnDiskInvertedLists``) so the index never has to fit in memory; ids to drop (rows replaced or
deleted since the last build) are removed on the way, renumbering positions.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np
from tomeray.models.errors import ConfigError
from tomeray.pipeline.video.faiss_index import (
    add_vectors,
    deserialize_index,
    index_ids,
    inner_index,
    ivf_or_none,
    serialize_index,
)
from tomeray.pipeline.video.faiss_runtime import quiet_stdout

__all__ = ["IndexMerger", "check_mergeable", "encode_part", "ondisk_file", "part_template", "remove_ids",
           "set_ids", "set_ntotal", "subset"]


def _split(index: faiss.Index) -> tuple[faiss.Index | None, faiss.Index | None]:
    """(IVF part, flat-codes part) of an id-mapped index; ConfigError for other types."""
    inner = inner_index(index)
    if isinstance(inner, faiss.IndexRefine):
        base = faiss.downcast_index(inner.base_index)
        refine = faiss.downcast_index(inner.refine_index)
        if isinstance(refine, faiss.IndexFlatCodes) and isinstance(base, faiss.IndexIVF):
            return base, refine
    elif isinstance(inner, faiss.IndexIVF):
        return inner, None
    elif isinstance(inner, faiss.IndexFlatCodes):
        return None, inner
    raise ConfigError(f"FAISS index type {type(inner).__name__} cannot be grown or merged; use a preset "
                      "(flat, ivf, hnsw, ivfpq) or an IVF / flat factory string")


def check_mergeable(index: faiss.Index) -> None:
    """ConfigError unless parts of this index type can be appended and merged."""
    if not isinstance(inner_index(index), faiss.IndexHNSW):
        _split(index)


def ondisk_file(index: faiss.Index) -> str | None:
    """The name of the ``.ivfdata`` file holding the index's inverted lists, None if in memory."""
    ivf = ivf_or_none(index)
    if ivf is None:
        return None
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        return None
    return Path(lists.filename).name or None  # (none: the index file's own lists, memory-mapped)


def _give_lists(ivf: faiss.IndexIVF, lists) -> None:
    """Hand ``lists`` to the index, which frees them (and the ones it had) from now on."""
    lists.this.disown()
    ivf.replace_invlists(lists, True)


def _lists_to_memory(ivf: faiss.IndexIVF) -> None:
    """Copy mapped on-disk lists into memory (so that changes never touch the file in use)."""
    mapped = ivf.invlists
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    for list_no in range(ivf.nlist):
        ids, codes = _list_entries(mapped, list_no)
        if len(ids):
            lists.add_entries(list_no, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    _give_lists(ivf, lists)


def set_ntotal(index: faiss.Index, n: int) -> None:
    inner = inner_index(index)
    inner.ntotal = n
    if isinstance(inner, faiss.IndexRefine):
        for sub in (inner.base_index, inner.refine_index):
            sub.ntotal = n
    index.ntotal = n


def set_ids(index: faiss.Index, ids: np.ndarray) -> None:
    faiss.copy_array_to_vector(np.ascontiguousarray(ids, dtype=np.int64), index.id_map)


def _flat_codes(codes_index: faiss.Index) -> np.ndarray:
    """The stored codes of a flat-codes index, (N, code_size), as a view."""
    n, size = codes_index.ntotal, codes_index.code_size
    if n == 0:
        return np.zeros((0, size), np.uint8)
    return faiss.rev_swig_ptr(codes_index.codes.data(), n * size).reshape(n, size)


def _list_entries(invlists, list_no: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, codes (n, code_size)) of one inverted list, copied."""
    n = invlists.list_size(list_no)
    size = invlists.code_size
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, size), np.uint8)
    ids_ptr, codes_ptr = invlists.get_ids(list_no), invlists.get_codes(list_no)
    ids = faiss.rev_swig_ptr(ids_ptr, n).copy()
    codes = faiss.rev_swig_ptr(codes_ptr, n * size).copy().reshape(n, size)
    invlists.release_ids(list_no, ids_ptr)
    invlists.release_codes(list_no, codes_ptr)
    return ids, codes


def _remap(ids: np.ndarray, drop: np.ndarray, offset: int = 0) -> np.ndarray:
    """Old position -> new position (``offset`` + rank among the kept), -1 for dropped ids."""
    keep = ~np.isin(ids, drop) if len(drop) else np.ones(len(ids), bool)
    remap = np.full(len(ids), -1, np.int64)
    remap[keep] = offset + np.arange(int(keep.sum()))
    return remap


def part_template(template: faiss.Index) -> faiss.Index:
    """The empty index a part is encoded into: the template itself, except for HNSW, whose parts
    hold the raw vectors (a graph is built by inserting them, not by merging graphs)."""
    inner = inner_index(template)
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.IndexIDMap(faiss.IndexFlat(template.d, template.metric_type))
    return deserialize_index(serialize_index(template))


def encode_part(template: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """A part: ``vectors`` (checked, normalised) under ``ids``, encoded with the template's trained parts."""
    part = part_template(template)
    add_vectors(part, vectors, ids)
    return part


def remove_ids(index: faiss.Index, drop: np.ndarray, template: faiss.Index | None = None) -> faiss.Index:
    """``index`` without the vectors of ``drop`` (ids), compacted in place; an HNSW index is
    rebuilt from its kept vectors (in an empty copy of ``template``). Returns the index."""
    ids = index_ids(index)
    remap = _remap(ids, np.asarray(drop, np.int64))
    keep = remap >= 0
    if keep.all():
        return index
    if isinstance(inner_index(index), faiss.IndexHNSW):
        vectors = inner_index(index).reconstruct_n(0, index.ntotal)[keep]
        rebuilt = deserialize_index(serialize_index(template)) if template is not None else None
        if rebuilt is None:
            raise ConfigError("removing vectors from an HNSW index needs its trained template")
        add_vectors(rebuilt, vectors, ids[keep])
        return rebuilt
    ivf, codes = _split(index)
    if ivf is not None:
        invlists = ivf.invlists
        for list_no in range(ivf.nlist):
            positions, entries = _list_entries(invlists, list_no)
            if not len(positions):
                continue
            new = remap[positions]
            kept = new >= 0
            invlists.resize(list_no, int(kept.sum()))
            if kept.any():
                new_ids, new_codes = np.ascontiguousarray(new[kept]), np.ascontiguousarray(entries[kept])
                invlists.update_entries(list_no, 0, len(new_ids), faiss.swig_ptr(new_ids),
                                        faiss.swig_ptr(new_codes))
    if codes is not None:
        kept_codes = _flat_codes(codes)[keep].copy()
        codes.reset()
        codes.add_sa_codes(kept_codes)
    set_ids(index, ids[keep])
    set_ntotal(index, int(keep.sum()))
    return index


def subset(index: faiss.Index, keep: np.ndarray, template: faiss.Index, chunk: int = 65_536) -> faiss.Index:
    """A new index, made from an empty copy of ``template`` (the same trained parts), holding the
    rows of ``index`` where ``keep`` (bool, by position) is set, in their order. ``index`` is only
    read, a list or a chunk at a time, so it may be memory-mapped: only the subset is held."""
    out = deserialize_index(serialize_index(template))
    ids = index_ids(index)
    if isinstance(inner_index(index), faiss.IndexHNSW):  # a graph is rebuilt from its kept vectors
        inner = inner_index(index)
        for start in range(0, index.ntotal, chunk):
            rows = np.flatnonzero(keep[start:start + chunk]) + start
            if len(rows):
                out.add_with_ids(inner.reconstruct_batch(rows), ids[rows])
        return out
    remap = np.where(keep, np.cumsum(keep) - 1, -1)
    ivf, codes = _split(index)
    out_ivf, out_codes = _split(out)
    if ivf is not None:
        for list_no in range(ivf.nlist):
            positions, entries = _list_entries(ivf.invlists, list_no)
            new = remap[positions]
            kept = new >= 0
            if kept.any():
                new_ids, new_codes = np.ascontiguousarray(new[kept]), np.ascontiguousarray(entries[kept])
                out_ivf.invlists.add_entries(list_no, len(new_ids), faiss.swig_ptr(new_ids),
                                             faiss.swig_ptr(new_codes))
    if codes is not None:
        all_codes = _flat_codes(codes)
        for start in range(0, index.ntotal, chunk):
            rows = np.flatnonzero(keep[start:start + chunk]) + start
            out_codes.add_sa_codes(np.ascontiguousarray(all_codes[rows]))
    set_ids(out, ids[keep])
    set_ntotal(out, int(keep.sum()))
    return out


class IndexMerger:
    """Merges parts, in the order given, into ``base`` (an index with the same trained parts: the
    previous index, or an empty template), first dropping the ids in ``drop`` from ``base``.

    ``ivfdata``: write the merged inverted lists of an IVF index into this file instead of memory
    (``base`` may itself be mapped from disk; parts wait in temporary files in its folder until
    :meth:`finish`). Otherwise parts are appended to ``base`` in place."""

    def __init__(self, base: faiss.Index, template: faiss.Index, drop: np.ndarray | None = None,
                 ivfdata: str | Path | None = None):
        self.template = template
        self.ivfdata = Path(ivfdata) if ivfdata else None
        drop = np.asarray(drop if drop is not None else [], np.int64)
        if self.ivfdata is None:
            if ondisk_file(base):
                _lists_to_memory(ivf_or_none(base))
            self.index = remove_ids(base, drop, template)
            self._lists = []
            return
        self.index = deserialize_index(serialize_index(template))
        out_ivf, out_codes = _split(self.index)
        if out_ivf is None:
            raise ConfigError("on-disk inverted lists need an IVF index (ivf, ivfpq or an IVF factory "
                              "string); flat and HNSW indexes are served from disk by memory-mapping")
        self._ids = [index_ids(base)]
        remap = _remap(self._ids[0], drop)
        self._ids[0] = self._ids[0][remap >= 0]
        base_ivf, base_codes = _split(base)
        if out_codes is not None:
            out_codes.add_sa_codes(np.ascontiguousarray(_flat_codes(base_codes)[remap >= 0]))
        self._lists = [(base, base_ivf.invlists, remap)]  # base keeps its lists alive
        self._count = len(self._ids[0])
        self._spilled: list[Path] = []

    def add(self, part: faiss.Index) -> None:
        """Append one part (its positions follow everything added before it)."""
        if self.ivfdata is None:
            self._append_in_memory(part)
            return
        part_ivf, part_codes = _split(part)
        _, out_codes = _split(self.index)
        if out_codes is not None:
            out_codes.add_sa_codes(np.ascontiguousarray(_flat_codes(part_codes)))
        ids = index_ids(part)
        self._ids.append(ids)
        # The part's lists wait on disk (mapped back at finish), so memory holds one part at a time.
        spill = self.ivfdata.parent / f".{self.ivfdata.stem}.part{len(self._spilled):05d}.tmp"
        faiss.write_index(part_ivf, str(spill))
        self._spilled.append(spill)
        mapped = faiss.read_index(str(spill), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        remap = self._count + np.arange(len(ids), dtype=np.int64)
        self._lists.append((mapped, mapped.invlists, remap))
        self._count += len(ids)

    def _append_in_memory(self, part: faiss.Index) -> None:
        index = self.index
        if isinstance(inner_index(index), faiss.IndexHNSW):
            if part.ntotal:
                index.add_with_ids(inner_index(part).reconstruct_n(0, part.ntotal), index_ids(part))
            return
        offset = index.ntotal
        ids = np.concatenate([index_ids(index), index_ids(part)])
        ivf, codes = _split(index)
        part_ivf, part_codes = _split(part)
        if ivf is not None:
            ivf.merge_from(part_ivf, offset)  # FAISS shifts the part's positions by offset
        if codes is not None:
            codes.add_sa_codes(np.ascontiguousarray(_flat_codes(part_codes)))
        set_ids(index, ids)
        set_ntotal(index, len(ids))

    def finish(self) -> faiss.Index:
        """The merged index (for ``ivfdata``: its lists written to that file, which it refers to)."""
        if self.ivfdata is None:
            return self.index
        out_ivf, _ = _split(self.index)
        self.ivfdata.unlink(missing_ok=True)
        with quiet_stdout():
            lists = faiss.OnDiskInvertedLists(out_ivf.nlist, out_ivf.code_size, str(self.ivfdata))
            # Exact list sizes first (one contiguous layout, no slack), then the entries.
            sizes = np.zeros(out_ivf.nlist, np.uint64)
            for list_no in range(out_ivf.nlist):
                for _, invlists, remap in self._lists:
                    n = invlists.list_size(list_no)
                    if n:
                        ids_ptr = invlists.get_ids(list_no)
                        sizes[list_no] += int((remap[faiss.rev_swig_ptr(ids_ptr, n)] >= 0).sum())
                        invlists.release_ids(list_no, ids_ptr)
            total = int(sizes.sum()) * (out_ivf.code_size + 8)
            if total:
                lists.update_totsize(total)  # grows and maps the file
            lists.set_all_lists_sizes(faiss.swig_ptr(sizes))
            for list_no in np.flatnonzero(sizes):
                ids_parts, code_parts = [], []
                for _, invlists, remap in self._lists:
                    positions, codes = _list_entries(invlists, int(list_no))
                    new = remap[positions]
                    ids_parts.append(new[new >= 0])
                    code_parts.append(codes[new >= 0])
                ids = np.ascontiguousarray(np.concatenate(ids_parts))
                codes = np.ascontiguousarray(np.concatenate(code_parts))
                lists.update_entries(int(list_no), 0, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
        _give_lists(out_ivf, lists)
        self._lists.clear()
        for spill in self._spilled:
            spill.unlink(missing_ok=True)
        set_ids(self.index, np.concatenate(self._ids))
        set_ntotal(self.index, self._count)
        with open(self.ivfdata, "rb+") as f:  # the lists are on disk before the index names them
            os.fsync(f.fileno())
        return self.index
