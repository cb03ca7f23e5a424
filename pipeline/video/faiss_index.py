"""FAISS indexes over video embeddings: create, train, add, save, load (or memory-map), search.

Every index is an ``IndexIDMap`` over int64 ids (the ``video_id`` of the embeddings table), so a
search returns ids that join straight back to the Parquet metadata; the index inside stores the
vectors at positions 0..N-1 (:mod:`.faiss_merge` appends, removes and merges on that basis).
The metric is inner product on L2-normalised vectors, i.e. cosine similarity; vectors and
queries are normalised here so callers cannot get it subtly wrong.

The index type is a FAISS factory string (``"Flat"``, ``"IVF1024,Flat"``, ``"HNSW32"`` ...) or a
preset name from :data:`FAISS_PRESETS` whose sizes are derived from the number of vectors:

* ``flat``  exact search; the default and the right choice up to a few hundred thousand videos.
* ``ivf``   inverted lists, ``nlist ~ 4*sqrt(N)`` (at most N/39 so k-means has enough points).
* ``hnsw``  graph index, no training, fast queries, slower build, more memory.
* ``ivfpq`` inverted lists + product quantisation (``D/8`` bytes per vector) whose candidates
  are re-ranked with 8-bit scalar-quantised vectors (``Refine(SQ8)``, ``D`` bytes per vector):
  the PQ codes alone rank the top 10 too coarsely (recall@10 ~0.4 on clustered data).

Too few vectors: a *preset* that needs more training vectors than there are falls back to exact
``Flat`` search with a logged warning; an explicit factory string is taken literally and raises
:class:`InputError` when it cannot be trained.

Serving from disk (:func:`load_index` ``mmap=True``): IVF indexes map their inverted lists (codes
and ids); flat, HNSW and re-ranked IVF-PQ indexes map their stored vectors / re-ranking codes
(HNSW keeps its graph, IVF-PQ its PQ lists in memory). Indexes built with on-disk inverted lists
(``index-*.ivfdata`` next to the index file) are always mapped.

GPU: with faiss-gpu and a visible GPU, k-means training runs on it and searches can run on it
(``index_to_device``); what is saved is always the portable CPU form.
"""

from __future__ import annotations

import hashlib
import logging
import math

import faiss
import numpy as np
from tomeray.models.errors import ConfigError, InputError
from tomeray.pipeline.video.faiss_files import (  # (part of this module's interface)
    deserialize_index,
    ids_digest,
    index_ids,
    load_index,
    mmap_flag,
    save_index,
    serialize_index,
)
from tomeray.pipeline.video.faiss_runtime import (
    faiss_reason,
    gpu_available,
    index_to_device,
    inner_index,
    resolve_use_gpu,
)

log = logging.getLogger(__name__)

__all__ = [
    "FAISS_PRESETS", "METRICS", "add_vectors", "as_vectors", "build_index", "default_train_size",
    "deserialize_index", "estimated_bytes_per_vector",
    "finalize_defaults", "gpu_available", "hnsw_ef_construction", "index_ids", "index_to_device",
    "ids_digest", "inner_index", "ivf_or_none",
    "load_index", "metric_name", "mmap_flag", "new_index", "resolve_factory", "resolve_use_gpu", "save_index",
    "search_index", "search_defaults", "serialize_index", "train_index",
    "trained_fingerprint",
]

# name -> factory template; {nlist} and {m} are filled in from N and D by resolve_factory.
FAISS_PRESETS: dict[str, str] = {
    "flat": "Flat",
    "ivf": "IVF{nlist},Flat",
    "hnsw": "HNSW32",
    # "np": no polysemous training, which only serves Hamming pre-filtering (off by default) and
    # would triple the build time.
    "ivfpq": "IVF{nlist},PQ{m}np,Refine(SQ8)",
}

# FAISS k-means wants at least this many training points per centroid (it warns below it).
MIN_POINTS_PER_CENTROID = 39
# Below this many lists an IVF index is no faster than exact search.
MIN_NLIST = 8
PQ_CENTROIDS = 256  # 8-bit product-quantiser codes
# 64 points per code word fit 8-d sub-spaces well and train ~4x faster than FAISS's default 256.
PQ_POINTS_PER_CENTROID = 64
TRAIN_POINTS_PER_CENTROID = 64  # default training sample: 64 vectors per IVF list / PQ code word
# Search defaults, saved with the index (measured with jobs/bench_faiss.py on clustered data:
# recall@10 >= 0.95 for each preset). IVF probes 1/32 of its lists, and never fewer than 64.
NPROBE_DIVISOR, MIN_NPROBE = 32, 64
HNSW_EF_SEARCH = 128
REFINE_K_FACTOR = 32  # IVF-PQ passes 32 * k candidates to the SQ8 re-ranking
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


