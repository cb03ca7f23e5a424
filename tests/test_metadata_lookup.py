"""The search side of an index's metadata: the memory-mapped id -> row lookup table, filters that
select rows before the FAISS search (flat, IVF and HNSW), and the searcher's pages, filters and
"more like this" on a synthetic index (real Parquet shards, real FAISS, no encoder needed)."""

from __future__ import annotations

import fnmatch

import faiss
import numpy as np
import pyarrow as pa
import pytest
from ranking import assert_same_ranking
from serving import DIM, IDENTITY, shard, write_synthetic
from tomeray.models.errors import InputError
from tomeray.pipeline.video.faiss_index import build_index
from tomeray.pipeline.video.filters import SearchFilters, matching_ids, rank
from tomeray.pipeline.video.layout import IndexLayout, index_header, thumbnails_schema
from tomeray.pipeline.video.metadata import MetadataTable, lookup_fingerprint
from tomeray.pipeline.video.search import VideoSearcher


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("meta") / "idx")


def test_lookup_table_matches_the_parquet_parts_and_is_memory_mapped(synthetic):
    layout, _ = synthetic
    table = MetadataTable.open(layout)
    expected = layout.read_embeddings(["video_id", "path", "start_s", "end_s", "duration_s"]).to_pylist()
    assert len(table) == len(expected) and table.num_paths == len({r["path"] for r in expected})
    positions = table.positions([r["video_id"] for r in expected])
    assert (positions >= 0).all()
    assert [table.row(int(p)) for p in positions] == expected
    # read from disk on demand, not loaded: views of memory-mapped files
    assert all(isinstance(table.columns[c].base, np.memmap) and not table.columns[c].flags.owndata
               for c in ("ids", "start_s", "path", "shard"))
    assert np.all(np.diff(table.ids) > 0)
    unknown = np.array([1, 2**62 + 5, -1], np.int64)
    assert table.positions(unknown).tolist() == [-1, -1, -1]
    # (shard, row) point at the row itself
    shard_path, row = table.shard_row(int(positions[17]))
    import pyarrow.parquet as pq

    assert pq.read_table(shard_path)["video_id"][row].as_py() == expected[17]["video_id"]


def test_lookup_table_is_built_once_and_follows_new_parts(tmp_path):
    layout, (ids, paths, starts, durations, vectors) = write_synthetic(tmp_path / "idx", n=40, parts=2)
    first = MetadataTable.open(layout)
    stamp = (first.folder / "ids.npy").stat().st_mtime_ns
    assert MetadataTable.open(layout).folder == first.folder
    assert (first.folder / "ids.npy").stat().st_mtime_ns == stamp  # opened, not rebuilt
    # a later part repeating an id: the earliest row wins (as in read_embeddings), new ids are added
    new_ids = np.array([ids[0], 7, 8], np.int64)
    layout.write_embeddings(shard(new_ids, ["/elsewhere/x.mp4"] * 3, [0.0] * 3, [5.0] * 3, vectors[:3]),
                            "test-99999")
    second = MetadataTable.open(layout)
    assert second.folder != first.folder and not first.folder.exists()  # the stale table is removed
    assert second.row(int(second.positions([ids[0]])[0]))["path"] == paths[0]
    assert second.row(int(second.positions([7])[0]))["path"] == "/elsewhere/x.mp4"
    assert len(second) == 42
    # thumbnails: each row's JPEG is found through the table
    layout.write_thumbnails(pa.Table.from_pydict({"video_id": [int(ids[3]), 7], "thumbnail": [b"a", b"bb"]},
                                                 schema=thumbnails_schema()), "test-00000")
    third = MetadataTable.open(layout)
    assert third.thumbnail_row(int(third.positions([ids[3]])[0]))[1] == 0
    assert third.thumbnail_row(int(third.positions([7])[0]))[1] == 1
    assert third.thumbnail_row(int(third.positions([ids[4]])[0])) is None
    assert lookup_fingerprint(layout) == third.folder.name


def test_lookup_table_goes_to_the_cache_when_the_index_is_read_only(tmp_path, monkeypatch):
    layout, _ = write_synthetic(tmp_path / "idx", n=12, parts=1)
    layout.lookup_dir.write_text("not a directory")  # the index cannot hold the table
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    table = MetadataTable.open(layout)
    assert (tmp_path / "cache") in table.folder.parents and len(table) == 12


def test_an_empty_index_has_an_empty_table(tmp_path):
    layout = IndexLayout(tmp_path / "empty")
    layout.open(index_header(IDENTITY, "random-init(seed=0)", DIM, {"fps": None}, None))
    table = MetadataTable.open(layout)
    assert len(table) == 0 and table.num_paths == 0 and table.positions([5]).tolist() == [-1]


