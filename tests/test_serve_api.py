"""The search service's HTTP API against a real 'tomeray serve' process (uvicorn on a free loopback
port) over an index 'tomeray index' built from the opencv-doc videos with random weights."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import time

import cv2
import numpy as np
import pytest
import requests
from ranking import assert_same_ranking, hits
from serving import SEGMENT_S, TOKEN, WEBM, InProcessServer, build_index
from tomeray.pipeline.video.search import VideoSearcher

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def api(server):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"

    def call(method, path, **kwargs):
        return session.request(method, server.url + path, timeout=60, **kwargs)

    return call


@pytest.fixture(scope="module")
def searcher(served_index):
    return VideoSearcher(served_index, "cpu")


def get(api, path, **params):
    response = api("GET", path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_search_hits_link_a_jpeg_thumbnail_and_the_video_bytes(api, served_corpus):
    body = get(api, "/api/search", q="people", k=3)
    assert len(body["results"]) == 3 and body["random_weights"] is True
    assert body["weights_id"].startswith("random-init")
    for rank, hit in enumerate(body["results"], start=1):
        assert hit["rank"] == rank and set(hit) >= {"score", "video_id", "path", "start_s", "end_s",
                                                    "duration_s", "thumbnail_url", "media_url"}
        thumbnail = api("GET", hit["thumbnail_url"])
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(thumbnail.content, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[0] > 0 and thumbnail.headers["x-thumbnail"] == "index"
        data = (served_corpus / hit["path"]).read_bytes()  # paths are relative to the corpus root
        part = api("GET", hit["media_url"], headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == data[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_range_requests(api, served_corpus):
    hit = get(api, "/api/search", q="a tree", k=1, path_glob=f"*{WEBM}")["results"][0]
    data = (served_corpus / hit["path"]).read_bytes()
    url = hit["media_url"]
    whole = api("GET", url)
    assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "video/webm"
    assert api("GET", url, headers={"Range": "bytes=-100"}).content == data[-100:]
    tail = api("GET", url, headers={"Range": f"bytes={len(data) - 10}-"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    assert api("GET", url, headers={"Range": f"bytes={len(data) + 5}-"}).status_code == 416
    head = api("HEAD", url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(data) and not head.content


def test_text_search_equals_the_searcher_and_pages_add_up(api, searcher):
    expected = searcher.search("people walking", k=8)
    body = get(api, "/api/search", q="people walking", k=8)
    assert_same_ranking(hits(body), [(r.video_id, r.score) for r in expected])
    pages = [get(api, "/api/search", q="people walking", k=3, offset=o) for o in (0, 3, 6)]
    paged = [h["video_id"] for p in pages for h in p["results"]]
    assert paged[:8] == [h["video_id"] for h in body["results"]]
    assert [h["rank"] for h in pages[1]["results"]] == [4, 5, 6]
    assert pages[0]["has_more"] and pages[1]["offset"] == 3
    total = len(searcher)
    last = get(api, "/api/search", q="people walking", k=5, offset=total - 2)
    assert len(last["results"]) == 2 and not last["has_more"]
    posted = api("POST", "/api/search", json={"q": "people walking", "k": 3, "offset": 3}).json()
    assert posted["results"] == pages[1]["results"]


def test_more_like_this_uses_the_stored_embedding(api, searcher):
    seed = get(api, "/api/search", q="people", k=1)["results"][0]
    body = get(api, "/api/search", like=seed["video_id"], k=5)
    expected = searcher.search_like(int(seed["video_id"]), k=5)
    assert_same_ranking(hits(body), [(r.video_id, r.score) for r in expected])
    assert seed["video_id"] not in [h["video_id"] for h in body["results"]]


def test_an_uploaded_clip_or_image_finds_its_own_video(api, served_corpus):
    clip = (served_corpus / "clips" / WEBM).read_bytes()
    raw = api("POST", "/api/search", params={"k": 3}, data=clip,
              headers={"Content-Type": "video/webm"}).json()
    assert raw["query"]["upload"] == "video" and raw["results"][0]["name"] == WEBM
    form = api("POST", "/api/search", files={"file": ("q.webm", clip, "video/webm")}, data={"k": "2"}).json()
    assert [h["video_id"] for h in form["results"]] == [h["video_id"] for h in raw["results"][:2]]
    hit = raw["results"][0]
    image = api("GET", hit["thumbnail_url"]).content
    by_image = api("POST", "/api/search", data=image, headers={"Content-Type": "image/jpeg"},
                   params={"k": 5, "path_glob": "*.webm"}).json()
    assert by_image["query"]["upload"] == "image" and len(by_image["results"]) == 3  # 3 segments


def test_filters_select_before_ranking(api, searcher):
    every = get(api, "/api/search", q="people", k=100)["results"]
    n = len(every)
    assert n == len(searcher)
    cases = [({"path_glob": "*.webm"}, lambda h: fnmatch.fnmatchcase(h["path"], "*.webm")),
             ({"path_prefix": "clips/"}, lambda h: h["path"].startswith("clips/")),
             ({"duration_min": 4.8, "duration_max": 11.5}, lambda h: 4.8 <= h["duration_s"] <= 11.5),
             ({"time_min": 4.5, "time_max": 7}, lambda h: h["end_s"] > 4.5 and h["start_s"] <= 7)]
    for filters, keep in cases:
        wanted = [(int(h["video_id"]), h["score"]) for h in every if keep(h)]
        assert 0 < len(wanted) < n, filters
        body = get(api, "/api/search", q="people", k=len(wanted) + 5, **filters)
        assert_same_ranking(hits(body), wanted, cut=False)  # all of them, in rank order
        assert body["matches"] == len(wanted) and body["complete"] and not body["has_more"]
        page = get(api, "/api/search", q="people", k=1, offset=1, **filters)
        assert page["results"] == body["results"][1:2]
    posted = api("POST", "/api/search", json={"q": "people", "k": 50, "filters": {"path_glob": "*.webm"}})
    assert_same_ranking(hits(posted.json()), [(int(h["video_id"]), h["score"]) for h in every
                                              if h["path"].endswith(".webm")], cut=False)


def test_one_video_stats_and_health(api, searcher, served_corpus):
    hit = get(api, "/api/search", q="people", k=1)["results"][0]
    row = get(api, f"/api/videos/{hit['video_id']}")
    assert {k: row[k] for k in hit if k not in ("rank", "score")} == {k: hit[k] for k in hit
                                                                      if k not in ("rank", "score")}
    assert row["has_thumbnail"] is True
    stats = get(api, "/api/stats")
    assert stats["rows"] == len(searcher) and stats["videos"] == 4 and stats["random_weights"] is True
    assert stats["model"]["arch"] == "ViT-S-32" and stats["faiss"] == ["Flat"]
    assert stats["indexes"][0]["segment_s"] == SEGMENT_S and stats["server"] == "uvicorn"
    assert get(api, "/api/health")["status"] == "ok"


def test_metrics_count_requests_and_time_each_stage(api):
    get(api, "/api/search", q="metrics", k=2)
    text = api("GET", "/metrics").text
    assert 'tomeray_http_requests_total{method="GET",route="/api/search",status="200"}' in text
    for stage in ("encode", "faiss", "metadata"):
        assert f'tomeray_search_stage_seconds_count{{stage="{stage}"}}' in text
    assert "tomeray_search_batch_size_bucket" in text and 'tomeray_index_rows{index="idx"}' in text


def test_the_page_its_assets_and_the_docs(api, server):
    page = requests.get(server.url + "/", timeout=30)  # public: the page asks for the token itself
    assert page.status_code == 200 and 'id="q"' in page.text and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for text in [page.text] + [requests.get(f"{server.url}/static/{asset}", timeout=30).text
                               for asset in ("app.js", "style.css", "docs.js", "favicon.svg")]:
        # nothing from elsewhere: the only absolute URL is the SVG namespace
        assert all(u.startswith("http://www.w3.org/") for u in re.findall(r"https?://[^\s\"']+", text))
        assert not re.search(r"""(src|href)=["']//""", text)  # nor protocol-relative
    assert requests.get(server.url + "/docs", timeout=30).status_code == 200
    spec = api("GET", "/openapi.json").json()
    assert {"/api/search", "/api/stats", "/media/{video_id}", "/api/videos/{video_id}/thumbnail"} <= set(
        spec["paths"])


