"""PLY and COLMAP text exports: written, parsed back (by our readers and by pycolmap), consistent."""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest
from tomeray.models.errors import InputError
from tomeray.models.pose import quaternion_to_rotation, rotation_to_quaternion
from tomeray.pipeline.reconstruction.exports import read_colmap_text, read_ply, write_colmap_text, write_ply


def random_rotations(n: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return quaternion_to_rotation(q)


def test_ply_round_trip_binary_little_endian(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(1000, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (1000, 3), dtype=np.uint8)
    conf = rng.random(1000).astype(np.float32)
    path = write_ply(tmp_path / "c.ply", xyz, rgb, conf)
    data = path.read_bytes()
    header, body = data.split(b"end_header\n", 1)
    assert b"format binary_little_endian 1.0" in header and b"element vertex 1000" in header
    assert b"property uchar red" in header and b"property float confidence" in header
    assert len(body) == 1000 * (3 * 4 + 3 + 4)
    v = read_ply(path)
    assert np.array_equal(np.stack([v["x"], v["y"], v["z"]], 1), xyz)
    assert np.array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), rgb)
    assert np.array_equal(v["confidence"], conf)
    assert set(read_ply(write_ply(tmp_path / "n.ply", xyz, rgb))) == {"x", "y", "z", "red", "green", "blue"}
    empty = read_ply(write_ply(tmp_path / "e.ply", np.zeros((0, 3)), np.zeros((0, 3))))
    assert len(empty["x"]) == 0


def test_ply_reader_takes_ascii_and_big_endian_reference_clouds(tmp_path):
    (tmp_path / "a.ply").write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty double x\n"
                                    "property double y\nproperty double z\nelement face 0\n"
                                    "property list uchar int vertex_indices\nend_header\n1 2 3\n4.5 5 6\n")
    v = read_ply(tmp_path / "a.ply")
    assert v["x"].tolist() == [1.0, 4.5] and v["z"].dtype == np.float64
    body = np.array([(1.5, -2.0, 3.0)], dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f4")]).tobytes()
    header = (b"ply\nformat binary_big_endian 1.0\nelement vertex 1\nproperty float x\n"
              b"property float y\nproperty float z\nend_header\n")
    (tmp_path / "b.ply").write_bytes(header + body)
    assert read_ply(tmp_path / "b.ply")["y"].tolist() == [-2.0]
    (tmp_path / "t.ply").write_bytes((tmp_path / "b.ply").read_bytes()[:-2])
    with pytest.raises(InputError, match="truncated"):
        read_ply(tmp_path / "t.ply")
    (tmp_path / "x.ply").write_text("not a ply")
    with pytest.raises(InputError, match="not a PLY"):
        read_ply(tmp_path / "x.ply")


def test_quaternions_round_trip_including_half_turns():
    R = np.concatenate([random_rotations(200), np.diag([1.0, -1, -1])[None], np.diag([-1.0, 1, -1])[None],
                        np.diag([-1.0, -1, 1])[None], np.eye(3)[None]])
    q = rotation_to_quaternion(R)
    assert np.allclose(np.linalg.norm(q, axis=1), 1) and (q[:, 0] >= 0).all()
    assert np.allclose(quaternion_to_rotation(q), R, atol=1e-12)
    # COLMAP's convention: a rotation of 90 degrees about z is (cos 45, 0, 0, sin 45)
    Rz = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    assert np.allclose(rotation_to_quaternion(Rz), [np.sqrt(0.5), 0, 0, np.sqrt(0.5)])


@pytest.fixture
def scene():
    """Three cameras around a cloud in front of them, images 640x480 and 320x240."""
    rng = np.random.default_rng(1)
    V = 3
    R = np.stack([np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
                  for a in (0.0, 0.2, -0.3)])  # turned about the vertical axis
    t = np.array([[0.0, 0, 0], [-0.5, 0.1, 0.2], [0.6, -0.1, 0.1]])
    E = np.concatenate([R, t[:, :, None]], axis=2)
    widths, heights = np.array([640, 640, 320]), np.array([480, 480, 240])
    K = np.array([[[500.0, 0, 319.5], [0, 510, 239.5], [0, 0, 1]]] * 2 + [[[250.0, 0, 160.2], [0, 250, 119.5],
                                                                           [0, 0, 1]]])
    xyz = rng.uniform([-1, -1, 3], [1, 1, 5], size=(600, 3))
    xyz[:5, 2] = -4  # behind every camera: left out
    rgb = rng.integers(0, 256, (600, 3), dtype=np.uint8)
    views = rng.integers(0, V, 600)
    return {"names": ["a/img0.jpg", "a/img1.jpg", "b/img2.png"], "widths": widths, "heights": heights,
            "K": K, "E": E, "xyz": xyz, "rgb": rgb, "views": views}


def test_colmap_text_model_is_read_back_by_pycolmap_with_consistent_tracks(tmp_path, scene):
    s = scene
    counts = write_colmap_text(tmp_path / "m", s["names"], s["widths"], s["heights"], s["K"], s["E"],
                               s["xyz"], s["rgb"], s["views"])
    assert counts["images"] == 3 and counts["dropped_points"] >= 5 and counts["points"] > 400
    rec = pycolmap.Reconstruction(str(tmp_path / "m"))
    assert rec.num_images() == 3 and rec.num_points3D() == counts["points"]
    by_name = {im.name: im for im in rec.images.values()}
    for v, name in enumerate(s["names"]):
        im = by_name[name]
        assert np.allclose(im.cam_from_world().matrix(), s["E"][v], atol=1e-9)
        cam = im.camera
        assert cam.model == pycolmap.CameraModelId.PINHOLE and (cam.width, cam.height) == (s["widths"][v],
                                                                                            s["heights"][v])
        fx, fy, cx, cy = cam.params
        assert np.allclose([fx, fy, cx - 0.5, cy - 0.5], [s["K"][v][0, 0], s["K"][v][1, 1], s["K"][v][0, 2],
                                                         s["K"][v][1, 2]])
    for pid, point in rec.points3D.items():
        (element,) = point.track.elements
        im = rec.images[element.image_id]
        obs = im.points2D[element.point2D_idx]
        assert obs.point3D_id == pid
        assert np.allclose(im.project_point(point.xyz), obs.xy, atol=1e-4)  # observation = projection
        assert 0 <= obs.xy[0] <= im.camera.width and 0 <= obs.xy[1] <= im.camera.height
    # colours and coordinates survive
    some = rec.points3D[1]
    kept = np.flatnonzero([np.allclose(some.xyz, p) for p in s["xyz"]])
    assert len(kept) == 1 and some.color.tolist() == s["rgb"][kept[0]].tolist()

    model = read_colmap_text(tmp_path / "m")
    assert model["names"] == s["names"]
    assert np.allclose(model["intrinsics"], s["K"]) and np.allclose(model["extrinsics"], s["E"], atol=1e-9)
    assert model["xyz"].shape == (counts["points"], 3)


def test_colmap_export_rejects_mismatched_inputs(tmp_path, scene):
    s = scene
    with pytest.raises(InputError, match="must match"):
        write_colmap_text(tmp_path, s["names"], s["widths"], s["heights"], s["K"], s["E"], s["xyz"], s["rgb"],
                          np.full(600, 7))
    with pytest.raises(InputError, match="whitespace"):
        write_colmap_text(tmp_path, ["a b.jpg", "c", "d"], s["widths"], s["heights"], s["K"], s["E"],
                          s["xyz"], s["rgb"], s["views"])
