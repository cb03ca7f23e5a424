"""``tomeray reconstruct`` with overlapping chunks, bundle adjustment, known intrinsics and the COLMAP
binary export, end to end on the shared local Ray cluster: the opencv-doc chessboard views with
their calibrated intrinsics (left_intrinsics.yml) and random ``vggt-tiny`` weights. The binary
model is read back by pycolmap and by COLMAP's own ``colmap model_analyzer``; bad intrinsics files
stop the run before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import cv2
import numpy as np
import pycolmap
import pytest
from tomeray.jobs.alignment_data import CHESS_VIEWS
from tomeray.models.pose import rotation_to_quaternion
from tomeray.pipeline.reconstruction.cli import main
from tomeray.pipeline.reconstruction.colmap_binary import write_colmap_binary
from tomeray.pipeline.reconstruction.intrinsics import load_intrinsics
from tomeray.pipeline.reconstruction.job import run_reconstruct
from tomeray.pipeline.reconstruction.results import SceneCameras, load_scene

FAST = ["model.arch=vggt-tiny", "model.pretrained=none", "ray.progress=false", "points.max_points=20000",
        "export.colmap_max_points=2000"]
MUST_SHOW = ["views.max_views=8", "views.policy=chunks", "views.chunk=8", "views.overlap=4", "refine.ba=true",
             "export.colmap_binary=true"]


def opencv_K(path) -> np.ndarray:
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    return fs.getNode("camera_matrix").mat()


@pytest.fixture(scope="module")
def chess_scenes(tmp_path_factory, opencv_data):
    root = tmp_path_factory.mktemp("chess_scenes")
    (root / "scenes" / "chess").mkdir(parents=True)
    for i in CHESS_VIEWS:
        shutil.copy(opencv_data / f"left{i:02d}.jpg", root / "scenes" / "chess")
    shutil.copy(opencv_data / "left_intrinsics.yml", root)
    return root


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bundle_adjustment_pipeline_chunks_known_intrinsics_colmap_binary(chess_scenes, ray_local):
    root = chess_scenes
    intrinsics = root / "left_intrinsics.yml"
    out = root / "R"
    given = f"cameras.intrinsics={intrinsics}"
    summary = run_reconstruct([str(root / "scenes")], out, [*FAST, *MUST_SHOW, given])
    assert summary.exit_code == 0 and summary.reconstructed == 1
    record = json.loads((out / "scenes" / "scene=chess.json").read_text())
    assert record["views"] == 13 and record["chunks"] == 3 and record["intrinsics"] == "given"
    # per-chunk fit residuals of the two later chunks, each aligned on its 4 shared views
    assert [r["shared_views"] for r in record["alignment"]] == [4, 4]
    for fit in record["alignment"]:
        assert fit["pairs"] > 100 and 0 < fit["inlier_ratio"] <= 1 and fit["scale"] > 0
    refine = record["refine"]
    assert refine["tracks_from"] == "features" and refine["intrinsics"] == "fixed"
    for key in ("tracks", "observations", "reproj_px_before", "reproj_px_after", "iterations", "seconds"):
        assert key in refine, key
    assert refine["applied"] or refine["reason"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["intrinsics"]["format"] == "opencv" and manifest["intrinsics"]["file"] == str(intrinsics)
    assert manifest["settings"]["refine"]["ba"] is True
    assert manifest["settings"]["views"]["policy"] == "chunks"

    # exports carry exactly the given intrinsics, at the original 640x480
    K = opencv_K(intrinsics)
    cams, _ = load_scene(out, "chess")
    assert np.array_equal(cams.intrinsic, np.repeat(K[None], 13, 0))
    assert set(cams.width) == {640} and set(cams.height) == {480}
    assert np.isfinite(cams.extrinsic).all()

    sparse = out / "colmap" / "chess" / "sparse" / "0"
    assert sorted(p.name for p in sparse.iterdir()) == ["cameras.bin", "images.bin", "points3D.bin"]
    rec = pycolmap.Reconstruction(str(sparse))
    assert rec.num_images() == 13 and rec.num_cameras() == 13 and rec.num_points3D() > 0
    for image in rec.images.values():
        camera = rec.cameras[image.camera_id]
        assert camera.model.name == "PINHOLE" and (camera.width, camera.height) == (640, 480)
        assert np.allclose(camera.params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5])
        view = cams.image_path.index(str(root / "scenes" / "chess" / image.name))
        assert np.allclose(image.cam_from_world().matrix(), cams.extrinsic[view], atol=1e-6)
        link = out / "colmap" / "chess" / "images" / image.name
        assert link.is_symlink() and os.path.samefile(link, root / "scenes" / "chess" / image.name)
    analyzer = subprocess.run(["colmap", "model_analyzer", "--path", str(sparse)], capture_output=True,
                              text=True, timeout=120)
    assert analyzer.returncode == 0, analyzer.stderr[-2000:]
    report = analyzer.stdout + analyzer.stderr
    assert "Registered images: 13" in report and f"Points: {rec.num_points3D()}" in report

    # the same run without refinement: refinement never corrupts what it was given
    plain = root / "plain"
    assert run_reconstruct([str(root / "scenes")], plain,
                           [*FAST, *MUST_SHOW[:-2], given]).exit_code == 0
    unrefined, _ = load_scene(plain, "chess")
    assert np.array_equal(unrefined.intrinsic, cams.intrinsic)
    if not refine["applied"]:
        assert np.array_equal(unrefined.extrinsic, cams.extrinsic)


def test_bundle_adjustment_colmap_binary_shared_simple_pinhole(tmp_path, opencv_data):
    paths = [str(opencv_data / f"left{i:02d}.jpg") for i in (1, 2, 3)]
    K = np.array([[500.0, 0, 319.5], [0, 510.0, 239.5], [0, 0, 1]])
    rng = np.random.default_rng(0)
    E = np.concatenate([np.repeat(np.eye(3)[None], 3, 0), rng.normal(size=(3, 3, 1)) * 0.1], 2)
    cams = SceneCameras("s", np.arange(3, dtype=np.int32), paths, np.full(3, 640), np.full(3, 480), E,
                        np.repeat(K[None], 3, 0))
    xyz = rng.uniform(-1, 1, (50, 3)) + [0, 0, 5]
    counts = write_colmap_binary(tmp_path / "s", ["a.jpg", "b.jpg", "c.jpg"], cams, xyz,
                                 rng.integers(0, 255, (50, 3)), np.arange(50) % 3, "SIMPLE_PINHOLE", True)
    assert counts == {"images": 3, "points": 50, "linked_images": 3}
    rec = pycolmap.Reconstruction(str(tmp_path / "s" / "sparse" / "0"))
    assert rec.num_cameras() == 1 and {im.camera_id for im in rec.images.values()} == {1}
    camera = rec.cameras[1]
    assert camera.model.name == "SIMPLE_PINHOLE" and np.allclose(camera.params, [505.0, 320.0, 240.0])
    for image in rec.images.values():
        v = image.image_id - 1
        q = rotation_to_quaternion(E[v, :, :3])
        assert np.allclose(image.cam_from_world().matrix(), E[v]) and np.isfinite(q).all()
    assert np.allclose(np.sort(np.array([p.xyz for p in rec.points3D.values()]), 0), np.sort(xyz, 0))


def test_bundle_adjustment_known_intrinsics_formats(tmp_path, opencv_data):
    left = load_intrinsics(opencv_data / "left_intrinsics.yml")
    assert left.format == "opencv" and left.size == [640, 480]
    assert np.array_equal(left.default, opencv_K(opencv_data / "left_intrinsics.yml"))
    stereo = load_intrinsics(opencv_data / "intrinsics.yml")  # M1 of the stereo sample
    assert stereo.format == "opencv" and stereo.default[0][0] == pytest.approx(534.80326845)
    colmap = tmp_path / "cameras.txt"
    colmap.write_text("# a comment\n1 PINHOLE 640 480 500 510 320.5 240.5\n")
    cam = load_intrinsics(colmap)
    assert cam.format == "colmap" and cam.size == [640, 480]
    assert np.allclose(cam.default, [[500, 0, 320], [0, 510, 240], [0, 0, 1]])  # COLMAP's +0.5 undone
    (tmp_path / "imgs").mkdir()
    table = tmp_path / "k.csv"
    table.write_text("image_path,fx,fy,cx,cy\nimgs/a.jpg,500,500,320,240\n")
    per_image = load_intrinsics(table)
    spec = per_image.actor_spec()
    assert per_image.format == "csv" and spec["default"] is None
    assert spec["by_path"][os.path.realpath(tmp_path / "imgs" / "a.jpg")][0][0] == 500.0


@pytest.mark.parametrize("name, content, key", [
    ("missing.yml", "%YAML:1.0\n---\nimage_width: 640\n", "camera_matrix"),
    ("shape.yml", "%YAML:1.0\n---\ncamera_matrix: !!opencv-matrix\n   rows: 2\n   cols: 3\n   dt: d\n"
                  "   data: [ 500., 0., 320., 0., 500., 240. ]\n", "camera_matrix must be a 3x3"),
    ("negative.yml", "%YAML:1.0\n---\nM1: !!opencv-matrix\n   rows: 3\n   cols: 3\n   dt: d\n"
                     "   data: [ -500., 0., 320., 0., 500., 240., 0., 0., 1. ]\n",
     "M1 has a non-positive focal"),
    ("columns.csv", "image_path,fx,fy,cx\nx.jpg,1,1,1\n", "key cy is missing"),
    ("unlisted.csv", "image_path,fx,fy,cx,cy\nscenes/chess/left01.jpg,500,500,320,240\n",
     "key image_path has no row"),
])
def test_bundle_adjustment_bad_intrinsics_file_stops_before_any_work(chess_scenes, tmp_path, capsys, name,
                                                                     content, key):
    bad = tmp_path / name
    bad.write_text(content)
    if name == "unlisted.csv":  # lists one image of the scene: the others have no intrinsics
        (tmp_path / "scenes").symlink_to(chess_scenes / "scenes")
    out = tmp_path / "out"
    code = main([str(chess_scenes / "scenes"), "--out", str(out), *FAST, f"cameras.intrinsics={bad}"])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and key in err, err
    assert not out.exists()


@pytest.mark.parametrize("overrides, message", [
    (["refine.ba=true", "refine.tracks=vggt"], "refine.tracks=vggt needs a model with a track head"),
    (["refine.refine_intrinsics=true", "cameras.intrinsics=k.yml"], "contradicts cameras.intrinsics"),
    (["views.chunk=8", "views.overlap=8"], "views.overlap must be in [1, views.chunk - 1]"),
    (["export.camera_model=OPENCV"], "export.camera_model must be PINHOLE or SIMPLE_PINHOLE"),
])
def test_bundle_adjustment_settings_checked_before_any_work(chess_scenes, tmp_path, capsys, overrides,
                                                           message):
    out = tmp_path / "out"
    assert main([str(chess_scenes / "scenes"), "--out", str(out), *FAST, *overrides]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
