"""The indexing job on a real two-node Ray cluster with token authentication: ``ray job submit``,
work spread over both raylets, and resume after the driver is killed with SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from media import write_video
from ray_cluster import REPO, RayHead, kill_driver_when
from tomeray.pipeline.video.ids import id_key, stable_id
from tomeray.pipeline.video.layout import IndexLayout

FAST = ["model.arch=ViT-S-32", "model.pretrained=none", "inference.device=cpu", "ray.progress=false"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster corpus")
    for i in range(10):
        write_video(root / f"clip {i:02d}.avi", 40, 320, 240, seed=i)
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (1 CPU) and a second raylet (1 CPU) on this machine, token auth on."""
    with RayHead(tmp_path_factory.mktemp("ray"), num_cpus=1) as head:
        head.add_worker(num_cpus=1, resources={"node2": 1})
        yield head


def indexed_exactly_once(out: Path, corpus: Path) -> None:
    layout = IndexLayout(out)
    raw = [v for p in layout.embedding_shards() for v in pq.read_table(p)["video_id"].to_pylist()]
    expected = {stable_id(id_key(p)) for p in corpus.glob("*.avi")}
    assert sorted(raw) == sorted(expected)  # every input once: none lost, none duplicated
    table = layout.read_embeddings()
    for path, vid in zip(table["path"].to_pylist(), table["video_id"].to_pylist()):
        assert vid == stable_id(id_key(path))
    assert layout.read_manifest()["counts"]["rows"] == len(expected)


def test_ray_job_submit_with_token_auth(cluster, corpus, tmp_path):
    out = tmp_path / "idx"
    ok, logs = cluster.submit(["python", "-m", "tomeray.jobs.index_videos", str(corpus), "--out", str(out),
                               *FAST], timeout=600)
    assert ok, logs[-3000:]
    assert "indexed 10 videos" in logs and "random-init(seed=0)" in logs
    indexed_exactly_once(out, corpus)


def test_work_runs_on_both_nodes(cluster, corpus, tmp_path):
    """The embed actor takes a whole 1-CPU node, so decode tasks (1 CPU each) can only run on the
    other one: the rows must carry two distinct node ids, one per raylet."""
    out = tmp_path / "idx"
    cmd = [sys.executable, "-m", "tomeray.jobs.index_videos", str(corpus), "--out", str(out), *FAST,
           "ray.actors.count=1", "ray.actors.num_cpus=1", "ray.tasks.num_cpus=1"]
    proc = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = (out / "runs").glob("*.json")
    run = json.loads(record.read_text())
    assert sum(run["decode_nodes"].values()) == sum(run["embed_nodes"].values()) == 10
    assert len(run["decode_nodes"]) == len(run["embed_nodes"]) == 1, run
    assert set(run["decode_nodes"]) != set(run["embed_nodes"]), run  # two raylets did the work
    indexed_exactly_once(out, corpus)


def test_resume_after_the_driver_is_killed(cluster, corpus, tmp_path):
    out = tmp_path / "idx"
    # One row per shard and per embed batch, so shards appear while the run is far from done.
    cmd = [sys.executable, "-m", "tomeray.jobs.index_videos", str(corpus), "--out", str(out), *FAST,
           "output.shard_rows=1", "ray.actors.batch_size=1", "ray.actors.count=1"]
    kill_driver_when(cmd, cluster.env, lambda: any((out / "embeddings").glob("part-*.parquet")),
                     "writing a shard")
    layout = IndexLayout(out)
    before = layout.read_embeddings()
    assert 0 < before.num_rows < 10, "the kill did not land mid-run"
    assert not (out / "index.faiss").exists()  # the run never finished

    rerun = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"skipped {before.num_rows} already indexed" in rerun.stdout
    indexed_exactly_once(out, corpus)
    after = layout.read_embeddings()
    kept = after.filter(np.isin(after["video_id"].to_numpy(), before["video_id"].to_numpy()))
    assert kept.sort_by("video_id").equals(before.sort_by("video_id"))  # rows from before the kill kept
    assert not list(out.rglob("*.tmp"))
