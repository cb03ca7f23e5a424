"""The FAISS build of an index directory (pipeline.video.faiss_build) on real Parquet shards and
real FAISS files: train once, add incrementally, replace and remove by id, retrain only when due,
on-disk inverted lists, refusal of mismatched trained parts, and a build killed with SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from ray_cluster import REPO, kill_driver_when
from tomeray.jobs.bench_faiss_data import make_vectors, write_shard
from tomeray.models.errors import InputError
from tomeray.pipeline.video.faiss_build import faiss_entry, remove_faiss_files, update_faiss
from tomeray.pipeline.video.faiss_config import FaissConfig
from tomeray.pipeline.video.faiss_index import index_ids, load_index, search_index
from tomeray.pipeline.video.faiss_merge import encode_part

DIM = 16
IVFPQ = "IVF16,PQ4x4np,Refine(SQ8)"  # 4-bit codes: the same mechanics as 8-bit, trained in a blink
FACTORIES = ["flat", "IVF16,Flat", IVFPQ, "hnsw"]


@pytest.fixture(scope="module")
def data():
    base, queries = make_vectors("clustered", 6000, DIM, 50, seed=7)
    return base, queries


def shards_of(folder: Path, base: np.ndarray, bounds: list[tuple[int, int]], tag: str = "a") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (start, end) in enumerate(bounds):
        path = folder / f"part-{tag}-{i:03d}.parquet"
        write_shard(path, np.arange(start, end) * 10 + 1, base[start:end])
        paths.append(path)
    return paths


def build(root: Path, cfg: FaissConfig, prior: dict | None = None) -> dict:
    return update_faiss(root / "index.faiss", sorted((root / "emb").glob("part-*.parquet")), cfg, dim=DIM,
                        prior=prior)


def results(root: Path, queries: np.ndarray, k: int = 10):
    return search_index(load_index(root / "index.faiss", ondisk=True), queries, k)


@pytest.mark.parametrize("factory, ondisk", [(f, "never") for f in FACTORIES]
                         + [("IVF16,Flat", "always"), (IVFPQ, "always")])  # on-disk lists: IVF only
def test_incremental_adds_equal_a_fresh_build_with_the_same_trained_parts(tmp_path, data, factory, ondisk):
    base, queries = data
    cfg = FaissConfig(factory=factory, group_rows=700, ondisk=ondisk)
    shards_of(tmp_path / "emb", base, [(0, 1500), (1500, 3000)])
    first = build(tmp_path, cfg)
    assert first["build"]["mode"] == "trained" and first["ntotal"] == 3000
    trained = tmp_path / f"index.trained-{first['trained_fingerprint']}.faiss"
    template = load_index(trained)
    assert template.ntotal == 0 and template.is_trained
    shards_of(tmp_path / "emb", base, [(3000, 4200), (4200, 6000)], tag="b")
    second = build(tmp_path, cfg, first)
    build_record = second["build"]
    assert build_record["mode"] == "incremental" and build_record["added"] == 3000
    assert build_record["removed"] == 0 and build_record["groups"] == 2  # the new shards only, whole
    assert second["trained_on"] == first["trained_on"] and second["sampled_from"] == first["sampled_from"]
    assert second["trained_fingerprint"] == first["trained_fingerprint"] and second["ntotal"] == 6000
    assert (second["ondisk"] is not None) == (ondisk == "always")
    # A fresh index over all rows, in shard order, from the same trained parts.
    fresh = encode_part(template, base, np.arange(6000) * 10 + 1)
    expected = search_index(fresh, queries, 10, **second["params"])  # the tuned settings, saved with it
    got = results(tmp_path, queries)
    if factory == "hnsw":  # graphs depend on insertion order and threads: same quality, not same edges
        exact = np.argsort(-(queries @ base.T), axis=1)[:, :10] * 10 + 1
        assert np.mean([len(np.intersect1d(g, e)) / 10 for g, e in zip(got[1], exact)]) >= 0.95
    else:
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)
    ids = index_ids(load_index(tmp_path / "index.faiss", ondisk=True))
    # (a fresh HNSW graph takes the rows its tuning queried last: they were held out of it)
    assert np.array_equal(np.sort(ids) if factory == "hnsw" else ids, np.arange(6000) * 10 + 1)
    tuned = ["index.tuning.npz"] if factory != "flat" else []  # the tuning's kept ground truth
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "emb") == sorted(
        ["index.faiss", trained.name, trained.with_suffix(".json").name, *tuned]
        + ([second["ondisk"]] if second["ondisk"] else []))
    # Nothing new: the index file is not rewritten.
    mtime = (tmp_path / "index.faiss").stat().st_mtime_ns
    third = build(tmp_path, cfg, second)
    assert third["build"]["mode"] == "unchanged" and (tmp_path / "index.faiss").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("factory", FACTORIES)
def test_replaced_and_removed_ids_appear_once(tmp_path, data, factory):
    base, queries = data
    cfg = FaissConfig(factory=factory, group_rows=1000)
    first_shards = shards_of(tmp_path / "emb", base, [(0, 2000), (2000, 4000)])
    first = build(tmp_path, cfg)
    # The first shard is lost; half of its rows come back re-embedded (other vectors, same ids).
    first_shards[0].unlink()
    replaced = np.arange(1000)
    moved = base[3000 + replaced]  # new vectors for ids 0..999: copies of rows 3000.. (findable)
    write_shard(tmp_path / "emb" / "part-c-000.parquet", replaced * 10 + 1, moved)
    second = build(tmp_path, cfg, first)
    assert second["build"]["mode"] == "incremental"
    assert second["build"]["added"] == 1000 and second["build"]["removed"] == 2000
    ids = index_ids(load_index(tmp_path / "index.faiss", ondisk=True))
    assert len(ids) == len(set(ids.tolist())) == 3000
    assert set(ids.tolist()) == set((np.r_[replaced, np.arange(2000, 4000)] * 10 + 1).tolist())
    # A re-embedded id is found with its new vector, next to the row it copies (PQ codes: among the
    # few best, as 8-bit re-ranking scores of other rows may tie with exact copies).
    scores, found = results(tmp_path, moved[:20], k=5)
    top = 5 if "PQ" in factory else 2
    for i in range(20):
        assert {int(replaced[i]) * 10 + 1, (3000 + i) * 10 + 1} <= set(found[i, :top].tolist())
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=0.05 if "PQ" in factory else 1e-4)


def test_retraining_happens_only_when_due(tmp_path, data):
    base, _ = data
    shards_of(tmp_path / "emb", base, [(0, 1000)])
    cfg = FaissConfig(factory="IVF8,Flat", retrain_growth=3.0)
    entry = build(tmp_path, cfg)
    assert (entry["trained_on"], entry["sampled_from"]) == (1000, 1000)
    shards_of(tmp_path / "emb", base, [(1000, 3000)], tag="b")
    entry = build(tmp_path, cfg, entry)  # 3000 <= 3 x 1000: no retraining
    assert entry["build"]["mode"] == "incremental" and entry["trained_on"] == 1000
    shards_of(tmp_path / "emb", base, [(3000, 3500)], tag="c")
    grown = build(tmp_path, cfg, entry)  # 3500 > 3 x 1000
    assert grown["build"]["mode"] == "retrained" and "retrain_growth=3" in grown["build"]["reason"]
    assert grown["sampled_from"] == 3500 and grown["build"]["added"] == 3500
    assert grown["trained_fingerprint"] != entry["trained_fingerprint"]
    assert len(list(tmp_path.glob("index.trained-*.faiss"))) == 1  # the old trained parts are gone
    asked = build(tmp_path, FaissConfig(factory="IVF8,Flat", retrain=True), grown)
    assert asked["build"]["mode"] == "retrained" and "faiss.retrain=true" in asked["build"]["reason"]
    changed = build(tmp_path, FaissConfig(factory="hnsw"), asked)
    assert changed["build"]["mode"] == "retrained" and "changed from 'IVF8,Flat' to 'hnsw'" in \
        changed["build"]["reason"]
    # A preset that fell back to Flat trains once there are enough vectors.
    small = tmp_path / "small"
    shards_of(small / "emb", base, [(0, 100)])
    flat = build(small, FaissConfig(factory="ivf"))
    assert flat["factory"] == "Flat"
    shards_of(small / "emb", base, [(100, 6000)], tag="b")
    trained = build(small, FaissConfig(factory="ivf"), flat)
    assert trained["factory"].startswith("IVF") and trained["build"]["mode"] == "retrained"


def test_mismatched_trained_parts_are_refused(tmp_path, data):
    base, _ = data
    shards_of(tmp_path / "emb", base, [(0, 1000)])
    entry = build(tmp_path, FaissConfig(factory="IVF8,Flat"))
    with pytest.raises(InputError, match=r"trained for 16-d vectors with metric ip, but the embeddings "
                                         r"are 8-d with metric ip.*faiss.retrain=true"):
        update_faiss(tmp_path / "index.faiss", [], FaissConfig(factory="IVF8,Flat"), dim=8, prior=entry)
    with pytest.raises(InputError, match="with metric ip, but the embeddings are 16-d with metric l2"):
        update_faiss(tmp_path / "index.faiss", [], FaissConfig(factory="IVF8,Flat"), dim=DIM, metric="l2",
                     prior=entry)
    assert load_index(tmp_path / "index.faiss").ntotal == 1000  # refused: left as it was


def test_on_disk_lists_follow_the_folder_and_only_ivf_has_them(tmp_path, data):
    base, queries = data
    shards_of(tmp_path / "a" / "emb", base, [(0, 3000)])
    entry = build(tmp_path / "a", FaissConfig(factory="IVF16,Flat", ondisk="always"))
    before = results(tmp_path / "a", queries)
    shutil.move(tmp_path / "a", tmp_path / "b")
    index = load_index(tmp_path / "b" / "index.faiss", ondisk=True)
    assert index.ntotal == 3000 and (tmp_path / "b" / entry["ondisk"]).is_file()
    np.testing.assert_array_equal(search_index(index, queries, 10)[1], before[1])
    from tomeray.models.errors import ConfigError

    with pytest.raises(ConfigError, match="on-disk inverted lists need an IVF index|needs an IVF index"):
        build(tmp_path / "b", FaissConfig(factory="hnsw", ondisk="always"))
    remove_faiss_files(tmp_path / "b" / "index.faiss")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["emb"]


def test_old_manifests_are_read():
    assert faiss_entry({"faiss_factory": "IVF4,Flat", "faiss_spec": "IVF4,Flat"})["factory"] == "IVF4,Flat"
    assert faiss_entry({"faiss_factory": None, "faiss_spec": "flat"}) is None  # built without FAISS
    assert faiss_entry({"faiss": {"factory": "Flat", "ntotal": 3}, "faiss_factory": "Flat"})["ntotal"] == 3
    assert faiss_entry({}) is None


KILLED_BUILD = """
import sys
from pathlib import Path
from tomeray.pipeline.video.faiss_build import update_faiss
from tomeray.pipeline.video.faiss_config import FaissConfig
import json
root = Path(sys.argv[1])
prior = json.loads((root / "entry.json").read_text())
update_faiss(root / "index.faiss", sorted((root / "emb").glob("part-*.parquet")),
             FaissConfig(factory="IVF16,Flat", group_rows=200, ondisk="always"), dim=16, prior=prior)
