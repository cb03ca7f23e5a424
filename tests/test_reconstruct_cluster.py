"""The reconstruction job on a real Ray cluster with token authentication: ``ray job submit``, and
resume after the driver is killed with SIGKILL (no scene lost, none duplicated, none redone)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from ray_cluster import REPO, RayHead, kill_driver_when
from tomeray.pipeline.reconstruction.layout import ReconLayout
from tomeray.pipeline.reconstruction.results import load_scene

FAST = ["model.arch=vggt-tiny", "model.pretrained=none", "ray.progress=false", "points.max_points=20000"]
PAIRS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12]  # opencv-doc has no left10/right10

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, opencv_data):
    """Eleven stereo-pair scenes (left/right chessboard views)."""
    root = tmp_path_factory.mktemp("pairs")
    for i in PAIRS:
        (root / f"pair{i:02d}").mkdir()
        for side in ("left", "right"):
            shutil.copy(opencv_data / f"{side}{i:02d}.jpg", root / f"pair{i:02d}")
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with RayHead(tmp_path_factory.mktemp("ray"), num_cpus=2) as head:
        yield head


def reconstructed_exactly_once(out: Path) -> None:
    layout = ReconLayout(out)
    expected = {f"pair{i:02d}" for i in PAIRS}
    assert set(layout.finished_scenes()) == expected
    cameras = pq.read_table(layout.cameras_path)
    keys = list(zip(cameras["scene"].to_pylist(), cameras["frame_idx"].to_pylist()))
    assert sorted(keys) == sorted((s, f) for s in expected for f in (0, 1))  # none lost, none twice
    for scene, record in layout.finished_scenes().items():
        assert len(load_scene(out, scene)[1].xyz) == record["points"]
    assert layout.read_manifest()["complete"] and not list(out.rglob("*.tmp"))


def test_ray_job_submit_with_token_auth(cluster, scenes, tmp_path):
    out = tmp_path / "recon"
    ok, logs = cluster.submit(["python", "-m", "tomeray.jobs.reconstruct_scenes", str(scenes), "--out",
                               str(out), *FAST], timeout=600)
    assert ok, logs[-3000:]
    assert f"reconstructed {len(PAIRS)} scene(s)" in logs and "random-init(seed=0)" in logs
    reconstructed_exactly_once(out)


def test_resume_after_the_driver_is_killed(cluster, scenes, tmp_path):
    out = tmp_path / "recon"
    cmd = [sys.executable, "-m", "tomeray.jobs.reconstruct_scenes", str(scenes), "--out", str(out), *FAST,
           "ray.tasks.concurrency=1"]
    kill_driver_when(cmd, cluster.env, lambda: any((out / "scenes").glob("*.json")), "finishing a scene")
    layout = ReconLayout(out)
    before = layout.finished_scenes()
    assert 0 < len(before) < len(PAIRS), "the kill did not land mid-run"
    assert not layout.cameras_path.exists() and not layout.read_manifest()["complete"]  # never finished
    points_before = {s: load_scene(out, s)[1].xyz for s in before}

    rerun = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert re.search(rf"skipped {len(before)} already finished", rerun.stdout), rerun.stdout
    assert f"reconstructed {len(PAIRS) - len(before)} scene(s)" in rerun.stdout
    reconstructed_exactly_once(out)
    after = layout.finished_scenes()
    for scene, record in before.items():  # finished before the kill: kept as they were, not redone
        assert after[scene] == record
        assert np.array_equal(load_scene(out, scene)[1].xyz, points_before[scene])
