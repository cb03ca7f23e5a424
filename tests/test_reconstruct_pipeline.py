"""``tomeray reconstruct`` end to end on the shared local Ray cluster: real multi-view images from
opencv-doc (and a synthesized video) with random ``vggt-tiny`` weights, bad inputs, exports read
back (our PLY reader, pycolmap), the Python API, the summary, resume and settings pinning."""

from __future__ import annotations

import importlib.util
import json
import shutil

import cv2
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pycolmap
import pytest
from PIL import Image
from tomeray.pipeline.core.errors_table import ERRORS_SCHEMA
from tomeray.pipeline.reconstruction.cli import main
from tomeray.pipeline.reconstruction.exports import read_ply
from tomeray.pipeline.reconstruction.job import run_reconstruct
from tomeray.pipeline.reconstruction.layout import CAMERAS_SCHEMA, POINTS_SCHEMA, ReconLayout
from tomeray.pipeline.reconstruction.results import load_scene, to_open3d

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FAST = ["model.arch=vggt-tiny", "model.pretrained=none", "ray.progress=false", "points.max_points=20000",
        "export.colmap_max_points=2000", "load.max_pixels=5000000"]
EXPECTED_VIEWS = {"chess": 4, "aloe": 2, "leuven": 2, "mixed": 5, "single": 1, "nested": 2, "clip": 4}


