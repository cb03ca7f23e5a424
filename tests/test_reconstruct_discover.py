"""Scene discovery and the job's up-front checks (config, weights, arguments): fast, no Ray."""

from __future__ import annotations

import shutil

import pytest
from tomeray.pipeline.core.config import load_config
from tomeray.pipeline.reconstruction.cli import main
from tomeray.pipeline.reconstruction.config import ReconConfig
from tomeray.pipeline.reconstruction.discover import discover_scenes


@pytest.fixture
def cfg():
    return load_config(ReconConfig, "reconstruct", [])


def test_scenes_root_folders_videos_and_loose_images(tmp_path, opencv_data, cfg):
    root = tmp_path / "root"
    (root / "b scene" / "images" / "sub").mkdir(parents=True)
    (root / "a").mkdir()
    (root / ".hidden").mkdir()
    (root / "empty").mkdir()
    for name in ("z.jpg", "images/y.PNG", "images/sub/x.jpg", "readme.txt", ".dot.jpg"):
        (root / "b scene" / name).write_bytes(b"x")
    (root / "a" / "1.jpg").write_bytes(b"x")
    (root / ".hidden" / "1.jpg").write_bytes(b"x")
    (root / "clip.avi").write_bytes(b"x")
    (root / "loose.jpg").write_bytes(b"x")
    specs, errors = discover_scenes([str(root)], cfg)
    by_name = {s["scene"]: s for s in specs}
    assert set(by_name) == {"a", "b scene", "clip", "root"}
    rel = [p.split("b scene/")[1] for p in by_name["b scene"]["images"]]
    assert rel == ["images/sub/x.jpg", "images/y.PNG", "z.jpg"]  # by path in the scene, hidden skipped
    assert by_name["b scene"]["frame_idx"] == [0, 1, 2]
    assert by_name["clip"]["video"].endswith("clip.avi")
    assert by_name["root"]["images"][0].endswith("loose.jpg")  # loose images: a scene named after the root
    assert [(e["scene"], e["error_type"], e["stage"]) for e in errors] == [("empty", "NoImages", "discover")]


def test_a_folder_of_images_is_one_scene_and_bad_inputs_are_reported(tmp_path, opencv_data, cfg):
    (tmp_path / "kitchen").mkdir()
    shutil.copy(opencv_data / "left01.jpg", tmp_path / "kitchen")
    (tmp_path / "other" / "kitchen").mkdir(parents=True)
    (tmp_path / "other" / "kitchen" / "a.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("?")
    specs, errors = discover_scenes([str(tmp_path / "kitchen"), str(tmp_path / "other"),
                                     str(tmp_path / "missing"), str(tmp_path / "notes.txt")], cfg)
    assert [s["scene"] for s in specs] == ["kitchen"]
    kinds = sorted(e["error_type"] for e in errors)
    assert kinds == ["DuplicateScene", "FileNotFoundError", "UnsupportedInput"]


def test_scene_lists(tmp_path, cfg):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "list.csv").write_text("scene,image_path\nkitchen,imgs/b.jpg\nkitchen,imgs/a.jpg\n"
                                       "garden,/abs/c.jpg\n..,imgs/a.jpg\n")
    specs, errors = discover_scenes([str(tmp_path / "list.csv")], cfg)
    by_name = {s["scene"]: s for s in specs}
    imgs = tmp_path / "imgs"
    assert by_name["kitchen"]["images"] == [str(imgs / "b.jpg"), str(imgs / "a.jpg")]  # list order
    assert by_name["garden"]["images"] == ["/abs/c.jpg"]
    assert [e["error_type"] for e in errors] == ["InvalidSceneName"]
    (tmp_path / "bad.csv").write_text("name,path\nx,y\n")
    specs, errors = discover_scenes([str(tmp_path / "bad.csv")], cfg)
    assert not specs and "missing column" in errors[0]["message"]


@pytest.mark.parametrize(("override", "message"), [
    ("views.policy=sometimes", "views.policy must be chunks, subsample or split"),
    ("load.size=500", "multiple of 14"),
    ("model.arch=vggt-huge", "unknown VGGT arch"),
    ("views.nonsense=1", "unknown config key 'views.nonsense'"),
    ("model.pretrained=/no/such/vggt.pt", "checkpoint file not found"),
])
def test_bad_settings_fail_before_any_work(tmp_path, opencv_data, override, message, capsys):
    (tmp_path / "s").mkdir()
    shutil.copy(opencv_data / "left01.jpg", tmp_path / "s")
    assert main([str(tmp_path), "--out", str(tmp_path / "out"), "model.pretrained=none", override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "scenes").exists()


def test_arguments(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2 and "--out is required" in capsys.readouterr().err
    assert main(["--summary", str(tmp_path)]) == 2
    assert "no reconstruction output at" in capsys.readouterr().err
