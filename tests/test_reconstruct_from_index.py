"""Scenes from an index: 'tomeray reconstruct --from-index' makes a scene of each (filtered) row's time
window of the served opencv-doc index (random vggt-tiny weights) and resumes without redoing them;
the frames of a window come from that window only."""

from __future__ import annotations

import numpy as np
import pytest
from media import write_video
from tomeray.operators.scene_load import read_video_frames
from tomeray.pipeline.reconstruction.layout import ReconLayout
from tomeray.pipeline.service.from_index import index_scenes, main
from tomeray.pipeline.video.filters import SearchFilters
from tomeray.pipeline.video.layout import IndexLayout

FAST = ["model.arch=vggt-tiny", "model.pretrained=none", "ray.progress=false", "video.num_frames=2",
        "points.max_points=2000"]


def test_a_window_reads_frames_of_that_window_only(tmp_path):
    video = write_video(tmp_path / "v.avi", 60, 64, 48, fps=10.0)
    frames, images = read_video_frames(video, 4, window_s=(2.0, 3.5))
    assert frames.tolist() == [20, 25, 30, 35] and len(images) == 4
    whole, _ = read_video_frames(video, 4)
    assert whole.tolist() == [0, 20, 39, 59]
    assert read_video_frames(video, 3, window_s=(5.5, float("inf")))[0].tolist() == [55, 57, 59]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_reconstruct_from_index_rows_resumes(served_index, tmp_path, capsys):
    rows = IndexLayout(served_index).read_embeddings(["path", "start_s", "end_s", "fps"]).to_pylist()
    tree = [r for r in rows if r["path"].endswith("tree.avi")]
    specs = index_scenes(served_index, SearchFilters(path_glob="*tree.avi"))
    assert len(specs) == len(tree) >= 1
    assert sorted(s["window_s"] for s in specs) == sorted([r["start_s"], r["end_s"]] for r in tree)

    out = tmp_path / "recon"
    args = ["--from-index", str(served_index), "--out", str(out), "--path-glob", "*tree.avi", *FAST]
    assert main(args) == 0
    finished = ReconLayout(out).finished_scenes()
    assert sorted(finished) == sorted(s["scene"] for s in specs)
    cams = ReconLayout(out).read_cameras().to_pylist()
    for spec in specs:
        frames = [c["frame_idx"] for c in cams if c["scene"] == spec["scene"]]
        start, end = spec["window_s"]
        fps = tree[0]["fps"]  # tree.avi: 15 frames/s
        assert len(frames) == 2 and all(np.floor(start * fps) <= f <= np.ceil(end * fps) for f in frames)
    capsys.readouterr()
    assert main(args) == 0  # a rerun: every scene is finished already
    assert f"skipped {len(specs)} already finished" in capsys.readouterr().out
    nothing = ["--from-index", str(served_index), "--out", str(out), "--path-glob", "*nothing*", *FAST]
    assert main(nothing) == 2