def write_video(path, n_frames=20, width=200, height=150):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (width, height))
    base = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    for i in range(n_frames):
        writer.write(np.roll(base, 5 * i, axis=1))
    writer.release()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, opencv_data):
    root = tmp_path_factory.mktemp("scenes")
    d = opencv_data

    def copy(scene, *names):
        (root / scene).mkdir(parents=True, exist_ok=True)
        for n in names:
            shutil.copy(d / n, root / scene / n)

    copy("chess", "left01.jpg", "right01.jpg", "left02.jpg", "right02.jpg")
    copy("aloe", "aloeL.jpg", "aloeR.jpg")
    copy("leuven", "leuvenA.jpg", "leuvenB.jpg")
    copy("single", "right03.jpg")
    (root / "nested" / "images").mkdir(parents=True)
    shutil.copy(d / "left04.jpg", root / "nested" / "images" / "a.jpg")
    shutil.copy(d / "right04.jpg", root / "nested" / "images" / "b.jpg")
    # mixed: sizes, EXIF rotation, grayscale, alpha, 16-bit, a huge image, damaged and foreign files
    m = root / "mixed"
    copy("mixed", "left03.jpg")
    aloe = Image.open(d / "aloeL.jpg").resize((320, 277))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    aloe.save(m / "aloe_rot.jpg", exif=exif.tobytes())
    cv2.imwrite(str(m / "gray.png"), cv2.imread(str(d / "graf1.png"), cv2.IMREAD_GRAYSCALE)[::2, ::2])
    bgr = cv2.imread(str(d / "leuvenB.jpg"))[::3, ::3]
    rgba = np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)])
    cv2.imwrite(str(m / "rgba.png"), rgba)
    cv2.imwrite(str(m / "deep16.png"), (cv2.imread(str(d / "right03.jpg")).astype(np.uint16) * 257))
    cv2.imwrite(str(m / "huge.jpg"), np.full((2000, 3000, 3), 128, np.uint8))  # 6 MP > load.max_pixels
    data = (d / "left05.jpg").read_bytes()
    (m / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (m / "fake.jpg").write_text("this is not a JPEG")
    (m / "notes.txt").write_text("not an image: ignored by extension")
    (root / "broken").mkdir()
    (root / "broken" / "a.jpg").write_bytes(data[:1000])
    (root / "broken" / "b.png").write_text("nope")
    (root / "broken" / "c.jpg").symlink_to("/nonexistent/file.jpg")  # a link whose target is gone
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # outside the scenes folder
    (elsewhere / "damaged.jpg").write_bytes(data[:2000])
    (root / "broken" / "d.jpg").symlink_to(elsewhere / "damaged.jpg")  # a link to a damaged file
    (root / "empty").mkdir()
    write_video(root / "clip.avi")
    return root


@pytest.fixture(scope="module")
def run(scenes, tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("recon") / "out"
    code = main([str(scenes), "--out", str(out), *FAST, "export.ply=true", "export.colmap=true",
                 "video.num_frames=4"])
    return out, code


def test_every_scene_yields_cameras_and_points(run, scenes):
    out, code = run
    assert code == 1  # done, but some scenes and images failed
    layout = ReconLayout(out)
    cameras = pq.read_table(layout.cameras_path)
    assert cameras.schema.equals(CAMERAS_SCHEMA)
    per_scene = {s: cameras["scene"].to_pylist().count(s) for s in set(cameras["scene"].to_pylist())}
    assert per_scene == EXPECTED_VIEWS
    records = layout.finished_scenes()
    assert set(records) == set(EXPECTED_VIEWS)
    points = ds.dataset(layout.points_dir, format="parquet", partitioning="hive").to_table()
    assert points.schema.names == [*POINTS_SCHEMA.names, "scene"]
    assert points.select(POINTS_SCHEMA.names).schema.equals(POINTS_SCHEMA)
    for scene, record in records.items():
        assert record["weights_id"] == "random-init(seed=0)" and record["views"] == EXPECTED_VIEWS[scene]
        cams, pts = load_scene(out, scene)
        assert len(pts.xyz) == record["points"] > 0 and len(pts.xyz) <= 20000
        assert set(pts.frame_idx.tolist()) <= set(cams.frame_idx.tolist())
        assert np.isfinite(pts.xyz).all() and np.isfinite(cams.extrinsic).all()
        assert np.isfinite(cams.intrinsic).all()
        assert (cams.intrinsic[:, 2] == [0, 0, 1]).all() and (cams.intrinsic[:, 0, 0] > 0).all()
        assert np.allclose(cams.extrinsic[:, :, :3] @ np.swapaxes(cams.extrinsic[:, :, :3], 1, 2), np.eye(3),
                           atol=1e-4)
        table = points.filter(ds.field("scene") == scene)
        assert table.num_rows == record["points"]
    mixed = load_scene(out, "mixed")[0]
    # sorted: aloe_rot, deep16, fake, gray, huge, left03, rgba, trunc; fake, huge and trunc failed
    assert mixed.frame_idx.tolist() == [0, 1, 3, 5, 6]
    assert (mixed.width[0], mixed.height[0]) == (277, 320)  # EXIF rotation applied
    assert [p.rsplit("/", 1)[1] for p in mixed.image_path] == ["aloe_rot.jpg", "deep16.png", "gray.png",
                                                               "left03.jpg", "rgba.png"]
    clip = load_scene(out, "clip")[0]
    assert clip.frame_idx.tolist() == [0, 6, 13, 19] and (clip.width == 200).all()
    assert layout.read_manifest()["counts"]["scenes"] == 7


def test_run_record_carries_stage_costs_and_start_up(run):
    out, _ = run
    (record,) = (out / "runs").glob("*.json")
    summary = json.loads(record.read_text())
    costs, start = summary["costs"], summary["startup"]
    assert costs["items"] >= len(EXPECTED_VIEWS)  # every scene that went through the graph
    assert costs["cpu_s_per_item"]["load"] > 0 and costs["cpu_s_per_item"]["model"] > 0
    assert costs["valid"] and 0 < costs["efficiency"] <= 1 and costs["bound_kind"] == "cpu"
    assert start["graph_started_at"] <= start["load_started_at"] <= start["load_done_at"]
    assert start["model_ready_at"] <= start["model_started_at"] < start["model_done_at"]
    assert start["load_done_at"] <= start["model_started_at"]
    assert summary["first_scene_s"] == start["model_done_at"]
    assert summary["startup_cpu"]["model_actors"] >= 1


def test_bad_inputs_land_in_the_errors_table(run, scenes):
    out, _ = run
    errors = pq.read_table(ReconLayout(out).errors_path)
    assert errors.schema.equals(ERRORS_SCHEMA)
    rows = {(e["item"], e["path"].rsplit("/", 1)[-1], e["stage"], e["error_type"])
            for e in errors.to_pylist()}
    assert rows == {
        ("mixed", "fake.jpg", "load", "ImageReadError"),
        ("mixed", "huge.jpg", "load", "ImageReadError"),
        ("mixed", "trunc.jpg", "load", "ImageReadError"),
        ("broken", "a.jpg", "load", "ImageReadError"),
        ("broken", "b.png", "load", "ImageReadError"),
        ("broken", "c.jpg", "load", "ImageReadError"),
        ("broken", "d.jpg", "load", "ImageReadError"),
        ("broken", "broken", "load", "NoUsableImages"),  # a scene-level error: its folder
        ("empty", "empty", "discover", "NoImages"),
    }
    messages = {e["path"].rsplit("/", 1)[-1]: e["message"] for e in errors.to_pylist()}
    assert {e["input"] for e in errors.to_pylist()} == {str(scenes)}  # the input as the user gave it
    assert "truncated" in messages["trunc.jpg"] and "max_pixels" in messages["huge.jpg"]
    # links are named as the user's tree shows them, with where they lead in the message
    paths = {e["path"] for e in errors.to_pylist()}
    assert {str(scenes / "broken" / "c.jpg"), str(scenes / "broken" / "d.jpg")} <= paths
    assert "/nonexistent/file.jpg" in messages["c.jpg"] and "does not exist" in messages["c.jpg"]
    assert "elsewhere0/damaged.jpg" in messages["d.jpg"] and "truncated" in messages["d.jpg"]


def test_exports_parse_back(run):
    out, _ = run
    layout = ReconLayout(out)
    for scene, views in EXPECTED_VIEWS.items():
        cams, pts = load_scene(out, scene)
        ply = read_ply(layout.ply_path(scene))
        assert np.array_equal(np.stack([ply["x"], ply["y"], ply["z"]], 1), pts.xyz)
        assert np.array_equal(np.stack([ply["red"], ply["green"], ply["blue"]], 1), pts.rgb)
        assert np.array_equal(ply["confidence"], pts.confidence)
        rec = pycolmap.Reconstruction(str(layout.colmap_path(scene)))
        assert rec.num_images() == views and 0 < rec.num_points3D() <= 2000
        for image in rec.images.values():
            v = int(np.flatnonzero(cams.frame_idx == cams.frame_idx[image.image_id - 1])[0])
            assert np.allclose(image.cam_from_world().matrix(), cams.extrinsic[v], atol=1e-5)
            assert (image.camera.width, image.camera.height) == (cams.width[v], cams.height[v])
    nested = pycolmap.Reconstruction(str(layout.colmap_path("nested")))
    names = sorted(im.name for im in nested.images.values())
    assert names == ["images/a.jpg", "images/b.jpg"]


def test_python_api_and_summary(run, capsys):
    out, _ = run
    cams, pts = load_scene(out, "chess")
    assert cams.extrinsic.shape == (4, 3, 4) and cams.intrinsic.shape == (4, 3, 3)
    assert cams.centers.shape == (4, 3)
    assert pts.xyz.dtype == np.float32 and pts.rgb.dtype == np.uint8
    if importlib.util.find_spec("open3d"):
        assert len(to_open3d(pts).points) == len(pts.xyz)
    else:
        with pytest.raises(ImportError, match="pip install open3d"):
            to_open3d(pts)
    assert main(["--summary", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "7 scene(s) reconstructed, 2 failed" in printed and "RANDOM weights" in printed
    assert "chess" in printed and "NoUsableImages" in printed
    config = (out / "config.yaml").read_text()
    assert "vggt-tiny" in config and "max_points: 20000" in config


def test_rerun_resumes_and_settings_are_pinned(run, scenes, capsys):
    out, _ = run
    layout = ReconLayout(out)
    before = {s: r["finished"] for s, r in layout.finished_scenes().items()}
    parts = sorted(p.name for p in layout.cameras_dir.iterdir())
    summary = run_reconstruct([str(scenes)], out, [*FAST, "export.ply=true", "export.colmap=true",
                                                   "video.num_frames=4"])
    assert summary.reconstructed == 0 and summary.skipped == 7
    assert summary.failed == 2  # broken and empty are retried, and fail again
    assert {s: r["finished"] for s, r in layout.finished_scenes().items()} == before
    assert sorted(p.name for p in layout.cameras_dir.iterdir()) == parts
    assert pq.read_table(layout.cameras_path).num_rows == sum(EXPECTED_VIEWS.values())  # no duplicates

    assert main([str(scenes), "--out", str(out), *FAST, "points.max_points=10"]) == 2
    err = capsys.readouterr().err
    assert "incompatible" in err and "settings.points.max_points" in err


def test_scene_lists_split_policy_and_pad_mode(opencv_data, tmp_path, ray_local):
    d = opencv_data
    rows = [("pairs", str(d / n)) for n in ("left05.jpg", "right05.jpg", "left06.jpg", "right06.jpg",
                                            "left07.jpg")]
    rows.insert(2, ("pairs", "missing.jpg"))  # relative to the list: does not exist
    lst = tmp_path / "list.csv"
    lst.write_text("scene,image_path\n" + "".join(f"{s},{p}\n" for s, p in rows))
    import pyarrow as pa

    other = pa.table({"scene": ["other"] * 2, "image_path": [str(d / "aloeL.jpg"), str(d / "aloeR.jpg")]})
    pq.write_table(other, tmp_path / "list.parquet")
    summary = run_reconstruct([str(lst), str(tmp_path / "list.parquet")], tmp_path / "out",
                              [*FAST, "views.policy=split", "views.max_views=3", "load.mode=pad"])
    assert summary.reconstructed == 2 and summary.failed == 0
    record = summary.scenes["pairs"]
    assert record["views"] == 5 and record["chunks"] == 2 and record["model_hw"] == [518, 518]
    cams = load_scene(tmp_path / "out", "pairs")[0]
    assert cams.frame_idx.tolist() == [0, 1, 3, 4, 5]  # list order; the missing file (2) is reported
    (failure,) = summary.failures
    assert failure["path"].endswith("missing.jpg") and "No such file" in failure["message"]
    assert failure["item"] == "pairs" and failure["input"] == str(lst)  # the input as given
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["views"]["policy"] == "split" and manifest["counts"]["scenes"] == 2
