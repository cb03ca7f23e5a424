"""The search service without HTTP: micro-batching, several indexes served together (results merged by
score, a row in two indexes once), "more like this" across indexes, refusing indexes of another model,
and reloads that swap atomically or keep serving the old version when the new one is broken."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from ranking import assert_same_ranking, hits
from serving import corpus, shard, write_synthetic
from tomeray.models.errors import InputError
from tomeray.models.tempme import VideoModelConfig, create_video_encoder
from tomeray.pipeline.core.config import load_config
from tomeray.pipeline.core.output import IncompatibleOutputError
from tomeray.pipeline.video.config import FaissConfig
from tomeray.pipeline.video.filters import SearchFilters
from tomeray.pipeline.video.job import finish_index
from tomeray.pipeline.video.serve.batcher import MicroBatcher
from tomeray.pipeline.video.serve.config import ServeConfig
from tomeray.pipeline.video.serve.service import NotFound, Query, SearchService

MODEL = VideoModelConfig(arch="ViT-S-32", pretrained="none", preset="none", num_frames=4)


def test_queries_arriving_while_a_batch_runs_form_the_next_batch():
    release, batches = threading.Event(), []

    def process(items):
        batches.append(list(items))
        if len(batches) == 1:
            release.wait(10)
        return [ValueError(f"bad {i}") if i == "bad" else i * 2 for i in items]

    batcher = MicroBatcher(process, max_batch=4)
    first = batcher.submit(1)
    while not batches:
        time.sleep(0.001)
    later = [batcher.submit(i) for i in (2, 3, "bad", 5, 6)]
    release.set()
    assert first.result(10) == 2
    assert [f.result(10) for f in later[:2]] == [4, 6]
    with pytest.raises(ValueError, match="bad bad"):
        later[2].result(10)
    assert [f.result(10) for f in later[3:]] == [10, 12]
    assert batches == [[1], [2, 3, "bad", 5], [6]]  # at most max_batch, in arrival order
    batcher.close()


@pytest.fixture(scope="module")
def encoder():
    return create_video_encoder(MODEL, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def identity(encoder):
    return json.loads(json.dumps(encoder.identity(), default=str)), encoder.embed_dim


def serve(dirs, encoder, *overrides) -> SearchService:
    cfg = load_config(ServeConfig, "serve", ["inference.device=cpu", "server.reload_s=0", *overrides])
    return SearchService([str(d) for d in dirs], cfg, encoder=encoder)


@pytest.fixture(scope="module")
def two_indexes(identity, encoder, tmp_path_factory):
    ident, dim = identity
    root = tmp_path_factory.mktemp("two")
    a, data_a = write_synthetic(root / "a", n=40, parts=1, seed=1, identity=ident, dim=dim)
    b, data_b = write_synthetic(root / "b", n=24, parts=1, seed=2, identity=ident, dim=dim)
    service = serve([a.root, b.root], encoder)
    yield service, data_a, data_b
    service.close()


def test_two_indexes_are_searched_together(two_indexes):
    service, (ids_a, _, _, _, va), (ids_b, _, _, _, vb) = two_indexes
    assert [i.name for i in service.indexes] == ["a", "b"] and service.stats()["rows"] == 64
    query = va[3] + vb[5]  # a row of each index on top, with (nearly) equal scores
    body = service.search(Query(vector=query, k=64))
    every = np.concatenate([va, vb]) @ (query / np.linalg.norm(query))
    expected = sorted(zip(np.concatenate([ids_a, ids_b]).tolist(), every.tolist()), key=lambda p: -p[1])
    assert_same_ranking(hits(body), expected, cut=False)
    assert {h["index"] for h in body["results"][:2]} == {"a", "b"}
    page = service.search(Query(vector=query, k=5, offset=5))
    assert page["results"] == body["results"][5:10] and page["has_more"]  # one fixed order, sliced
    liked = service.search(Query(like=int(ids_b[0]), k=3))
    assert int(ids_b[0]) not in [int(h["video_id"]) for h in liked["results"]]
    filtered = service.search(Query(vector=query, k=64, filters=SearchFilters(path_glob="*.webm")))
    assert filtered["matches"] == sum(h["path"].endswith(".webm") for h in body["results"])
    with pytest.raises(NotFound):
        service.search(Query(like=12345, k=3))


def test_hits_of_equal_score_come_in_index_order_then_by_id(identity, encoder, tmp_path):
    """A deliberate exact tie: one vector stored under two ids of index "b" and one id of index "a"
    (given second and first). Every score is computed from the same bits, so the three tie exactly;
    the documented order is score, then the order the indexes were given, then id, on every page."""
    ident, dim = identity
    tie = corpus(1, seed=11, dim=dim)[4][0]
    a, (ids_a, *_) = write_synthetic(tmp_path / "a", n=12, parts=1, seed=4, identity=ident, dim=dim,
                                     same={9: tie})
    b, (ids_b, *_) = write_synthetic(tmp_path / "b", n=12, parts=1, seed=5, identity=ident, dim=dim,
                                     same={2: tie, 7: tie})
    service = serve([a.root, b.root], encoder)
    try:
        body = service.search(Query(vector=tie, k=5))
        top = body["results"][:3]
        assert len({h["score"] for h in top}) == 1 and body["results"][3]["score"] < top[0]["score"]
        order = [(h["index"], int(h["video_id"])) for h in top]
        assert order == [("a", int(ids_a[9]))] + sorted([("b", int(ids_b[2])), ("b", int(ids_b[7]))],
                                                          key=lambda h: h[1])
        for offset in range(4):  # pages of one hit each: the same order, no hit twice or skipped
            page = service.search(Query(vector=tie, k=1, offset=offset))["results"]
            assert page == body["results"][offset : offset + 1]
    finally:
        service.close()


def test_a_row_in_two_indexes_is_one_hit(identity, encoder, tmp_path):
    ident, dim = identity
    options = {"n": 12, "parts": 1, "seed": 3, "identity": ident, "dim": dim}
    a, (ids, *_rest, vectors) = write_synthetic(tmp_path / "a", **options)
    write_synthetic(tmp_path / "b", **options)  # the same rows
    service = serve([a.root, tmp_path / "b"], encoder)
    try:
        hits = service.search(Query(vector=vectors[0], k=30))["results"]
        assert sorted(int(h["video_id"]) for h in hits) == sorted(ids.tolist())
    finally:
        service.close()


def test_indexes_of_another_model_are_refused(identity, encoder, tmp_path):
    ident, dim = identity
    a, _ = write_synthetic(tmp_path / "a", n=8, parts=1, identity=ident, dim=dim)
    other, _ = write_synthetic(tmp_path / "other", n=8, parts=1, identity={**ident, "num_frames": 8}, dim=dim)
    with pytest.raises(IncompatibleOutputError):
        serve([a.root, other.root], encoder)
    with pytest.raises(InputError, match="no index given"):
        SearchService([], ServeConfig())


def test_reload_swaps_atomically_and_a_broken_update_keeps_the_old_version(identity, encoder, tmp_path):
    ident, dim = identity
    layout, (ids, *_r, vectors) = write_synthetic(tmp_path / "a", n=10, parts=1, identity=ident, dim=dim)
    service = serve([layout.root], encoder)
    try:
        held = service.indexes
        more = corpus(10, seed=7, dim=dim)
        layout.write_embeddings(shard(more[0], more[1], more[2], more[3], more[4]), "later-00000")
        finish_index(layout, layout.read_manifest(), FaissConfig(), True, layout.indexed_paths())
        assert service.reload(0)
        assert len(service.indexes[0].searcher) == 20 and len(held[0].searcher) == 10
        assert held[0].searcher.search_embeddings(vectors[:1], k=1)[0][0].video_id == ids[0]  # still usable
        layout.manifest_path.write_text("{ not json")
        assert not service.reload(0)
        assert len(service.indexes[0].searcher) == 20  # still the last good version
        assert "unreadable" in service.stats()["indexes"][0]["reload_error"]
    finally:
        service.close()
