"""Small additions to an IVF index go to a delta file next to it (pipeline.video.faiss_delta), on
real Parquet shards and real FAISS files: the index file is left as it was, every reader (in
memory, memory-mapped, a serving shard's subset) sees the same rows and scores as an index grown
by rewriting it, and removals, a delta past its share, or a delta meant for another base fold
everything back into one file."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from tomeray.jobs.bench_faiss_data import make_vectors, write_shard
from tomeray.pipeline.video import faiss_build
from tomeray.pipeline.video.faiss_build import trained_paths, update_faiss
from tomeray.pipeline.video.faiss_config import FaissConfig
from tomeray.pipeline.video.faiss_delta import delta_files
from tomeray.pipeline.video.faiss_index import index_ids, load_index, search_defaults, search_index
from tomeray.pipeline.video.faiss_merge import subset

N, DIM, STEP = 8000, 64, 200  # each later shard adds 2.5 %
CFG = FaissConfig(factory="IVF32,Flat", target_recall=0.9, tune_queries=200)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base, queries = make_vectors("clustered", N + 4 * STEP, DIM, 50, seed=5)
    folder = tmp_path_factory.mktemp("delta-corpus")
    first = folder / "part-a-000.parquet"
    write_shard(first, np.arange(N), base[:N])
    later = []
    for i in range(4):
        later.append(folder / f"part-b-{i:03d}.parquet")
        rows = np.arange(N + i * STEP, N + (i + 1) * STEP)
        write_shard(later[-1], rows, base[rows])
    return queries, first, later


def digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=8).hexdigest()


def same_answers(a, b, queries, nprobe=8):
    sa, ia = search_index(a, queries, 10, nprobe=nprobe)
    sb, ib = search_index(b, queries, 10, nprobe=nprobe)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, rtol=0, atol=1e-6)


def test_small_adds_go_to_a_delta_and_every_reader_sees_one_index(tmp_path, corpus, monkeypatch):
    queries, first, later = corpus
    grown, rewritten = tmp_path / "delta" / "index.faiss", tmp_path / "full" / "index.faiss"
    entry = update_faiss(grown, [first], CFG, dim=DIM)
    shutil.copytree(grown.parent, rewritten.parent)
    base_bytes = digest(grown)
    full = entry
    for i in range(1, 3):
        entry = update_faiss(grown, [first, *later[:i]], CFG, dim=DIM, prior=entry)
        assert entry["build"]["mode"] == "incremental" and entry["build"]["delta_rows"] == i * STEP
        assert digest(grown) == base_bytes  # the index file is not rewritten
        assert [p.name for p in delta_files(grown)] == [entry["delta"]]
        assert entry["ntotal"] == N + i * STEP and entry["tuning"]["met"]
        with monkeypatch.context() as m:  # the same growth, rewriting the whole file each time
            m.setattr(faiss_build, "DELTA_SHARE", 0.0)
            full = update_faiss(rewritten, [first, *later[:i]], CFG, dim=DIM, prior=full)
        assert full["delta"] is None and not delta_files(rewritten)
    reference = load_index(rewritten)
    in_memory = load_index(grown)
    mapped = load_index(grown, mmap=True, factory=entry["factory"])
    for index in (in_memory, mapped):
        assert index.ntotal == N + 2 * STEP
        np.testing.assert_array_equal(index_ids(index), index_ids(reference))
        same_answers(index, reference, queries)
    # the joined index keeps the tuned setting of the pair; a serving shard's copy reads it whole
    assert search_defaults(mapped) == search_defaults(in_memory) == entry["params"]
    template = load_index(trained_paths(grown, entry["trained_fingerprint"])[0])
    half = index_ids(mapped) % 2 == 0
    same_answers(subset(mapped, half, template), subset(reference, half, template), queries)
    # no change: the delta stays; the file's own rows are still the base alone
    unchanged = update_faiss(grown, [first, *later[:2]], CFG, dim=DIM, prior=entry)
    assert unchanged["build"]["mode"] == "unchanged" and unchanged["delta"] == entry["delta"]
    assert delta_files(grown) and load_index(grown, delta=False).ntotal == N


def test_removals_and_a_delta_past_its_share_fold_into_one_file(tmp_path, corpus, monkeypatch):
    queries, first, later = corpus
    path = tmp_path / "index.faiss"
    entry = update_faiss(path, [first], CFG, dim=DIM)
    entry = update_faiss(path, [first, *later[:2]], CFG, dim=DIM, prior=entry)
    assert entry["delta"] and digest(path)
    # a shard removed: its rows leave the index, which is written whole again
    before = digest(path)
    entry = update_faiss(path, [first, later[1]], CFG, dim=DIM, prior=entry)
    assert entry["delta"] is None and not delta_files(path) and digest(path) != before
    ids = index_ids(load_index(path))
    assert len(ids) == N + STEP and not np.isin(np.arange(N, N + STEP), ids).any()
    # past the share: folded in as well
    monkeypatch.setattr(faiss_build, "DELTA_SHARE", 0.02)
    entry = update_faiss(path, [first, *later], CFG, dim=DIM, prior=entry)
    assert entry["delta"] is None and not delta_files(path) and load_index(path).ntotal == N + 4 * STEP


def test_a_delta_meant_for_another_base_is_ignored_and_cleaned_up(tmp_path, corpus):
    queries, first, later = corpus
    path = tmp_path / "index.faiss"
    entry = update_faiss(path, [first], CFG, dim=DIM)
    entry = update_faiss(path, [first, later[0]], CFG, dim=DIM, prior=entry)
    stale = path.parent / entry["delta"]
    kept = stale.read_bytes()
    # the base rewritten (a removal) while an older delta survives, as after a crash mid clean-up
    entry = update_faiss(path, [later[0]], CFG, dim=DIM, prior=entry)
    stale.write_bytes(kept)
    assert load_index(path).ntotal == STEP  # its base digest does not match: not joined
    entry = update_faiss(path, [later[0], later[1]], CFG, dim=DIM, prior=entry)
    assert not stale.exists() and load_index(path).ntotal == 2 * STEP


def test_a_delta_keeps_the_search_settings_of_its_base_when_nothing_is_tuned(tmp_path, corpus):
    queries, first, later = corpus
    path = tmp_path / "index.faiss"
    entry = update_faiss(path, [first], CFG, dim=DIM)  # tuned: not the preset's fixed nprobe
    untuned = FaissConfig(factory=CFG.factory, target_recall=0)
    grown = update_faiss(path, [first, later[0]], untuned, dim=DIM, prior=entry)
    assert grown["delta"] and grown["tuning"] is None
    assert grown["params"] == entry["params"] == search_defaults(load_index(path))
