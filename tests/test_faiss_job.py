"""``tomeray index`` grows its FAISS index instead of rebuilding it: a rerun that adds two videos to
an IVF index over the segments of one video does not retrain it (same trained parts, same
``trained_on``), the index grows by their rows, and search finds both new videos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from media import write_video
from tomeray.pipeline.video.cli import main
from tomeray.pipeline.video.faiss_rows import embedding_matrix
from tomeray.pipeline.video.layout import IndexLayout
from tomeray.pipeline.video.search import VideoSearcher
from tomeray.pipeline.video.search_cli import main as search_main

FAST = ["model.arch=ViT-S-32", "model.pretrained=none", "model.preset=none", "model.num_frames=4",
        "inference.device=cpu", "ray.progress=false", "ray.actors.count=1"]
IVF = FAST + ["faiss.factory=IVF4,Flat", "sampling.segment_s=2"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_a_rerun_adds_two_videos_without_retraining(ray_local, tmp_path, capsys):
    out = tmp_path / "idx"
    first_video = write_video(tmp_path / "first.avi", 160, 160, 120, seed=3)  # 16 s at 10 frames/s
    assert main([str(first_video), "--out", str(out), *IVF]) == 0
    layout = IndexLayout(out)
    first = layout.read_manifest()["faiss"]
    assert first["factory"] == "IVF4,Flat" and first["build"]["mode"] == "trained"
    assert first["ntotal"] == first["trained_on"] == 8  # 16 s of video in 2 s windows
    tuning = first["tuning"]  # measured on held-out rows against exact search, saved with the index
    assert tuning["search"] == {"nprobe": first["params"]["nprobe"]} and 0 <= tuning["recall_at_10"] <= 1
    assert tuning["target_recall"] == 0.95 and tuning["queries"] == 8
    assert f"FAISS search tuned: nprobe={first['params']['nprobe']}: recall@10 " in capsys.readouterr().out
    assert search_main([str(out), "people", "--json", "inference.device=cpu"]) == 0
    shown = json.loads(capsys.readouterr().out)["faiss"]
    assert shown == {"factory": "IVF4,Flat", "params": {"nprobe": first["params"]["nprobe"]},
                     "tuning": tuning}
    assert search_main([str(out), "people", "--json", "--nprobe", "4", "inference.device=cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["faiss"]["params"] == {"nprobe": 4}  # the override wins

    new = [write_video(tmp_path / f"new {i}.avi", 15, 160, 120, seed=20 + i) for i in range(2)]  # 1 window
    assert main([str(first_video), *map(str, new), "--out", str(out), *IVF]) == 0
    assert "FAISS IVF4,Flat: incremental; 2 vectors added, 0 removed, 10 in all (trained on 8)" in \
        capsys.readouterr().out
    second = layout.read_manifest()["faiss"]
    assert second["build"]["mode"] == "incremental" and second["build"]["added"] == 2
    assert second["trained_on"] == first["trained_on"] and second["ntotal"] == first["ntotal"] + 2
    assert second["trained_fingerprint"] == first["trained_fingerprint"]  # the same trained parts
    assert layout.read_manifest()["faiss_factory"] == "IVF4,Flat"  # still there for older readers

    table = layout.read_embeddings(["video_id", "path", "embedding"])
    searcher = VideoSearcher(out, device="cpu")
    assert len(searcher) == table.num_rows == 10
    paths = table["path"].to_pylist()
    vectors = embedding_matrix(table, int(layout.read_manifest()["dim"]))
    for video in new:
        row = paths.index(str(video))
        (hits,) = searcher.search_embeddings(vectors[row : row + 1], k=1)
        hit = hits[0]
        assert hit.path == str(video) and hit.score == pytest.approx(1.0, abs=1e-4)
    mapped = VideoSearcher(out, device="cpu", mmap=True)  # served from the file, same answers
    queries = np.asarray(vectors[:4])
    assert mapped.search_embeddings(queries, k=3) == searcher.search_embeddings(queries, k=3)
