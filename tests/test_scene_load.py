"""Loading scene views: image decoding edge cases (EXIF orientation, grayscale, alpha, 16-bit,
damaged files, huge images), view selection, mixed sizes, video frames, and the Ray stage's row."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from tomeray.operators.scene_load import (
    ImageReadError,
    SceneLoader,
    load_scene_views,
    read_image,
    read_video_frames,
    video_frame_indices,
    view_order,
)


@pytest.fixture(scope="module")
def aloe_small(opencv_data, tmp_path_factory):
    """aloeL.jpg at a quarter size (321x278): a real photo, small enough to keep the tests fast."""
    img = Image.open(opencv_data / "aloeL.jpg")
    return img.resize((img.width // 4, img.height // 4))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_opencv_imread(aloe_small, tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    aloe_small.save(path, exif=exif.tobytes())
    expected = cv2.imread(str(path))[:, :, ::-1]  # IMREAD_COLOR applies the orientation
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.array_equal(got, expected)
    if orientation >= 5:  # rotated by 90 degrees: width and height swap
        assert got.shape[:2] == (aloe_small.width, aloe_small.height)


def test_grayscale_alpha_16bit_and_float_images(tmp_path):
    gray = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    out = read_image(tmp_path / "gray.png")
    assert out.shape == (12, 20, 3)
    assert np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)

    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[0, 0, 3] = 255  # opaque
    bgra[0, 1, 3] = 0  # transparent -> white
    bgra[0, 2, 3] = 128  # half -> halfway to white
    cv2.imwrite(str(tmp_path / "alpha.png"), bgra)
    out = read_image(tmp_path / "alpha.png")
    assert out[0, 0].tolist() == [0, 0, 200]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[0, 2].tolist() == [127, 127, 227]

    deep = np.full((6, 8, 3), 65535, np.uint16)
    deep[0, 0] = (0, 257 * 10, 257 * 100)  # BGR
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [100, 10, 0] and out[1, 1].tolist() == [255] * 3

    real = np.full((5, 5, 3), 0.5, np.float32)
    real[0, 0] = (2.0, -1.0, 0.0)  # clipped to [0, 1]
    cv2.imwrite(str(tmp_path / "float.tiff"), real)
    out = read_image(tmp_path / "float.tiff")
    assert out[1, 1].tolist() == [128] * 3 and out[0, 0].tolist() == [0, 0, 255]


def test_damaged_and_non_image_files_say_why(opencv_data, tmp_path):
    jpeg = (opencv_data / "left01.jpg").read_bytes()
    png = (opencv_data / "graf1.png").read_bytes()
    cases = {
        "truncated.jpg": (jpeg[: len(jpeg) * 9 // 10], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "text.jpg": (b"hello, I am not a picture\n", "not an image"),
        "empty.png": (b"", "empty"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageReadError, match=reason):
            read_image(tmp_path / name)
    with pytest.raises(ImageReadError, match="No such file"):
        read_image(tmp_path / "missing.jpg")


def test_images_over_the_pixel_limit_are_refused_before_decoding(opencv_data):
    with pytest.raises(ImageReadError, match=r"640x480.*load.max_pixels"):
        read_image(opencv_data / "left01.jpg", max_pixels=640 * 480 - 1)
    assert read_image(opencv_data / "left01.jpg", max_pixels=640 * 480).shape == (480, 640, 3)


def test_view_order_subsamples_evenly_and_keeps_spares():
    assert view_order(5, 8) == [0, 1, 2, 3, 4]
    order = view_order(10, 4)
    assert order[:4] == [0, 3, 6, 9] and sorted(order) == list(range(10))
    assert view_order(10, 4, "split") == list(range(10))


def test_video_frame_indices():
    assert video_frame_indices(100, 25.0, 5).tolist() == [0, 25, 50, 74, 99]
    assert video_frame_indices(3, 25.0, 16).tolist() == [0, 1, 2]
    # 2 frames per second of a 10 fps video: every 5th frame, then at most 4 of them
    assert video_frame_indices(40, 10.0, 0, sample_fps=2.0).tolist() == [0, 5, 10, 15, 20, 25, 30, 35]
    assert video_frame_indices(40, 10.0, 4, sample_fps=2.0).tolist() == [0, 10, 25, 35]
    assert video_frame_indices(0, 10.0, 4).tolist() == []


def test_scene_with_mixed_sizes_bad_files_and_a_budget(opencv_data, aloe_small, tmp_path):
    paths = [str(opencv_data / "left01.jpg"), str(tmp_path / "broken.jpg"), str(tmp_path / "aloe.jpg"),
             str(tmp_path / "tall.png"), str(tmp_path / "sliver.png"), str(opencv_data / "right01.jpg")]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    aloe_small.save(tmp_path / "aloe.jpg")
    cv2.imwrite(str(tmp_path / "tall.png"), np.full((300, 100, 3), 40, np.uint8))
    cv2.imwrite(str(tmp_path / "sliver.png"), np.full((4, 3000, 3), 90, np.uint8))  # flatter than a patch
    out = load_scene_views({"scene": "mixed", "images": paths, "frame_idx": list(range(6))}, max_views=4)
    # budget 4: views 0, 2, 3, 5 first; 5 is fine, so the broken one (1) is never tried; sliver (4) neither
    assert out["frame_idx"].tolist() == [0, 2, 3, 5] and out["skipped"] == 2 and not out["errors"]
    images = out["images"]
    assert images.dtype == np.uint8 and images.shape[0] == 4 and images.shape[2] == 518
    assert images.shape[1] == min(518, max(out["content_hw"][:, 0])) == 518  # the tall view is cropped
    # crop mode: every view is 518 wide; the tall one is cropped to 518 high, offsets place the content
    assert (out["content_hw"][:, 1] == 518).all()
    tall = out["image_path"].index(str(tmp_path / "tall.png"))
    assert out["content_hw"][tall, 0] == round(300 * 518 / 100 / 14) * 14 and out["offset_xy"][tall, 1] < 0
    # white padding around the shorter views, image content inside
    left = out["image_path"].index(paths[0])
    top = int(out["offset_xy"][left, 1])
    assert top > 0 and (images[left, :top] == 255).all()
    assert out["scale_xy"][left].tolist() == pytest.approx([518 / 640, 392 / 480])

    # no budget: everything is tried; failures are reported per image and the rest is used
    out = load_scene_views({"scene": "mixed", "images": paths}, max_views=0)
    assert out["frame_idx"].tolist() == [0, 2, 3, 5]
    failed = {e["path"]: e for e in out["errors"]}
    assert set(failed) == {paths[1], paths[4]}
    assert failed[paths[4]]["error_type"] == "InputError" and "aspect ratio" in failed[paths[4]]["message"]
    # the job adds the scene and the input (pipeline.reconstruction.writer)
    assert all(set(e) == {"path", "stage", "error_type", "message"} and e["stage"] == "load"
               for e in out["errors"])

    padded = load_scene_views({"scene": "mixed", "images": paths[:1] + paths[2:4]}, mode="pad")
    assert padded["images"].shape[1:3] == (518, 518)


def test_video_scene_frames_match_a_sequential_opencv_read(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for i in range(30):
        writer.write(np.roll(base, 4 * i, axis=1))
    writer.release()
    indices, frames = read_video_frames(path, num_frames=4)
    assert indices.tolist() == [0, 10, 19, 29] and len(frames) == 4
    cap = cv2.VideoCapture(str(path))
    reference = []
    for _ in range(30):
        ok, frame = cap.read()
        assert ok
        reference.append(frame[:, :, ::-1])
    for i, frame in zip(indices, frames):
        assert frame.shape == (120, 160, 3)
        assert np.abs(frame.astype(int) - reference[i].astype(int)).mean() < 2.0
    out = load_scene_views({"scene": "clip", "video": str(path)}, max_views=3, video_frames=4)
    assert out["frame_idx"].tolist() == [0, 19, 29]  # the budget picks 3 of the 4 sampled frames
    assert out["images"].shape == (3, 392, 518, 3) and set(out["image_path"]) == {str(path)}

    (tmp_path / "cut.avi").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    out = load_scene_views({"scene": "cut", "video": str(tmp_path / "cut.avi")})
    assert len(out["images"]) == 0 and "truncated" in out["errors"][0]["message"]


def test_scene_loader_row_carries_views_and_errors_as_the_ray_stage_does(opencv_data, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    spec = {"scene": "s", "images": [str(opencv_data / "left01.jpg"), str(tmp_path / "bad.jpg")],
            "frame_idx": [0, 1]}
    row = SceneLoader(max_views=8)({"scene": np.array(["s"], dtype=object),
                                    "spec": np.array([json.dumps(spec)], dtype=object)})
    assert row["images"].shape == (1, 1, 392, 518, 3) and row["frame_idx"].tolist() == [[0]]
    assert json.loads(row["image_path"][0]) == [spec["images"][0]]
    assert row["orig_hw"].tolist() == [[[480, 640]]]
    errors = json.loads(row["errors"][0])
    assert [e["path"] for e in errors] == [str(tmp_path / "bad.jpg")]


def test_png_images_still_decode_after_a_video_was_decoded(tmp_path, opencv_data):
    """A worker that decoded a video (decord loaded) must still read PNG images: in a fresh process,
    decode a video first, then read a PNG."""
    import subprocess
    import sys

    png = tmp_path / "gray.png"
    code = (
        "import sys\n"
        "from operators.video_decode import decode_clips\n"
        "from operators.scene_load import read_image\n"
        f"clip = next(iter(decode_clips({str(opencv_data / 'tree.avi')!r}, num_frames=2)))\n"
        "import cv2, numpy as np\n"
        f"cv2.imwrite({str(png)!r}, np.arange(64 * 48, dtype=np.uint8).reshape(48, 64))\n"
        f"print(read_image({str(png)!r}).shape)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("(48, 64, 3)")
