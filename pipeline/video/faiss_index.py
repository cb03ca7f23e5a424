"""FAISS indexes over video embeddings: build, save, load, search.

Every index is an ``IndexIDMap2`` over int64 ids (the ``video_id`` of the embeddings table), so a
search returns ids that join straight back to the Parquet metadata. The metric is inner product on
L2-normalised vectors, i.e. cosine similarity; vectors and queries are normalised here so callers
cannot get it subtly wrong.

The index type is a FAISS factory string (``"Flat"``, ``"IVF1024,Flat"``, ``"HNSW32"`` ...) or a
preset name from :data:`FAISS_PRESETS` whose sizes are derived from the number of vectors:

* ``flat``  exact search; the default and the right choice up to a few hundred thousand videos.
* ``ivf``   inverted lists, ``nlist ~ 4*sqrt(N)`` (at most N/39 so k-means has enough points).
* ``hnsw``  graph index, no training, fast queries, slower build, more memory.
* ``ivfpq`` inverted lists + product quantisation (``D/8`` bytes per vector): for corpora that
  do not fit in memory as float32.

Too few vectors: a *preset* that needs more training vectors than there are falls back to exact
``Flat`` search with a logged warning (exact search over so few vectors is fast anyway); an
explicit factory string is taken literally and raises :class:`InputError` when it cannot be
trained, because silently changing what the user asked for would be worse.

GPU: with faiss-gpu and a visible GPU, training, adding and searching run on it
(``index_cpu_to_all_gpus``); what is saved is always the portable CPU form.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import faiss
import numpy as np
from tomeray.models.errors import ConfigError, InputError, TomerayError
from tomeray.pipeline.core.atomic import atomic_write_with

log = logging.getLogger(__name__)

__all__ = [
    "FAISS_PRESETS",
    "build_index",
    "gpu_available",
    "index_ids",
    "index_to_device",
    "load_index",
    "resolve_factory",
    "resolve_use_gpu",
    "save_index",
    "search_index",
]

# name -> factory template; {nlist} and {m} are filled in from N and D by resolve_factory.
FAISS_PRESETS: dict[str, str] = {
    "flat": "Flat",
    "ivf": "IVF{nlist},Flat",
    "hnsw": "HNSW32",
    # "np": no polysemous training, which only serves Hamming pre-filtering (off by default) and
    # would triple the build time.
    "ivfpq": "IVF{nlist},PQ{m}np",
}

# FAISS k-means wants at least this many training points per centroid (it warns below it).
MIN_POINTS_PER_CENTROID = 39
# Below this many lists an IVF index is no faster than exact search.
MIN_NLIST = 8
PQ_CENTROIDS = 256  # 8-bit product-quantiser codes
# 64 points per code word fit 8-d sub-spaces well and train ~4x faster than FAISS's default 256.
PQ_POINTS_PER_CENTROID = 64
HNSW_EF_SEARCH = 64  # FAISS's default of 16 loses recall for little speed on our sizes
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
USE_GPU_CHOICES = ("auto", "always", "never")


# --------------------------------------------------------------------------------------------
# choosing the index type


def _preset_nlist(n: int) -> int:
    return min(round(4 * math.sqrt(max(n, 1))), n // MIN_POINTS_PER_CENTROID)


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


# --------------------------------------------------------------------------------------------
# GPU selection


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_use_gpu(use_gpu: str | bool) -> bool:
    """``"auto"`` (GPU when available), ``"always"`` (error without one) or ``"never"``; booleans
    mean always/never."""
    if isinstance(use_gpu, bool):
        use_gpu = "always" if use_gpu else "never"
    choice = str(use_gpu).lower()
    if choice not in USE_GPU_CHOICES:
        raise ConfigError(f"use_gpu must be one of {', '.join(USE_GPU_CHOICES)}, got {use_gpu!r}")
    if choice == "never":
        return False
    available = gpu_available()
    if choice == "always" and not available:
        raise ConfigError("use_gpu='always' but FAISS sees no GPU (faiss-cpu is installed or no CUDA "
                          "device is visible): install faiss-gpu (see README) or use 'auto'")
    return available


def _gpu_capable(index: faiss.Index) -> bool:
    """FAISS has GPU versions of flat and IVF indexes only; HNSW and friends stay on the CPU."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return isinstance(inner, faiss.IndexFlat | faiss.IndexIVF)


def index_to_device(index: faiss.Index, use_gpu: str | bool = "auto") -> faiss.Index:
    """The index on all visible GPUs when ``use_gpu`` allows it and FAISS can, else unchanged
    (``"auto"`` stays on the CPU with a warning if the GPU copy fails; ``"always"`` raises)."""
    if not resolve_use_gpu(use_gpu):
        return index
    if not _gpu_capable(index):
        log.info("FAISS has no GPU version of this index type; it stays on the CPU")
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = True  # IVF-PQ with many sub-quantisers needs float16 lookup tables
    try:
        return faiss.index_cpu_to_all_gpus(index, co=options)
    except RuntimeError as e:
        if str(use_gpu).lower() in ("always", "true"):
            raise ConfigError(f"cannot move the FAISS index to the GPU: {_faiss_reason(e)}") from None
        log.warning("FAISS index stays on the CPU: the GPU copy failed (%s)", _faiss_reason(e))
        return index


def _to_cpu(index: faiss.Index) -> faiss.Index:
    # A CPU index goes through unchanged in effect (a clone); only GPU builds can hold GPU indexes.
    return faiss.index_gpu_to_cpu(index) if gpu_available() else index


# --------------------------------------------------------------------------------------------
# build / save / load / search