def test_index_updates_are_swapped_in_and_old_indexes_get_thumbnails(served_index, served_corpus, tmp_path):
    """A served index without thumbnails still serves (made on request); a second 'tomeray index' run
    adds a video and the missing thumbnails, and the server swaps to the new version while a request
    holding the old version finishes on it."""
    index = shutil.copytree(served_index, tmp_path / "idx")
    shutil.rmtree(index / "thumbnails")  # as an index made before thumbnails
    shutil.rmtree(index / "lookup")
    with InProcessServer([index], ["server.reload_s=0.2"]) as server:
        def search(**params):
            return requests.get(server.url + "/api/search", params=params, timeout=60).json()

        before = search(q="people", k=1)["results"][0]
        thumbnail = requests.get(server.url + before["thumbnail_url"], timeout=60)
        assert thumbnail.headers["x-thumbnail"] == "made" and thumbnail.content[:3] == b"\xff\xd8\xff"
        held = server.service.indexes  # what a request in flight holds
        rows = len(held[0].searcher)
        from media import write_video

        write_video(served_corpus / "new clip.avi", 20, 96, 64, seed=9)
        try:
            build_index(served_corpus, index)
        finally:
            (served_corpus / "new clip.avi").unlink()
        deadline = time.monotonic() + 60
        while server.service.indexes is held and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.service.indexes is not held, "the server did not pick up the new index"
        new = search(q="people", k=5, path_glob="new clip.avi")["results"]
        assert len(new) == 1 and new[0]["path"] == "new clip.avi"
        assert json.loads(requests.get(server.url + "/api/stats", timeout=60).text)["rows"] == rows + 1
        # the old version still answers for whoever holds it
        old = held[0].searcher
        assert len(old) == rows and old.row(int(new[0]["video_id"])) is None
        assert old.search_like(int(before["video_id"]), k=2)
        again = requests.get(server.url + before["thumbnail_url"], timeout=60)
        assert again.headers["x-thumbnail"] == "index"  # the rerun backfilled it