"""


def test_a_killed_build_leaves_the_previous_index_usable(tmp_path, data):
    base, queries = data
    shards_of(tmp_path / "emb", base, [(0, 1000)])
    cfg = FaissConfig(factory="IVF16,Flat", group_rows=200, ondisk="always")
    entry = build(tmp_path, cfg)
    (tmp_path / "entry.json").write_text(json.dumps(entry))
    before = results(tmp_path, queries)
    shards_of(tmp_path / "emb", base, [(start, start + 100) for start in range(1000, 6000, 100)], tag="b")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kill_driver_when([sys.executable, "-c", KILLED_BUILD, str(tmp_path)], env,
                     lambda: len(list(tmp_path.glob(".index-*.part*.tmp"))) >= 3, "three merged parts")
    assert list(tmp_path.glob(".index-*.tmp")), "the build was not killed half-way"
    index = load_index(tmp_path / "index.faiss", ondisk=True)  # the previous index, untouched
    assert index.ntotal == 1000
    np.testing.assert_array_equal(search_index(index, queries, 10)[1], before[1])
    done = build(tmp_path, cfg, entry)  # the next run finishes the job and cleans up
    assert done["build"]["mode"] == "incremental" and done["ntotal"] == 6000
    assert not list(tmp_path.glob(".index-*")) and len(list(tmp_path.glob("*.ivfdata"))) == 1
