"""Overlapping chunks as independent model calls: a long scene's chunks run on different actors of
the pool (a real local Ray cluster, two ``vggt-tiny`` actors with random weights) and the scene put
together from them equals the sequential reconstruction of the same loaded views; a failed call
fails its scene with a clear reason."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tomeray.jobs.alignment_data import CHESS_VIEWS
from tomeray.operators.scene_chunks import ChunkSplitter, SceneCalls
from tomeray.operators.scene_reconstruct import SceneReconstructor
from tomeray.pipeline.core.config import load_config
from tomeray.pipeline.reconstruction.config import ReconConfig
from tomeray.pipeline.reconstruction.graph import chunk_splitter, reconstructor_kwargs, scene_loader
from tomeray.pipeline.reconstruction.job import run_reconstruct
from tomeray.pipeline.reconstruction.results import load_scene

SETTINGS = ["model.arch=vggt-tiny", "model.pretrained=none", "ray.progress=false", "load.size=224",
            "views.policy=chunks", "views.max_views=4", "views.chunk=4", "views.overlap=2",
            "refine.ba=true", "points.max_points=5000"]
POOL = ["ray.actors.count=2", "ray.actors.num_cpus=0.5", "ray.tasks.num_cpus=0.5"]


@pytest.fixture(scope="module")
def twelve_views(tmp_path_factory, opencv_data):
    scenes = tmp_path_factory.mktemp("parallel_chunks") / "scenes"
    (scenes / "chess").mkdir(parents=True)
    for i in CHESS_VIEWS[:12]:
        shutil.copy(opencv_data / f"left{i:02d}.jpg", scenes / "chess")
    (scenes / "short").mkdir()  # fits one model call: the path of every scene before chunks
    for i in CHESS_VIEWS[:3]:
        shutil.copy(opencv_data / f"right{i:02d}.jpg", scenes / "short")
    return scenes


def loaded_scene(cfg: ReconConfig, scenes) -> dict:
    """The chess scene as the load stage gives it (one row)."""
    images = sorted(str(p) for p in (scenes / "chess").iterdir())
    spec = {"scene": "chess", "images": images, "root": str(scenes / "chess"),
            "frame_idx": list(range(len(images))), "input": str(scenes)}
    return scene_loader(cfg)({"scene": np.asarray(["chess"], dtype=object),
                              "spec": np.asarray([json.dumps(spec)], dtype=object)})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_overlapping_chunks_run_on_two_actors_and_match_the_sequential_result(twelve_views, ray_local,
                                                                               tmp_path):
    out = tmp_path / "R"
    summary = run_reconstruct([str(twelve_views)], out, [*SETTINGS, *POOL])
    assert summary.exit_code == 0 and summary.reconstructed == 2
    short = json.loads((out / "scenes" / "scene=short.json").read_text())
    assert short["views"] == 3 and short["chunks"] == 1 and "model_calls" not in short
    record = json.loads((out / "scenes" / "scene=chess.json").read_text())
    assert record["views"] == 12 and record["chunks"] == 5
    calls = record["model_calls"]
    assert [(c["first_view"], c["last_view"]) for c in calls] == [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11)]
    assert len({c["actor"] for c in calls}) == 2, calls  # the scene's chunks ran on both actors
    assert [r["actor"] for r in record["alignment"]] == [c["actor"] for c in calls[1:]]
    assert record["model_seconds"] >= sum(c["seconds"] for c in calls) - 1e-3  # summed over the calls
    assert record["refine"]["tracks_from"] == "features" and record["refine"]["matching"]["tracks"] > 0
    # the same loaded views through one reconstructor, one call after another
    cfg = load_config(ReconConfig, "reconstruct", SETTINGS)
    row = SceneReconstructor(**reconstructor_kwargs(cfg))(loaded_scene(cfg, twelve_views))
    stats = json.loads(str(row["stats"][0]))
    assert str(row["status"][0]) == "ok" and "model_calls" not in stats
    for fit, ref in zip(record["alignment"], stats["alignment"]):
        assert fit["pairs"] == ref["pairs"] and fit["scale"] == pytest.approx(ref["scale"], rel=1e-4)
    assert record["refine"]["applied"] == stats["refine"]["applied"]
    assert record["refine"]["matching"] == stats["refine"]["matching"]
    cams, pts = load_scene(out, "chess")
    np.testing.assert_allclose(cams.extrinsic, row["extrinsic"][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cams.intrinsic, row["intrinsic"][0], rtol=1e-4, atol=1e-4)
    assert len(pts.xyz) == len(row["xyz"][0]) == record["points"]
    np.testing.assert_allclose(pts.xyz, row["xyz"][0], rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(pts.frame_idx, row["point_frame"][0])
    rerun = run_reconstruct([str(twelve_views)], out, [*SETTINGS, *POOL])  # resume: nothing redone
    assert rerun.exit_code == 0 and rerun.skipped == 2 and rerun.reconstructed == 0


def test_overlapping_chunks_a_failed_call_fails_its_scene_with_the_reason(twelve_views):
    cfg = load_config(ReconConfig, "reconstruct", [*SETTINGS[:-2], "points.max_points=500"])
    kwargs = reconstructor_kwargs(cfg)
    splitter = chunk_splitter(cfg)
    assert isinstance(splitter, ChunkSplitter)
    loaded = loaded_scene(cfg, twelve_views)
    rows = splitter(loaded)
    assert rows["chunk"].tolist() == [0, 1, 2, 3, 4] and rows["chunks"].tolist() == [5] * 5
    assert rows["load_cpu_s"].sum() == pytest.approx(float(loaded["load_cpu_s"][0]))  # shared out
    rec = SceneReconstructor(**kwargs)
    one = {k: v[3:4] for k, v in rows.items()}
    one["images"] = np.asarray(rows["images"][3])[None, :, :0]  # an empty image: the model call raises
    broken = rec(one)
    call = json.loads(str(broken["call"][0]))
    assert call["status"] == "failed" and call["first_view"] == 6
    calls = SceneCalls(kwargs)
    results = []
    for k in (4, 0, 3, 1, 2):  # the calls arrive in any order
        row = broken if k == 3 else rec({key: v[k:k + 1] for key, v in rows.items()})
        results.append(calls.add({key: v[0] for key, v in row.items()}))
    assert results[:-1] == [None] * 4 and not calls.pending
    scene = results[-1]
    assert str(scene["status"]) == "failed" and scene["extrinsic"].shape == (0, 3, 4)
    errors = json.loads(str(scene["errors"]))
    assert [e["stage"] for e in errors] == ["reconstruct"]
    assert errors[0]["message"].startswith("model call 4 of 5 (views 6..9): ")
    # the same calls, none failed: a complete scene, its views in order
    calls = SceneCalls(kwargs)
    done = [calls.add({key: v[0] for key, v in rec({k: x[i:i + 1] for k, x in rows.items()}).items()})
            for i in range(5)]
    assert str(done[-1]["status"]) == "ok" and done[-1]["extrinsic"].shape == (12, 3, 4)
    assert done[-1]["frame_idx"].tolist() == list(range(12))


def test_overlapping_chunks_vggt_tracks_taken_per_call_equal_the_sequential_tracks(opencv_data):
    """Bundle adjustment with ``refine.tracks=vggt`` on a scene run in calls: each call takes its
    tracks where it runs (they travel as JSON), and merged they are the sequential path's tracks."""
    import dataclasses

    import cv2
    import torch
    from tomeray.models.vggt import MergeConfig
    from tomeray.models.vggt.model import VGGT
    from tomeray.models.vggt.registry import get_arch
    from tomeray.models.vggt.weights import init_random
    from tomeray.operators.scene_refine import merge_vggt_tracks, vggt_call_tracks, vggt_tracks

    torch.manual_seed(0)
    model = VGGT(dataclasses.replace(get_arch("vggt-tiny"), track_head=True), MergeConfig(enabled=False))
    init_random(model)
    model.eval()
    images = np.stack([cv2.resize(cv2.imread(str(opencv_data / f"left{i:02d}.jpg")), (140, 140))[:, :, ::-1]
                       for i in (1, 2, 3, 4, 5, 6)])
    chunks = [np.arange(0, 3), np.arange(1, 4), np.arange(2, 6)]
    cpu = torch.device("cpu")
    sequential, counts = vggt_tracks(model, images, chunks, cpu, "fp32", max_points=20, min_score=0.0)
    parts = [vggt_call_tracks(model, images[c], cpu, "fp32", max_points=20, min_score=0.0) for c in chunks]
    parts = [json.loads(json.dumps({k: np.asarray(v).tolist() for k, v in p.items()})) for p in parts]
    merged, merged_counts = merge_vggt_tracks(parts, chunks)
    assert counts == merged_counts and counts["tracks"] > 0
    np.testing.assert_array_equal(merged.view, sequential.view)
    np.testing.assert_array_equal(merged.track, sequential.track)
    np.testing.assert_allclose(merged.xy, sequential.xy, rtol=1e-5, atol=1e-4)