# --------------------------------------------------------------------------------------------
# choosing the index type


def _preset_nlist(n: int) -> int:
    return min(round(4 * math.sqrt(max(n, 1))), n // MIN_POINTS_PER_CENTROID)


def hnsw_ef_construction(n: int) -> int:
    """HNSW build depth for a graph of ``n`` vectors: FAISS's 40 suits small graphs; larger ones
    need a deeper build to stay navigable. Over 1M clustered vectors, HNSW32 built with 40 reaches
    recall@10 0.69 at ef_search 128, and built with 80 levels off near 0.92 however far it searches
    (0.915 at ef_search 4096), while 80 still suffices at 300k (0.965 at ef_search 96)."""
    return 40 if n <= 250_000 else 80 if n <= 500_000 else 160


def _pq_subquantizers(dim: int) -> int:
    """Largest divisor of ``dim`` giving >= 8 dimensions per sub-quantiser (64 for 512-d)."""
    return max(m for m in range(1, max(dim // 8, 1) + 1) if dim % m == 0)


def resolve_factory(spec: str, n: int, dim: int) -> str:
    """The concrete FAISS factory string for a preset name or factory string, given N vectors of
    dimension ``dim`` (what the manifest records). Presets that need more training vectors than
    ``n`` fall back to ``"Flat"`` with a warning; factory strings are returned unchanged."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"FAISS index type must be a preset ({', '.join(FAISS_PRESETS)}) "
                          f"or a factory string, got {spec!r}")
    spec = spec.strip()
    name = spec.lower()
    if name not in FAISS_PRESETS:
        return spec
    template = FAISS_PRESETS[name]
    if "{nlist}" not in template:
        return template
    nlist = _preset_nlist(n)
    needed = MIN_POINTS_PER_CENTROID * MIN_NLIST
    if "PQ" in template:
        needed = max(needed, MIN_POINTS_PER_CENTROID * PQ_CENTROIDS)
    if nlist < MIN_NLIST or n < needed:
        log.warning("FAISS preset '%s' needs at least %d vectors to train, the index has %d: "
                    "using exact Flat search instead", name, needed, n)
        return "Flat"
    return template.format(nlist=nlist, m=_pq_subquantizers(dim))


def metric_name(metric_type: int) -> str:
    return next((name for name, value in METRICS.items() if value == metric_type), str(metric_type))


# --------------------------------------------------------------------------------------------
# create / train / add


def as_vectors(x: np.ndarray, what: str, metric: str = "ip", *, copy: bool = True) -> np.ndarray:
    """``x`` (N, D) as checked float32 C-ordered vectors, L2-normalised for ``metric="ip"``: a
    fresh copy, or with ``copy=False`` ``x`` itself when it already is such an array (normalised
    in place, to spare memory)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"{what} must be a 2-D array (N, D), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{what} must be floating point, got {x.dtype}")
    x = np.array(x, dtype=np.float32, order="C", copy=True if copy else None)
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise InputError(f"{what} contain NaN or infinite values (rows {bad[:5].tolist()}...)")
    if metric == "ip" and len(x):
        faiss.normalize_L2(x)
    return x


def new_index(factory: str, n: int, dim: int, metric: str = "ip") -> tuple[faiss.Index, str]:
    """An empty, untrained id-mapped index for ``factory`` (a preset sized for ``n`` vectors, or
    a factory string) and the concrete factory string."""
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if dim <= 0:
        raise InputError(f"embeddings have dimension {dim}")
    concrete = resolve_factory(factory, n, dim)
    try:
        inner = faiss.index_factory(dim, concrete, METRICS[metric])
    except RuntimeError as e:
        raise ConfigError(f"invalid FAISS factory string {concrete!r}: {faiss_reason(e)}; use a preset "
                          f"({', '.join(FAISS_PRESETS)}) or see the FAISS index_factory docs") from None
    for part in _components(inner):
        if isinstance(part, faiss.IndexHNSW):
            part.hnsw.efSearch = HNSW_EF_SEARCH
            if factory.strip().lower() == "hnsw":  # the preset sizes its build for N
                part.hnsw.efConstruction = hnsw_ef_construction(n)
    if isinstance(inner, faiss.IndexRefine):
        inner.k_factor = REFINE_K_FACTOR
    return faiss.IndexIDMap(inner), concrete  # (FAISS's wrapper keeps ``inner`` alive with it)


def _components(inner: faiss.Index) -> list[faiss.Index]:
    """The parts of an index that hold trained state or data: a re-ranked index has two."""
    if isinstance(inner, faiss.IndexRefine):
        return [faiss.downcast_index(inner.base_index), faiss.downcast_index(inner.refine_index)]
    return [inner]


def default_train_size(index: faiss.Index) -> int:
    ivf = ivf_or_none(index)
    return TRAIN_POINTS_PER_CENTROID * max(ivf.nlist if ivf is not None else 1, PQ_CENTROIDS)


def train_index(index: faiss.Index, sample: np.ndarray, factory: str = "",
                use_gpu: str | bool = "auto") -> None:
    """Train ``index`` on ``sample`` (already checked and normalised, see :func:`as_vectors`).
    With a GPU, the k-means of IVF training runs on it."""
    if index.is_trained:
        return
    for part in _components(inner_index(index)):  # training settings are not saved with an index:
        if isinstance(part, faiss.IndexIVF):      # set them here, so a copy sent to a worker trains alike
            part.cp.spherical = part.metric_type == faiss.METRIC_INNER_PRODUCT  # (as the factory does)
        if isinstance(part, faiss.IndexIVFPQ):
            part.pq.cp.max_points_per_centroid = PQ_POINTS_PER_CENTROID
    ivf = ivf_or_none(index)
    if ivf is not None and resolve_use_gpu(use_gpu):
        flat = faiss.IndexFlatIP(index.d) if ivf.metric_type == faiss.METRIC_INNER_PRODUCT \
            else faiss.IndexFlatL2(index.d)
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(flat)
    try:
        index.train(sample)
    except RuntimeError as e:
        raise InputError(f"cannot train FAISS index {factory!r} on {len(sample)} vectors: "
                         f"{faiss_reason(e)}; choose fewer lists/centroids, a preset "
                         f"({', '.join(FAISS_PRESETS)}) that sizes itself, or 'Flat'") from None
    finally:
        if ivf is not None:
            ivf.clustering_index = None
    finalize_defaults(index)


def finalize_defaults(index: faiss.Index) -> None:
    """The search defaults saved with a trained index (overridable per search)."""
    ivf = ivf_or_none(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, max(ivf.nlist // NPROBE_DIVISOR, MIN_NPROBE))


def estimated_bytes_per_vector(index: faiss.Index) -> float:
    """Bytes one vector takes in an index of this type: codes, ids, graph links."""
    total = 8.0  # its id in the id map
    for part in _components(inner_index(index)):
        if isinstance(part, faiss.IndexIVF):
            total += part.code_size + 8  # code + position in its inverted list
        elif isinstance(part, faiss.IndexHNSW):
            total += faiss.downcast_index(part.storage).code_size + 4 * part.hnsw.nb_neighbors(0) * 1.1
        elif isinstance(part, faiss.IndexFlatCodes):
            total += part.code_size
        else:
            total += 4 * index.d
    return total


def check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise InputError(f"ids must have shape ({n},) to match the embeddings, got {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"ids must be integers, got {ids.dtype}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(np.unique(ids)) != n:
        raise InputError("ids must be unique: the index maps each id to one vector")
    return ids


def add_vectors(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add checked, normalised ``vectors`` under ``ids`` to a trained id-mapped index."""
    if len(vectors):
        index.add_with_ids(vectors, ids)


def build_index(
    embeddings: np.ndarray,
    ids: np.ndarray,
    factory: str = "Flat",
    *,
    metric: str = "ip",
    train_size: int | None = None,
    seed: int = 0,
    use_gpu: str | bool = "auto",
) -> faiss.Index:
    """An id-mapped index over ``ids`` holding ``embeddings`` (N, D), in memory, in one go.

    ``factory`` is a preset name or a FAISS factory string (see the module doc). Indexes that need
    training are trained on a seeded random sample of ``train_size`` vectors (default: 64 per
    list or code word, at most N). With ``metric="ip"`` vectors are L2-normalised (cosine).
    (The indexing job builds from its Parquet shards instead: :mod:`.faiss_build`.)"""
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    x = as_vectors(embeddings, "embeddings", metric)
    n, dim = x.shape
    ids = check_ids(ids, n)
    resolve_use_gpu(use_gpu)
    index, concrete = new_index(factory, n, dim, metric)
    if not index.is_trained:
        size = default_train_size(index) if train_size is None else train_size
        if size < 1:
            raise ConfigError(f"train_size must be positive, got {size}")
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)) if size < n else None
        train_index(index, x if rows is None else x[rows], concrete, use_gpu)
    finalize_defaults(index)
    add_vectors(index, x, ids)
    log.info("built FAISS index %s over %d vectors of dimension %d (metric %s)", concrete, n, dim, metric)
    return index


def ivf_or_none(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def trained_fingerprint(index: faiss.Index) -> str:
    """A short digest of an index's trained parts (coarse centroids, and the codes they give a
    fixed probe set), so two indexes with equal fingerprints encode every vector the same way,
    whatever data they hold."""
    probe = np.random.default_rng(12345).standard_normal((64, index.d)).astype(np.float32)
    faiss.normalize_L2(probe)
    digest = hashlib.blake2b(f"{index.d}:{index.metric_type}".encode(), digest_size=8)
    for part in _components(inner_index(index)):
        ivf = ivf_or_none(part)
        if isinstance(part, faiss.IndexHNSW):
            digest.update(b"hnsw")
            part = faiss.downcast_index(part.storage)
        elif ivf is not None:
            digest.update(b"ivf")
            digest.update(ivf.quantizer.reconstruct_n(0, ivf.nlist).tobytes())
        digest.update(part.sa_encode(probe).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# search


def search_index(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
    k_factor: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(scores, ids)`` per query, each (Q, k), best first. Scores are cosine
    similarities for inner-product indexes. Where an approximate index finds fewer than ``k``
    neighbours the id is -1 (FAISS's convention). ``nprobe`` (IVF), ``ef_search`` (HNSW) and
    ``k_factor`` (re-ranking: candidates per result) trade speed for recall for this call only;
    index types without them ignore them."""
    if not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    metric = "ip" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
    q = as_vectors(queries, "queries", metric)
    if q.shape[1] != index.d:
        raise InputError(f"queries have dimension {q.shape[1]} but the index has {index.d}")
    k = int(min(k, index.ntotal))
    if k == 0 or len(q) == 0:
        return np.zeros((len(q), k), np.float32), np.full((len(q), k), -1, np.int64)
    params = _search_params(inner_index(index), nprobe, ef_search, k_factor)
    return index.search(q, k, params=params)


def _plain_params(inner: faiss.Index, nprobe: int | None, ef_search: int | None):
    if nprobe is not None and ivf_or_none(inner) is not None:
        return faiss.SearchParametersIVF(nprobe=int(nprobe))
    if ef_search is not None and isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=int(ef_search))
    return None


def _search_params(inner: faiss.Index, nprobe: int | None, ef_search: int | None, k_factor: int | None):
    if not isinstance(inner, faiss.IndexRefine):
        return _plain_params(inner, nprobe, ef_search)
    base = _plain_params(faiss.downcast_index(inner.base_index), nprobe, ef_search)
    if base is None and k_factor is None:
        return None
    params = faiss.IndexRefineSearchParameters(k_factor=float(k_factor or inner.k_factor))
    if base is not None:
        params.base_index_params = base
        params.referenced_base = base  # SWIG does not keep the base parameters alive by itself
    return params


def search_defaults(index: faiss.Index) -> dict:
    """The search settings saved with the index: ``nprobe``, ``ef_search``, ``k_factor`` (None
    where the index type has no such setting)."""
    inner = inner_index(index)
    parts = _components(inner)
    ivf = ivf_or_none(inner)
    hnsw = next((p for p in parts if isinstance(p, faiss.IndexHNSW)), None)
    return {"nprobe": int(ivf.nprobe) if ivf is not None else None,
            "ef_search": int(hnsw.hnsw.efSearch) if hnsw is not None else None,
            "k_factor": float(inner.k_factor) if isinstance(inner, faiss.IndexRefine) else None}
