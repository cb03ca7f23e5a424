"""Sharded search on Ray Serve (pipeline.video.serve.shards) on the local test cluster: with S = 2 and
3 Flat shards, every query (text, like=, filters, pages) answers with the unsharded service's ids
and scores; a killed shard replica is restarted by Ray Serve and answers again; rows added by the
indexing job reach every shard through the hot swap; the shards' parts of a real IVF index are
exactly the index's rows, searched with its tuned settings."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests
from serving import TOKEN, InProcessServer, corpus, free_port, shard, write_synthetic
from tomeray.pipeline.core.config import load_config
from tomeray.pipeline.video.config import FaissConfig
from tomeray.pipeline.video.faiss_index import index_ids, load_index, search_defaults
from tomeray.pipeline.video.job import finish_index
from tomeray.pipeline.video.serve.config import ServeConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

AUTH = {"Authorization": f"Bearer {TOKEN}"}
N = 240


@pytest.fixture(scope="module")
def identity():
    from tomeray.models.tempme import VideoModelConfig, create_video_encoder

    encoder = create_video_encoder(VideoModelConfig(arch="ViT-S-32", pretrained="none", preset="none",
                                                    num_frames=4), device="cpu", precision="fp32")
    return json.loads(json.dumps(encoder.identity(), default=str)), encoder.embed_dim


@pytest.fixture(scope="module")
def sharded_corpus(identity, tmp_path_factory):
    ident, dim = identity
    layout, data = write_synthetic(tmp_path_factory.mktemp("sharded") / "idx", n=N, parts=3, seed=11,
                                   identity=ident, dim=dim)
    return layout, data


@pytest.fixture(scope="module")
def unsharded(sharded_corpus):
    layout, _ = sharded_corpus
    with InProcessServer([layout.root], ["server.reload_s=0"], token=TOKEN) as server:
        yield server


def deploy_sharded(index_dir, shards: int, *overrides: str) -> str:
    from tomeray.pipeline.video.serve.ray_app import deploy

    cfg = load_config(ServeConfig, "serve", ["ray.replicas=1", "ray.num_cpus=0.5", f"ray.shards={shards}",
                                             "ray.shard_cpus=0.25", "inference.device=cpu", *overrides])
    return deploy([str(index_dir)], cfg, "127.0.0.1", free_port(), TOKEN)


def ask(base: str, retry_s: float = 0, **params) -> dict:
    deadline = time.monotonic() + retry_s
    while True:
        response = requests.get(base + "/api/search", params=params, headers=AUTH, timeout=120)
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert response.status_code == 200, response.text
    return response.json()


def same_hits(got: list[dict], expected: list[dict]) -> None:
    """Equal ids and scores, up to the order of exactly tied scores: scores compared with a
    tolerance, ids as sets within each group of equal scores."""
    assert len(got) == len(expected)
    np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in expected], atol=1e-5)
    groups: dict[float, tuple[set, set]] = {}
    for a, b in zip(got, expected):
        key = round(b["score"], 5)
        groups.setdefault(key, (set(), set()))
        groups[key][0].add(a["video_id"])
        groups[key][1].add(b["video_id"])
    for key, (mine, theirs) in groups.items():
        assert mine == theirs, f"score {key}"


QUERIES = [
    {"q": "people walking", "k": 10},
    {"q": "a tree in the wind", "k": 7, "offset": 7},  # page 2
    {"q": "a man talking", "k": 50, "offset": 200},  # the last page, partly empty
    {"q": "cats", "k": 20, "path_prefix": "/corpus/cats"},
    {"q": "dogs", "k": 10, "path_glob": "*.webm", "duration_min": 10},
    {"q": "a clip", "k": 5, "time_min": 4, "time_max": 5, "offset": 5},
]


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_service_answers_like_the_unsharded_index(ray_local, sharded_corpus, unsharded, shards):
    from ray import serve
    from tomeray.pipeline.video.serve.ray_app import APP_NAME

    layout, (ids, *_rest) = sharded_corpus
    url = deploy_sharded(layout.root, shards, "server.reload_s=0")
    try:
        infos = [serve.get_deployment_handle(f"SearchShard-{i}", APP_NAME).info.remote().result(timeout_s=60)
                 for i in range(shards)]
        assert sum(i["rows"] for i in infos) == N  # every row in exactly one shard
        assert all(i["rows"] == int((ids % shards == i["shard"]).sum()) for i in infos)
        assert len({i["pid"] for i in infos}) == shards  # a replica (process) per shard
        likes = [{"like": str(ids[n]), "k": 12} for n in (0, 77)] + [{"like": str(ids[5]), "k": 6,
                                                                      "path_prefix": "/corpus/dogs"}]
        for params in QUERIES + likes:
            got, expected = ask(url, **params), ask(unsharded.url, **params)
            same_hits(got["results"], expected["results"])
            assert (got["has_more"], got["matches"], got["complete"]) == \
                (expected["has_more"], expected["matches"], expected["complete"]), params
        stats = requests.get(url + "/api/stats", headers=AUTH, timeout=60).json()
        assert stats["indexes"][0]["search"]["shards"] == shards and stats["rows"] == N
        replicas = stats["indexes"][0]["search"]["shard_replicas"]
        assert [r["rows"] for r in replicas] == [i["rows"] for i in infos]
        assert all(r["memory_loaded_mb"]["RssAnon"] > 0 for r in replicas)
    finally:
        serve.shutdown()  # (the next deployment starts its HTTP proxy on its own port)


def test_a_killed_sharded_replica_restarts_and_a_hot_swap_reaches_every_shard(ray_local, identity, tmp_path):
    import ray
    from ray import serve
    from tomeray.pipeline.video.serve.ray_app import APP_NAME

    ident, dim = identity
    layout, (ids, *_rest) = write_synthetic(tmp_path / "idx", n=60, parts=2, seed=5, identity=ident, dim=dim)
    url = deploy_sharded(layout.root, 2, "server.reload_s=0.5")
    try:
        before = ask(url, q="people", k=60)
        assert {int(h["video_id"]) for h in before["results"]} == {int(i) for i in ids}
        handle = serve.get_deployment_handle("SearchShard-1", APP_NAME)
        old_pid = handle.info.remote().result(timeout_s=60)["pid"]
        replica = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                       if "SearchShard-1" in a["name"] and a["name"].startswith("SERVE_REPLICA"))
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
        again = ask(url, retry_s=180, q="people", k=60)  # 503 while it restarts, then answers
        same_hits(again["results"], before["results"])
        assert handle.info.remote().result(timeout_s=60)["pid"] != old_pid  # a new replica

        more = corpus(30, seed=9, dim=dim)  # what 'tomeray index' does when it adds rows
        layout.write_embeddings(shard(*more), "later-00000")
        finish_index(layout, layout.read_manifest(), FaissConfig(), True, layout.indexed_paths())
        deadline, new_ids = time.monotonic() + 120, {int(i) for i in more[0]}
        while True:
            found = {int(h["video_id"]) for h in ask(url, retry_s=60, q="people", k=90)["results"]}
            if new_ids <= found or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert found == new_ids | {int(i) for i in ids}
        assert {int(i) % 2 for i in new_ids} == {0, 1}  # the new rows reached both shards
        rows = [serve.get_deployment_handle(f"SearchShard-{i}", APP_NAME).info.remote().result(timeout_s=60)
                ["rows"] for i in range(2)]
        assert sum(rows) == 90
    finally:
        serve.shutdown()  # (the next deployment starts its HTTP proxy on its own port)


def test_sharded_parts_of_an_ivf_index_keep_its_rows_and_tuned_settings(identity, tmp_path):
    from tomeray.pipeline.video.serve.shards import load_shard

    ident, dim = identity
    layout, (ids, *_rest) = write_synthetic(tmp_path / "idx", n=3000, parts=3, seed=2, identity=ident,
                                            dim=dim, factory="IVF16,Flat")
    whole = load_index(layout.faiss_path)
    parts = [load_shard(str(layout.root), s, 3)[0] for s in range(3)]
    assert sorted(np.concatenate([index_ids(p) for p in parts]).tolist()) == sorted(ids.tolist())
    for number, part in enumerate(parts):
        assert (index_ids(part) % 3 == number).all()
        assert search_defaults(part) == search_defaults(whole)  # the tuned nprobe
        tuned = layout.read_manifest()["faiss"]["tuning"]["search"]
        assert search_defaults(part)["nprobe"] == tuned["nprobe"]


def test_sharded_command_line_serves_the_same_ids_as_tomeray_serve(sharded_corpus, unsharded):
    from tomeray.jobs.bench_serve import Server

    layout, _ = sharded_corpus
    args = [str(layout.root), "--ray", "--shards", "2", "--port", str(free_port()), "ray.replicas=1",
            "ray.num_cpus=0.5", "ray.shard_cpus=0.25", "inference.device=cpu", "server.reload_s=0"]
    with Server(args) as server:  # its own local Ray cluster, stopped with it
        for params in QUERIES[:3]:
            same_hits(ask(server.url, **params)["results"], ask(unsharded.url, **params)["results"])
