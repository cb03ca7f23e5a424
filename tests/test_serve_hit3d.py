"""3D from a search hit, end to end: 'tomeray index' of the opencv-doc videos served by a real
'tomeray serve' process; POST reconstruct on a hit runs a job (random vggt-tiny weights) to done, the
scene it names is served and viewable; a second POST returns the same scene without new work; more
jobs than recon.max_jobs get 429; unknown ids and jobs get 404. A reconstruction that fails (an
unreadable video) is a failed job with its reason."""

from __future__ import annotations

import time

import pytest
import requests
from serving import TOKEN
from test_serve_security import assert_clean_4xx, raw

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

AUTH = {"Authorization": f"Bearer {TOKEN}"}
RECON = ["recon.model.arch=vggt-tiny", "recon.model.pretrained=none", "recon.views=4", "recon.max_jobs=1"]


@pytest.fixture(scope="module")
def hit_server(served_index, served_recon, tmp_path_factory):
    from tomeray.jobs.bench_serve import Server

    out = tmp_path_factory.mktemp("hits") / "recon"
    options = ["--port", "0", "--token", TOKEN, "server.torch_threads=1", "inference.device=cpu",
               f"recon.out={out}", *RECON]
    # an index and a reconstruction output side by side: each one's kind is read from its manifest
    with Server([str(served_index), str(served_recon), *options], timeout=300) as process:
        process.out = out
        yield process


def api(server, method, path, **kwargs):
    return requests.request(method, server.url + path, headers=AUTH, timeout=120, **kwargs)


def poll(server, job: dict, seconds: float = 400) -> dict:
    deadline = time.monotonic() + seconds
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = api(server, "GET", job["url"]).json()
    return job


def test_a_hit_reconstructs_into_a_served_scene_once(hit_server):
    hits = api(hit_server, "GET", "/api/search", params={"q": "people walking", "k": 5}).json()["results"]
    hit, other = hits[0], hits[1]
    first = api(hit_server, "POST", f"/api/videos/{hit['video_id']}/reconstruct")
    assert first.status_code == 202, first.text
    job = first.json()
    assert job["status"] in ("queued", "running") and job["video_id"] == hit["video_id"]

    # the same row while it runs: the same job; another row: over recon.max_jobs = 1
    again = api(hit_server, "POST", f"/api/videos/{hit['video_id']}/reconstruct").json()
    assert again["job"] == job["job"]
    busy = api(hit_server, "POST", f"/api/videos/{other['video_id']}/reconstruct")
    if busy.status_code != 429:  # the first job finished already: the second one is simply queued
        assert job["status"] != "queued" and busy.status_code == 202
        poll(hit_server, busy.json())
    else:
        assert "recon.max_jobs" in busy.json()["error"]

    done = poll(hit_server, job)
    assert done["status"] == "done", done
    assert done["viewer_url"] == "/scenes/" + requests.utils.quote(done["scene"], safe="")
    scenes = {s["scene"]: s for s in api(hit_server, "GET", "/api/scenes").json()["scenes"]}
    scene = scenes[done["scene"]]
    assert scenes["chess board"]["output"] == "recon" and scene["output"] == "recon-2"  # both named recon
    assert scene["views"] == 4 and scene["points"] > 0 and scene["random_weights"]
    assert done["scene"].startswith(f"{hit['video_id']}_{hit['start_s']:.2f}-{hit['end_s']:.2f}")
    cams = api(hit_server, "GET", f"/api/scenes/{requests.utils.quote(done['scene'], safe='')}/cameras")
    fps = 10.0 if hit["name"].endswith(".webm") else None
    frames = [c["frame_idx"] for c in cams.json()["cameras"]]
    assert len(frames) == 4 and frames == sorted(frames)
    if fps:  # frames of the hit's window only
        assert hit["start_s"] * fps - 1 <= frames[0] and frames[-1] <= hit["end_s"] * fps + 1
    page = api(hit_server, "GET", done["viewer_url"])
    assert page.status_code == 200 and "viewer.js" in page.text

    record_before = (hit_server.out / "scenes").stat().st_mtime_ns
    second = api(hit_server, "POST", f"/api/videos/{hit['video_id']}/reconstruct")
    assert second.status_code == 200 and second.json()["status"] == "done"
    assert second.json()["scene"] == done["scene"]
    assert (hit_server.out / "scenes").stat().st_mtime_ns == record_before  # nothing was redone


@pytest.mark.parametrize("path, status", [
    ("/api/videos/123/reconstruct", 404), ("/api/videos/abc/reconstruct", 404),
    ("/api/videos/..%2F..%2Fetc/reconstruct", None), ("/api/videos/99999999999999999999/reconstruct", 404),
])
def test_bad_reconstruct_requests_get_a_clean_4xx(hit_server, path, status):
    code, _, data = raw(hit_server, "POST", path, b"")
    assert_clean_4xx(code, data, status)


def test_unknown_jobs_and_missing_tokens(hit_server):
    for path in ["/api/reconstructions/nope", "/api/reconstructions/..%2F..%2Fetc%2Fpasswd"]:
        code, _, data = raw(hit_server, "GET", path)
        assert_clean_4xx(code, data, 404)
    anonymous = requests.post(hit_server.url + "/api/videos/1/reconstruct", timeout=60)
    assert anonymous.status_code == 401
    assert requests.get(hit_server.url + "/api/reconstructions/x", timeout=60).status_code == 401


def test_a_failed_reconstruction_is_a_failed_job_with_its_reason(tmp_path):
    from tomeray.pipeline.core.config import load_config
    from tomeray.pipeline.service.config import ScenesConfig
    from tomeray.pipeline.service.hit_jobs import HitJobs
    from tomeray.pipeline.service.scenes import SceneStore

    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"RIFF not really a video" * 100)
    cfg = load_config(ScenesConfig, "scenes", RECON)
    jobs = HitJobs(tmp_path / "recon", cfg, SceneStore([]))
    try:
        job, new = jobs.submit(7, str(broken), 0.0, 4.0)
        assert new
        deadline = time.monotonic() + 300
        while job.status in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job.status == "failed" and "video" in job.error, job
        assert job.public()["error"] == job.error and "viewer_url" not in job.public()
    finally:
        jobs.close()
