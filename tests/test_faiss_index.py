"""pipeline.video.faiss_index on real FAISS indexes: build, save/load (and memory-mapped loads),
search, presets, GPU selection."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest
from tomeray.jobs.bench_faiss_data import make_vectors
from tomeray.models.errors import ConfigError, InputError, TomerayError
from tomeray.pipeline.video import faiss_index as fi
from tomeray.pipeline.video import faiss_runtime as fi_runtime


def unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall_at_10(index, base, queries) -> float:
    exact = queries @ base.T
    truth = np.argsort(-exact, axis=1)[:, :10]
    _, found = fi.search_index(index, queries, 10)
    return np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth)])


def test_round_trip_keeps_ids_vectors_and_settings(tmp_path):
    x = unit(500, 16)
    ids = np.random.default_rng(1).choice(2**62, size=500, replace=False).astype(np.int64)
    index = fi.build_index(x, ids, "IVF8,Flat")
    path = fi.save_index(index, tmp_path / "sub" / "index.faiss")
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    loaded = fi.load_index(path)
    assert isinstance(loaded, faiss.IndexIDMap)
    assert loaded.ntotal == 500 and loaded.d == 16
    np.testing.assert_array_equal(fi.index_ids(loaded), ids)
    assert faiss.extract_index_ivf(loaded).nprobe == faiss.extract_index_ivf(index).nprobe
    assert fi.trained_fingerprint(loaded) == fi.trained_fingerprint(index)
    # Each vector finds itself (exhaustive probing), by its own id, with cosine 1.
    scores, found = fi.search_index(loaded, x[:20], 1, nprobe=8)
    np.testing.assert_array_equal(found[:, 0], ids[:20])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_inner_product_is_cosine_whatever_the_vector_norms():
    x = unit(200, 8)
    index = fi.build_index(x * 7.5, np.arange(200), "flat")
    s1, i1 = fi.search_index(index, x[:5], 3)
    s2, i2 = fi.search_index(index, x[:5] * 0.01, 3)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    np.testing.assert_allclose(s1[:, 0], 1.0, atol=1e-5)
    assert (np.diff(s1, axis=1) <= 1e-7).all()  # best first


def test_k_beyond_the_index_size_and_empty_indexes():
    index = fi.build_index(unit(3, 8), np.array([10, 20, 30]))
    scores, ids = fi.search_index(index, unit(2, 8, seed=5), 10)
    assert ids.shape == (2, 3) and sorted(ids[0]) == [10, 20, 30]
    empty = fi.build_index(np.zeros((0, 8), np.float32), np.zeros(0, np.int64))
    scores, ids = fi.search_index(empty, unit(2, 8), 5)
    assert scores.shape == ids.shape == (2, 0)


@pytest.fixture(scope="module")
def ivfpq_case():
    base, queries = make_vectors("clustered", 10000, 32, 100, seed=3)
    return base, queries, fi.build_index(base, np.arange(10000), "ivfpq")


@pytest.mark.parametrize("preset, n", [("ivf", 4000), ("hnsw", 4000), ("ivfpq", 10000)])
def test_presets_reach_high_recall_at_their_default_settings(preset, n, ivfpq_case):
    base, queries = make_vectors("clustered", n, 32, 100, seed=3)
    index = ivfpq_case[2] if preset == "ivfpq" else fi.build_index(base, np.arange(n), preset)
    assert fi.resolve_factory(preset, n, 32) != "Flat"
    inner = faiss.downcast_index(index.index)
    if preset == "ivfpq":  # IVF-PQ candidates re-ranked with 8-bit scalar-quantised vectors
        assert isinstance(inner, faiss.IndexRefine)
        assert isinstance(faiss.downcast_index(inner.base_index), faiss.IndexIVFPQ)
        assert isinstance(faiss.downcast_index(inner.refine_index), faiss.IndexScalarQuantizer)
    else:
        assert isinstance(inner, {"ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSW}[preset])
    assert recall_at_10(index, base, queries) >= 0.95


def test_re_ranking_is_what_lifts_ivfpq_recall(ivfpq_case):
    base, queries, index = ivfpq_case
    exact = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    recalls = []
    for k_factor in (1, 4, 32):
        _, found = fi.search_index(index, queries, 10, k_factor=k_factor)
        recalls.append(np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, exact)]))
    assert recalls[0] < recalls[1] < recalls[2]
    assert fi.search_defaults(index)["k_factor"] == fi.REFINE_K_FACTOR
    # nprobe reaches the IVF-PQ under the re-ranking: one list only is worse than the default
    _, one_list = fi.search_index(index, queries, 10, nprobe=1)
    assert np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(one_list, exact)]) < recalls[2]


def test_more_probes_never_lower_recall():
    base, queries = make_vectors("clustered", 4000, 32, 100, seed=4)
    index = fi.build_index(base, np.arange(4000), "ivf")
    nlist = faiss.extract_index_ivf(index).nlist
    exact = queries @ base.T
    truth = np.argsort(-exact, axis=1)[:, :10]
    recalls = []
    for nprobe in (1, 4, nlist):
        _, found = fi.search_index(index, queries, 10, nprobe=nprobe)
        recalls.append(np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth)]))
    assert recalls[0] <= recalls[1] <= recalls[2] == 1.0


def test_presets_size_themselves_and_fall_back_to_flat_when_too_small(caplog):
    assert fi.resolve_factory("ivf", 1_000_000, 512) == "IVF4000,Flat"
    assert fi.resolve_factory("ivfpq", 1_000_000, 512) == "IVF4000,PQ64np,Refine(SQ8)"
    assert fi.resolve_factory("IVF ", 5000, 512) == "IVF128,Flat"  # nlist capped at N/39
    assert fi.resolve_factory("hnsw", 10, 512) == "HNSW32"
    assert fi.resolve_factory("IVF64,Flat", 10, 512) == "IVF64,Flat"  # factory strings are literal
    with caplog.at_level(logging.WARNING, logger="tomeray.pipeline.video.faiss_index"):
        index = fi.build_index(unit(100, 16), np.arange(100), "ivf")
    assert "Flat" in caplog.text and "ivf" in caplog.text
    assert isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)


def test_explicit_factory_with_too_few_vectors_is_a_clear_error():
    with pytest.raises(InputError, match=r"cannot train FAISS index 'IVF256,Flat' on 100 vectors.*preset"):
        fi.build_index(unit(100, 16), np.arange(100), "IVF256,Flat")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"factory": "IVFbogus"}, ConfigError, "invalid FAISS factory string 'IVFbogus'"),
    ({"factory": ""}, ConfigError, "preset"),
    ({"metric": "cos"}, ConfigError, "metric"),
    ({"ids": np.zeros(50, np.int64)}, InputError, "unique"),
    ({"ids": np.arange(49)}, InputError, "shape"),
    ({"embeddings": np.full((50, 8), np.nan, np.float32)}, InputError, "NaN"),
    ({"embeddings": np.ones(50, np.float32)}, InputError, "2-D"),
    ({"train_size": 0, "factory": "IVF2,Flat"}, ConfigError, "train_size"),
])
def test_bad_build_arguments(kwargs, error, match):
    args = {"embeddings": unit(50, 8), "ids": np.arange(50), **kwargs}
    with pytest.raises(error, match=match):
        fi.build_index(**args)


def test_training_uses_a_seeded_sample():
    x = unit(3000, 16)
    a = fi.build_index(x, np.arange(3000), "IVF16,Flat", train_size=800, seed=1)
    b = fi.build_index(x, np.arange(3000), "IVF16,Flat", train_size=800, seed=1)
    c = fi.build_index(x, np.arange(3000), "IVF16,Flat", train_size=800, seed=2)
    centroids = [faiss.extract_index_ivf(i).quantizer.reconstruct_n(0, 16) for i in (a, b, c)]
    np.testing.assert_array_equal(centroids[0], centroids[1])
    assert not np.allclose(centroids[0], centroids[2])


def test_search_argument_errors():
    index = fi.build_index(unit(10, 8), np.arange(10))
    with pytest.raises(InputError, match="k must be a positive integer"):
        fi.search_index(index, unit(1, 8), 0)
    with pytest.raises(InputError, match="dimension 4 but the index has 8"):
        fi.search_index(index, unit(1, 4), 3)


def test_load_errors_are_one_line_and_name_the_file(tmp_path):
    with pytest.raises(TomerayError, match="does not exist") as missing:
        fi.load_index(tmp_path / "nope.faiss")
    corrupt = tmp_path / "corrupt.faiss"
    good = fi.save_index(fi.build_index(unit(100, 8), np.arange(100)), tmp_path / "good.faiss")
    corrupt.write_bytes(good.read_bytes()[:300])  # truncated
    with pytest.raises(TomerayError, match="corrupt") as truncated:
        fi.load_index(corrupt)
    corrupt.write_bytes(b"not a faiss index at all")
    with pytest.raises(TomerayError, match="corrupt") as garbage:
        fi.load_index(corrupt)
    bare = tmp_path / "bare.faiss"
    faiss.write_index(faiss.IndexFlatIP(8), str(bare))
    with pytest.raises(TomerayError, match="does not map video ids") as unmapped:
        fi.load_index(bare)
    for error in (missing, truncated, garbage, unmapped):
        message = str(error.value)
        assert "\n" not in message and str(tmp_path) in message


def test_gpu_selection_follows_what_faiss_sees():
    has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    assert fi.gpu_available() is has_gpu
    assert fi.resolve_use_gpu("auto") is has_gpu
    assert fi.resolve_use_gpu("never") is False and fi.resolve_use_gpu(False) is False
    with pytest.raises(ConfigError, match="use_gpu must be one of"):
        fi.resolve_use_gpu("sometimes")
    if has_gpu:
        assert fi.resolve_use_gpu("always") is True
    else:
        with pytest.raises(ConfigError, match="sees no GPU"):
            fi.resolve_use_gpu("always")
        with pytest.raises(ConfigError, match="sees no GPU"):
            fi.build_index(unit(10, 8), np.arange(10), use_gpu=True)


def test_only_flat_and_ivf_indexes_are_sent_to_a_gpu():
    x = unit(400, 8)
    flat = fi.build_index(x, np.arange(400), "Flat", use_gpu="never")
    ivf = fi.build_index(x, np.arange(400), "IVF4,Flat", use_gpu="never")
    hnsw = fi.build_index(x, np.arange(400), "HNSW16", use_gpu="never")
    ivfpq = fi.build_index(unit(20000, 16), np.arange(20000), "ivfpq", use_gpu="never")
    capable = fi_runtime._gpu_capable
    assert capable(flat) and capable(ivf) and not capable(hnsw) and not capable(ivfpq)
    assert fi.index_to_device(hnsw, "auto") is hnsw
    assert fi.index_to_device(flat, "never") is flat
    moved = fi.index_to_device(flat, "auto")
    assert (moved is flat) is not fi.gpu_available()
    # Whatever the device, search results and the saved form are the same.
    np.testing.assert_array_equal(fi.search_index(moved, x[:5], 3)[1], fi.search_index(flat, x[:5], 3)[1])


@pytest.mark.parametrize("preset", ["flat", "IVF8,Flat", "hnsw", "IVF8,PQ4np,Refine(SQ8)"])
def test_memory_mapped_loads_search_like_reads(tmp_path, preset):
    base, queries = make_vectors("clustered", 3000, 16, 20, seed=5)
    index = fi.build_index(base, np.arange(3000) * 3, preset)
    path = fi.save_index(index, tmp_path / "index.faiss")
    factory = fi.resolve_factory(preset, 3000, 16)
    read = fi.load_index(path)
    mapped = fi.load_index(path, mmap=True, factory=factory)
    ivf = fi.ivf_or_none(mapped)
    if fi.mmap_flag(factory) == faiss.IO_FLAG_MMAP:  # IVF: the inverted lists are mapped from the file
        assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
    for knobs in ({}, {"nprobe": 2}, {"ef_search": 16}):
        expected = fi.search_index(read, queries, 5, **knobs)
        got = fi.search_index(mapped, queries, 5, **knobs)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-5)


def test_mmap_part_follows_the_factory():
    assert fi.mmap_flag("IVF100,Flat") == faiss.IO_FLAG_MMAP
    assert fi.mmap_flag("IVF100,PQ8") == faiss.IO_FLAG_MMAP
    for factory in ("Flat", "HNSW32", "IVF100,PQ8np,Refine(SQ8)", "IVF100,PQ8,RFlat"):
        assert fi.mmap_flag(factory) == faiss.IO_FLAG_MMAP_IFC


def test_fingerprints_tell_trained_parts_apart():
    x = unit(2000, 16)
    a = fi.build_index(x, np.arange(2000), "IVF8,Flat", train_size=500, seed=1)
    twin = fi.build_index(x, np.arange(2000), "IVF8,Flat", train_size=500, seed=1)
    other_sample = fi.build_index(x, np.arange(2000), "IVF8,Flat", train_size=500, seed=2)
    assert fi.trained_fingerprint(a) == fi.trained_fingerprint(twin)
    assert fi.trained_fingerprint(a) != fi.trained_fingerprint(other_sample)
    # the same trained parts holding other vectors: the same fingerprint
    emptied = fi.deserialize_index(fi.serialize_index(a))
    emptied.reset()
    assert emptied.ntotal == 0 and fi.trained_fingerprint(emptied) == fi.trained_fingerprint(a)
    pq = [fi.build_index(x, np.arange(2000), "IVF8,PQ4np", train_size=1200, seed=s) for s in (1, 2)]
    assert fi.trained_fingerprint(pq[0]) != fi.trained_fingerprint(pq[1])
    flat, hnsw = (fi.build_index(x, np.arange(2000), f) for f in ("flat", "hnsw"))
    assert fi.trained_fingerprint(flat) != fi.trained_fingerprint(hnsw)


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,PQ4x4np,Refine(SQ8)"])
def test_a_template_sent_to_a_worker_trains_like_the_original(factory):
    """Training settings FAISS does not save (spherical k-means for inner product, PQ sampling)
    are set when training, so a serialised copy of an untrained index trains to the same parts."""
    sample = unit(1024, 16)
    original, concrete = fi.new_index(factory, 8000, 16, "ip")
    copy = fi.deserialize_index(fi.serialize_index(original))
    for index in (original, copy):
        fi.train_index(index, sample, concrete, use_gpu="never")
    assert fi.trained_fingerprint(copy) == fi.trained_fingerprint(original)
