"""Reconstructions in the service: a real 'tomeray serve' process over a 'tomeray reconstruct' output
of opencv-doc chessboard views (random vggt-tiny weights). The scene list, cameras equal to
cameras.parquet, binary points equal to the Parquet rows they were drawn from, view thumbnails, the
GLB export read back with trimesh, and bad input: every case a clean 4xx JSON error."""

from __future__ import annotations

import io
from urllib.parse import quote

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from PIL import Image
from serving import TOKEN
from test_serve_security import assert_clean_4xx, raw
from tomeray.pipeline.reconstruction.layout import ReconLayout
from tomeray.pipeline.service.scenes import POINT_RECORD, sample_counts

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCENE = "chess board"
Q = quote(SCENE, safe="")


@pytest.fixture(scope="module")
def recon_server(served_recon):
    from tomeray.jobs.bench_serve import Server

    with Server([str(served_recon), "--port", "0", "--token", TOKEN, "limits.max_points=5000"],
                timeout=300) as process:
        yield process


def get(server, path, **kwargs):
    return requests.get(server.url + path, headers=AUTH, timeout=60, **kwargs)


def parquet_points(recon) -> np.ndarray:
    table = pq.read_table(ReconLayout(recon).points_part(SCENE))
    out = np.empty(table.num_rows, POINT_RECORD)
    for name in ("x", "y", "z", "r", "g", "b", "confidence"):
        out[name] = table[name].to_numpy()
    out["pad"] = 0
    return out


def test_sample_counts_draw_exactly_the_asked_number_per_seed():
    groups = [1000, 10, 0, 333]
    keep = sample_counts(groups, 200, seed=3)
    assert sum(len(k) for k in keep) == 200
    assert all(len(np.unique(k)) == len(k) and (k < n).all() for k, n in zip(keep, groups))
    assert all(np.array_equal(a, b) for a, b in zip(keep, sample_counts(groups, 200, seed=3)))
    assert [len(k) for k in sample_counts(groups, 5000, 0)] == groups


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scenes_list_cameras_and_thumbnails(recon_server, served_recon):
    body = get(recon_server, "/api/scenes").json()
    (scene,) = body["scenes"]
    assert scene["scene"] == SCENE and scene["output"] == "recon"
    assert scene["views"] == 4 and scene["random_weights"] and scene["weights_id"].startswith("random-init")
    points = pq.read_metadata(ReconLayout(served_recon).points_part(SCENE)).num_rows
    assert scene["points"] == points and scene["errors"] == 0
    assert scene["viewer_url"] == f"/scenes/{Q}"

    cams = get(recon_server, f"/api/scenes/{Q}/cameras").json()["cameras"]
    table = pq.read_table(served_recon / "cameras.parquet").to_pylist()
    assert len(cams) == len(table) == 4
    for served, stored in zip(cams, table):
        assert served["frame_idx"] == stored["frame_idx"] and served["image_path"] in stored["image_path"]
        assert (served["width"], served["height"]) == (stored["width"], stored["height"]) == (640, 480)
        assert served["extrinsic"] == stored["extrinsic"] and served["intrinsic"] == stored["intrinsic"]

    for url in [scene["thumbnail_url"]] + [f"/api/scenes/{Q}/views/{c['frame_idx']}/thumbnail" for c in cams]:
        response = get(recon_server, url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(response.content))
        assert image.format == "JPEG" and max(image.size) <= 320


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_points_are_binary_records_drawn_from_the_parquet_rows(recon_server, served_recon):
    stored = parquet_points(served_recon)
    response = get(recon_server, f"/api/scenes/{Q}/points?max=1000")
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    count = int(response.headers["X-Points-Count"])
    assert count == 1000 and int(response.headers["X-Points-Total"]) == len(stored)
    assert "stride=20" in response.headers["X-Points-Layout"]
    assert len(response.content) == count * POINT_RECORD.itemsize
    served = np.frombuffer(response.content, POINT_RECORD)
    rows = {r.tobytes(): i for i, r in enumerate(stored)}
    drawn = [rows.get(r.tobytes()) for r in served]
    assert None not in drawn and len(set(drawn)) == count and drawn == sorted(drawn)
    assert get(recon_server, f"/api/scenes/{Q}/points?max=1000").content == response.content  # seeded

    # the default is capped by limits.max_points (5000 here); the records come in the file's order
    everything = get(recon_server, f"/api/scenes/{Q}/points?max=999999999")
    assert int(everything.headers["X-Points-Count"]) == min(5000, len(stored))
    if len(stored) <= 5000:
        assert everything.content == stored.tobytes()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_glb_export_reads_back_with_trimesh(served_recon):
    import trimesh

    glb = served_recon / "glb" / f"{Q}.glb"
    stored = parquet_points(served_recon)
    world = trimesh.load(glb, force="scene")
    clouds = [g for g in world.geometry.values() if isinstance(g, trimesh.PointCloud)]
    frustums = [g for g in world.geometry.values() if isinstance(g, trimesh.path.Path3D)]
    assert len(clouds) == 1 and len(frustums) == 4  # one per view
    cloud = clouds[0]
    assert len(cloud.vertices) == len(stored)
    assert np.allclose(cloud.vertices, np.column_stack([stored["x"], stored["y"], stored["z"]]), atol=1e-6)
    rgb = np.column_stack([stored["r"], stored["g"], stored["b"]])
    assert np.array_equal(np.asarray(cloud.colors)[:, :3], rgb)
    assert all(len(f.vertices) == 16 for f in frustums)  # 8 segments: apex to corners, the rectangle
    record = ReconLayout(served_recon).finished_scenes()[SCENE]
    assert "glb" in record["exports"]


