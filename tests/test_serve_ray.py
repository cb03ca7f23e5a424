"""The search service on Ray Serve: two replicas on the local test cluster, each with its own encoder
and index, answer the same queries with the same results as the uvicorn server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from ranking import assert_same_ranking, hits
from serving import TOKEN, free_port
from tomeray.pipeline.core.config import load_config
from tomeray.pipeline.video.serve.config import ServeConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

QUERIES = ["people", "a tree in the wind", "a man talking"]


def test_two_ray_serve_replicas_answer_like_uvicorn(ray_local, served_index, server):
    from ray import serve
    from tomeray.pipeline.video.serve.ray_app import APP_NAME, deploy

    auth = {"Authorization": f"Bearer {TOKEN}"}
    cfg = load_config(ServeConfig, "serve", ["ray.replicas=2", "ray.num_cpus=0.5", "inference.device=cpu",
                                             "server.reload_s=0"])
    url = deploy([str(served_index)], cfg, "127.0.0.1", free_port(), TOKEN)
    try:
        status = serve.status().applications[APP_NAME].deployments["SearchDeployment"]
        assert status.replica_states.get("RUNNING") == 2

        def ask(base: str, q: str) -> dict:
            response = requests.get(base + "/api/search", params={"q": q, "k": 5}, headers=auth, timeout=120)
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(4) as pool:  # concurrent, so both replicas take requests
            on_ray = list(pool.map(lambda q: ask(url, q), QUERIES * 4))
        for q, answer in zip(QUERIES * 4, on_ray):
            expected = ask(server.url, q)
            assert_same_ranking(hits(answer), hits(expected))
        # Ray Serve sends a request to the less busy of two replicas, and an idle pair may keep
        # choosing the same one: requests in flight together are what make the other one answer
        def pid(_) -> int:
            return requests.get(url + "/api/health", timeout=60).json()["pid"]

        pids: set[int] = set()
        with ThreadPoolExecutor(8) as pool:
            for _ in range(20):
                pids |= set(pool.map(pid, range(16)))
                if len(pids) == 2:
                    break
        assert len(pids) == 2  # both replicas answer
        stats = requests.get(url + "/api/stats", headers=auth, timeout=60).json()
        plain = requests.get(server.url + "/api/stats", headers=auth, timeout=60).json()
        assert stats["server"] == "ray-serve" and stats["rows"] == plain["rows"] > 0
        hit = on_ray[0]["results"][0]
        media = requests.get(url + hit["media_url"], headers={**auth, "Range": "bytes=0-99"}, timeout=60)
        assert media.status_code == 206 and len(media.content) == 100
        assert requests.get(url + "/api/stats", timeout=60).status_code == 401
    finally:
        serve.shutdown()