def _faiss_reason(error: Exception) -> str:
    """The human part of a FAISS C++ error ("Error in <signature> at file:line: <reason>")."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    match = re.search(r" at [^ ]+:\d+: (.*)$", text)
    reason = match.group(1) if match else text
    return reason.removeprefix("Error: ")


def _as_vectors(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"{what} must be a 2-D array (N, D), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{what} must be floating point, got {x.dtype}")
    x = np.array(x, dtype=np.float32, order="C", copy=True)  # normalised in place below
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise InputError(f"{what} contain NaN or infinite values (rows {bad[:5].tolist()}...)")
    return x


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
    """An ``IndexIDMap2`` over ``ids`` holding ``embeddings`` (N, D).

    ``factory`` is a preset name or a FAISS factory string (see the module doc). Indexes that need
    training are trained on a seeded random sample of ``train_size`` vectors (default: enough for
    FAISS's k-means, at most N). With ``metric="ip"`` vectors are L2-normalised (cosine)."""
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    x = _as_vectors(embeddings, "embeddings")
    n, dim = x.shape
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise InputError(f"ids must have shape ({n},) to match the embeddings, got {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"ids must be integers, got {ids.dtype}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(np.unique(ids)) != n:
        raise InputError("ids must be unique: the index maps each id to one vector")
    if dim == 0:
        raise InputError("embeddings have dimension 0")
    if metric == "ip":
        faiss.normalize_L2(x)

    concrete = resolve_factory(factory, n, dim)
    try:
        inner = faiss.index_factory(dim, concrete, METRICS[metric])
    except RuntimeError as e:
        raise ConfigError(f"invalid FAISS factory string {concrete!r}: {_faiss_reason(e)}; use a preset "
                          f"({', '.join(FAISS_PRESETS)}) or see the FAISS index_factory docs") from None
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    if isinstance(inner, faiss.IndexIVFPQ):
        inner.pq.cp.max_points_per_centroid = PQ_POINTS_PER_CENTROID
    index = index_to_device(faiss.IndexIDMap2(inner), use_gpu)

    if not index.is_trained:
        sample = _training_sample(x, inner, train_size, seed)
        try:
            index.train(sample)
        except RuntimeError as e:
            raise InputError(f"cannot train FAISS index {concrete!r} on {len(sample)} vectors: "
                             f"{_faiss_reason(e)}; choose fewer lists/centroids, a preset "
                             f"({', '.join(FAISS_PRESETS)}) that sizes itself, or 'Flat'") from None
    if n:
        index.add_with_ids(x, ids)
    index = _to_cpu(index)
    ivf = _ivf_or_none(index)
    if ivf is not None:
        # Probing ~1/16 of the lists keeps recall high on real (clustered) embeddings; the value is
        # saved with the index and can be overridden per search.
        ivf.nprobe = max(1, ivf.nlist // 16)
        ivf.make_direct_map()  # so that IndexIDMap2.reconstruct(video_id) works, at 8 bytes a vector
    log.info("built FAISS index %s over %d vectors of dimension %d (metric %s)", concrete, n, dim, metric)
    return index


def _training_sample(x: np.ndarray, inner: faiss.Index, train_size: int | None, seed: int) -> np.ndarray:
    n = len(x)
    if train_size is None:
        ivf = _ivf_or_none(inner)
        centroids = max(ivf.nlist if ivf is not None else 1, PQ_CENTROIDS)
        train_size = 64 * centroids
    if train_size < 1:
        raise ConfigError(f"train_size must be positive, got {train_size}")
    if train_size >= n:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(n, size=train_size, replace=False))
    return x[rows]


def _ivf_or_none(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """Write the index atomically, always in its portable CPU form."""
    cpu = _to_cpu(index)
    return atomic_write_with(path, lambda tmp: faiss.write_index(cpu, tmp))


def load_index(path: str | Path) -> faiss.Index:
    """Read an index written by :func:`save_index` (a CPU index); one-line TomerayError if the file
    is missing, corrupt or not an id-mapped index."""
    path = Path(path)
    if not path.is_file():
        raise TomerayError(f"FAISS index {path} does not exist: build the index with 'tomeray index'")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        raise TomerayError(f"FAISS index {path} is corrupt or not a FAISS index ({_faiss_reason(e)}): "
                           "rebuild it with 'tomeray index'") from None
    if not isinstance(index, faiss.IndexIDMap):
        raise TomerayError(f"FAISS index {path} does not map video ids (it is a {type(index).__name__}, "
                           "not an IndexIDMap2): rebuild it with 'tomeray index'")
    return index


def index_ids(index: faiss.Index) -> np.ndarray:
    """The int64 ids stored in an id-mapped index, in insertion order."""
    return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)


def search_index(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(scores, ids)`` per query, each (Q, k), best first. Scores are cosine
    similarities for inner-product indexes. Where an approximate index finds fewer than ``k``
    neighbours the id is -1 (FAISS's convention). ``nprobe`` (IVF) and ``ef_search`` (HNSW) trade
    speed for recall for this call only; they are ignored by index types without them."""
    if not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    q = _as_vectors(queries, "queries")
    if q.shape[1] != index.d:
        raise InputError(f"queries have dimension {q.shape[1]} but the index has {index.d}")
    if index.metric_type == faiss.METRIC_INNER_PRODUCT:
        faiss.normalize_L2(q)
    k = int(min(k, index.ntotal))
    if k == 0 or len(q) == 0:
        return np.zeros((len(q), k), np.float32), np.full((len(q), k), -1, np.int64)
    return index.search(q, k, params=_search_params(index, nprobe, ef_search))


def _search_params(index: faiss.Index, nprobe: int | None, ef_search: int | None):
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if nprobe is not None and _ivf_or_none(inner) is not None:
        return faiss.SearchParametersIVF(nprobe=int(nprobe))
    if ef_search is not None and isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=int(ef_search))
    return None
