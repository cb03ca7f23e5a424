"""The distributed FAISS build on a real two-raylet Ray cluster (token auth): training on one
worker, groups of shards encoded by tasks on both nodes, parts merged by the driver; the result
equals the single-process build of the same shards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ray_cluster import REPO, RayHead
from tomeray.jobs.bench_faiss_data import make_vectors, write_shard
from tomeray.pipeline.video.faiss_build import update_faiss
from tomeray.pipeline.video.faiss_config import FaissConfig
from tomeray.pipeline.video.faiss_index import index_ids, load_index, search_index

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FACTORY = "IVF16,PQ4x4np,Refine(SQ8)"
DRIVER = """
import json, sys
from pathlib import Path
import ray
from tomeray.pipeline.video.faiss_build import update_faiss
from tomeray.pipeline.video.faiss_config import FaissConfig
ray.init(log_to_driver=False)
root = Path(sys.argv[1])
cfg = FaissConfig(factory=sys.argv[2], workers=2, group_rows=1000)
entry = update_faiss(root / "index.faiss", sorted((root / "emb").glob("part-*.parquet")), cfg, dim=16)
print(json.dumps(entry))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (1 CPU) and a second raylet (1 CPU) on this machine."""
    with RayHead(tmp_path_factory.mktemp("ray"), num_cpus=1) as head:
        head.add_worker(num_cpus=1)
        yield head


def test_distributed_build_equals_the_single_process_build(cluster, tmp_path):
    base, queries = make_vectors("clustered", 8000, 16, 50, seed=11)
    local = tmp_path / "local"
    (local / "emb").mkdir(parents=True)
    for i in range(8):
        write_shard(local / "emb" / f"part-a-{i:03d}.parquet", np.arange(i * 1000, (i + 1) * 1000) * 7,
                    base[i * 1000 : (i + 1) * 1000])
    distributed = tmp_path / "distributed"
    shutil.copytree(local, distributed)
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(distributed), FACTORY], env=cluster.env,
                          capture_output=True, text=True, timeout=400, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads(proc.stdout.strip().splitlines()[-1])
    assert remote["build"]["workers"] == 2 and remote["build"]["groups"] == 8
    assert len(remote["build"]["nodes"]) == 2 and sum(remote["build"]["nodes"].values()) == 8  # both raylets

    alone = update_faiss(local / "index.faiss", sorted((local / "emb").glob("part-*.parquet")),
                         FaissConfig(factory=FACTORY, workers=0, group_rows=1000), dim=16)
    assert alone["build"]["workers"] == 0 and list(alone["build"]["nodes"]) == ["local"]
    assert remote["trained_fingerprint"] == alone["trained_fingerprint"]
    assert remote["ntotal"] == alone["ntotal"] == 8000
    one, two = (load_index(root / "index.faiss") for root in (local, distributed))
    np.testing.assert_array_equal(index_ids(one), index_ids(two))
    for got, expected in zip(search_index(two, queries, 10), search_index(one, queries, 10)):
        np.testing.assert_array_equal(got, expected)