BAD = [
    ("/api/scenes/..%2F..%2Fetc/points", None), ("/api/scenes/../../etc/passwd/points", None),
    ("/api/scenes/%2e%2e%2f%2e%2e%2fetc%2fpasswd/cameras", None), ("/api/scenes/%00/points", None),
    ("/api/scenes/nope/points", 404), ("/api/scenes/nope/cameras", 404), ("/scenes/nope", 404),
    ("/scenes/..%2F..%2Fetc%2Fpasswd", None), (f"/api/scenes/{Q}/views/99/thumbnail", 404),
    (f"/api/scenes/{Q}/views/abc/thumbnail", 404), (f"/api/scenes/{Q}/views/-1/thumbnail", 404),
    (f"/api/scenes/{Q}/views/..%2F..%2Fetc/thumbnail", None), (f"/api/scenes/{Q}/points?max=0", 400),
    (f"/api/scenes/{Q}/points?max=-5", 400), (f"/api/scenes/{Q}/points?max=abc", 400),
    (f"/api/scenes/{Q}/points?max=1.5", 400), (f"/api/scenes/{Q}/points?max=%00", 400),
    ("/static/viewer/..%2F..%2Fscenes.py", 404), ("/static/viewer/three/../../scenes.py", None),
    ("/static/viewer/three/package.json", 404),
]


@pytest.mark.slow
@pytest.mark.parametrize("path, status", BAD)
def test_bad_scene_requests_get_a_clean_4xx(recon_server, path, status):
    code, _, data = raw(recon_server, "GET", path)
    body = assert_clean_4xx(code, data, status)
    assert "Traceback" not in body["error"]


@pytest.mark.slow
def test_the_token_guards_scene_routes_the_viewer_and_points(recon_server):
    for path in ["/api/scenes", f"/api/scenes/{Q}/cameras", f"/api/scenes/{Q}/points?max=10",
                 f"/api/scenes/{Q}/views/0/thumbnail", f"/scenes/{Q}"]:
        response = requests.get(recon_server.url + path, timeout=60)
        assert response.status_code == 401 and response.json()["status"] == 401, path
        wrong = requests.get(recon_server.url + path, headers={"Authorization": "Bearer wrong-token-123"},
                             timeout=60)
        assert wrong.status_code == 401, path
    # the list page holds no data: it is public and asks for the token, like the search page
    assert "token-form" in requests.get(recon_server.url + "/scenes", timeout=60).text
    page = get(recon_server, f"/scenes/{Q}")
    assert page.status_code == 200 and "viewer.js" in page.text
    # the page's assets are public, like the search page's; three.js ships with its licence
    assert requests.get(recon_server.url + "/static/viewer/three/LICENSE", timeout=60).text.startswith(
        "The MIT License")
    home = requests.get(recon_server.url + "/", timeout=60, allow_redirects=False)
    assert home.headers["location"] == "/scenes"