def brute_force(data, filters: SearchFilters) -> set[int]:
    ids, paths, starts, durations, _ = data
    keep = set()
    for i, video_id in enumerate(ids):
        end = starts[i] + 2.0
        if filters.path_prefix and not paths[i].startswith(filters.path_prefix):
            continue
        if filters.path_glob and not fnmatch.fnmatchcase(paths[i], filters.path_glob):
            continue
        if filters.duration_min is not None and durations[i] < filters.duration_min:
            continue
        if filters.duration_max is not None and durations[i] > filters.duration_max:
            continue
        if filters.time_min is not None and end <= filters.time_min:
            continue
        if filters.time_max is not None and starts[i] > filters.time_max:
            continue
        keep.add(int(video_id))
    return keep


@pytest.mark.parametrize("filters", [
    SearchFilters(path_prefix="/corpus/cats/"),
    SearchFilters(path_glob="*.webm"),
    SearchFilters(path_glob="*/dogs/*", duration_min=10.0, duration_max=12.0),
    SearchFilters(time_min=3.0, time_max=5.0),
    SearchFilters(path_prefix="/nowhere/"),
])
def test_filters_select_exactly_the_matching_rows(synthetic, filters):
    layout, data = synthetic
    assert set(matching_ids(MetadataTable.open(layout), filters).tolist()) == brute_force(data, filters)


def test_bad_filters_are_refused():
    for bad in ({"duration_min": -1.0}, {"time_min": float("nan")}, {"time_min": "soon"}, {"path_glob": 3},
                {"duration_min": 5.0, "duration_max": 2.0}):
        with pytest.raises(InputError):
            SearchFilters(**bad)
    assert not SearchFilters() and SearchFilters(path_glob="*.mp4")


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW8"])
def test_filtered_search_returns_the_best_matching_rows(factory):
    """Rows selected before the search: a selective filter still gets its k best matches (an IVF
    probing one list, or a shallow HNSW, falls back to an exhaustive search)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(2000, dtype=np.int64) * 11 + 5
    index = build_index(x, ids, factory, use_gpu="never")
    if "IVF" in factory:
        faiss.extract_index_ivf(index).nprobe = 1
    if "HNSW" in factory:
        faiss.downcast_index(index.index).hnsw.efSearch = 4
    allowed = np.sort(ids[rng.choice(2000, 40, replace=False)])
    q = x[:3]
    got = rank(index, q, 10, allowed)
    exact = q @ x[np.searchsorted(ids, allowed)].T
    for row in range(3):
        best = allowed[np.argsort(-exact[row])[:10]]
        assert set(got.ids[row].tolist()) == set(best.tolist())
        assert got.complete[row]
    assert got.matches == 40
    # fewer matches than asked for: all of them, and complete
    few = rank(index, q[:1], 10, allowed[:3])
    assert sorted(few.ids[0][few.ids[0] >= 0].tolist()) == allowed[:3].tolist() and few.complete[0]
    none = rank(index, q[:1], 5, allowed[:0])
    assert (none.ids == -1).all() and none.complete[0] and none.matches == 0


def test_searcher_pages_filters_and_more_like_this(synthetic):
    layout, (ids, paths, _, _, vectors) = synthetic
    searcher = VideoSearcher(layout.root, "cpu")
    query = vectors[5:6] + 0.3 * vectors[6:7]
    whole = searcher.search_embeddings(query, k=30)[0]
    pages = [searcher.search_embeddings(query, k=10, offset=o)[0] for o in (0, 10, 20)]
    assert [r.video_id for p in pages for r in p] == [r.video_id for r in whole]
    assert [r.rank for r in pages[1]] == list(range(11, 21))
    beyond = searcher.search_embeddings(query, k=10, offset=len(ids) - 4)[0]
    assert len(beyond) == 4
    cats = searcher.search_embeddings(query, k=15, filters=SearchFilters(path_prefix="/corpus/cats/"))[0]
    assert len(cats) == 15 and all(r.path.startswith("/corpus/cats/") for r in cats)
    expected = [(r.video_id, r.score) for r in whole if r.path.startswith("/corpus/cats/")][:15]
    assert_same_ranking([(r.video_id, r.score) for r in cats][: len(expected)], expected)
    like = searcher.search_like(int(ids[9]), k=5)
    assert int(ids[9]) not in [r.video_id for r in like] and len(like) == 5
    np.testing.assert_allclose(searcher.embedding_of(int(ids[9])), vectors[9], rtol=0, atol=0)
    assert searcher.search_embeddings(vectors[9:10], k=6)[0][1:] == [
        type(r)(r.rank + 1, r.score, r.video_id, r.path, r.start_s, r.end_s, r.duration_s) for r in like]
    assert searcher.row(int(ids[2])).path == paths[2] and searcher.row(12345) is None
    with pytest.raises(InputError, match="not in index"):
        searcher.search_like(12345)
    with pytest.raises(InputError, match="offset"):
        searcher.search_embeddings(query, k=3, offset=-1)
