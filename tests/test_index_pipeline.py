"""The indexing job end to end on the shared local Ray cluster: real videos (opencv-doc and
synthesized), bad inputs, search, video queries, resume, incompatibility, segments and merges.

Random ViT-S-32 weights with the ``tempme`` preset keep it fast; every run says which weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from media import write_video
from tomeray.pipeline.video.cli import main
from tomeray.pipeline.video.faiss_index import index_ids, load_index, search_index
from tomeray.pipeline.video.ids import id_key, stable_id
from tomeray.pipeline.video.job import run_index
from tomeray.pipeline.video.layout import IndexLayout
from tomeray.pipeline.video.search import VideoSearcher

MODEL = {"arch": "ViT-S-32", "pretrained": "none", "preset": "tempme", "num_frames": 12}
FAST = [f"model.{k}={v}" for k, v in MODEL.items()] + ["inference.device=cpu", "ray.progress=false"]
GOOD = ["vtest.avi", "Megamind.avi", "tree.avi", "Megamind_bugy.avi", "one frame.avi", "odd 321x243.avi",
        "five frames.avi", "ñandú 視頻.avi"]
BAD = {"zero.mp4": "decode", "text.mp4": "decode", "truncated.avi": "decode", "corrupt.avi": "decode",
       "gone.mp4": "discover", "dangling.avi": "discover", "linked.avi": "decode"}
UNDISCOVERED = 2  # gone.mp4 (a missing list entry) and dangling.avi never reach the graph

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def reencoded_copy(source, target, width, height):
    """The source re-encoded with another codec at another size (a near-duplicate query)."""
    cap = cv2.VideoCapture(str(source))
    fps = cap.get(cv2.CAP_PROP_FPS)
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA))
    writer.release()
    return target


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, opencv_data):
    """A folder of synthesized good and bad videos plus a list file naming the opencv-doc videos."""
    root = tmp_path_factory.mktemp("corpus")
    media = root / "media dir"
    (media / "nested").mkdir(parents=True)
    write_video(media / "one frame.avi", 1, 320, 240, seed=1)
    write_video(media / "nested" / "odd 321x243.avi", 20, 321, 243, seed=2)
    write_video(media / "five frames.avi", 5, 160, 120, seed=3)
    write_video(media / "nested" / "ñandú 視頻.avi", 30, 200, 150, seed=4)
    (media / "notes.txt").write_text("not a video, and not picked up by extension")
    (media / "zero.mp4").write_bytes(b"")
    (media / "text.mp4").write_text("hello, not a video\n")
    vtest = (opencv_data / "vtest.avi").read_bytes()
    (media / "truncated.avi").write_bytes(vtest[:3_000_000])
    data = bytearray(vtest)
    rng = np.random.default_rng(0)
    for offset in range(100_000, len(data) - 4000, 50_000):
        data[offset : offset + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    (media / "corrupt.avi").write_bytes(bytes(data))
    (media / "dangling.avi").symlink_to("/nonexistent/file.avi")  # a link whose target is gone
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "damaged.avi").write_bytes(vtest[:2_000_000])
    (media / "linked.avi").symlink_to(root / "elsewhere" / "damaged.avi")  # a link to a damaged file
    listing = root / "list.txt"
    names = ["vtest.avi", "Megamind.avi", "tree.avi", "Megamind_bugy.avi"]
    listing.write_text("\n".join([str(opencv_data / n) for n in names] + [str(root / "gone.mp4")]) + "\n")
    return {"root": root, "media": media, "list": listing}


@pytest.fixture(scope="module")
def built(ray_local, corpus, tmp_path_factory):
    """The corpus indexed once through the CLI entry point."""
    out = tmp_path_factory.mktemp("index") / "idx"
    code = main([str(corpus["media"]), str(corpus["list"]), "--out", str(out), *FAST])
    return {"out": out, "code": code, "layout": IndexLayout(out), "media": corpus["media"]}


def by_name(table):
    return {Path(p).name: i for i, p in enumerate(table["path"].to_pylist())}


def test_every_good_video_is_indexed_with_stable_ids(built):
    assert built["code"] == 1  # some inputs failed
    table = built["layout"].read_embeddings()
    names = by_name(table)
    assert sorted(names) == sorted(GOOD)
    for path, vid in zip(table["path"].to_pylist(), table["video_id"].to_pylist()):
        assert vid == stable_id(id_key(path))
    emb = np.asarray(table["embedding"].to_pylist(), np.float32)
    assert emb.shape == (len(GOOD), 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    meta = table.slice(names["vtest.avi"], 1).to_pylist()[0]
    assert meta["n_frames"] == 795 and meta["fps"] == pytest.approx(10.0)
    assert meta["frame_indices"] == [0, 70, 140, 210, 280, 350, 430, 500, 570, 640, 710, 790]


def test_bad_inputs_land_in_the_errors_table(built):
    errors = built["layout"].read_errors().to_pylist()
    assert {Path(e["path"]).name: e["stage"] for e in errors} == BAD
    assert all(e["error_type"] and e["message"] for e in errors)
    reasons = {Path(e["path"]).name: e["message"] for e in errors}
    assert "truncated" in reasons["truncated.avi"] and "damaged" in reasons["corrupt.avi"]
    assert "empty" in reasons["zero.mp4"]
    # links are named as the user's tree shows them, with where they lead in the message
    rows = {Path(e["path"]).name: e for e in errors}
    assert rows["dangling.avi"]["path"] == str(built["media"] / "dangling.avi")
    assert "/nonexistent/file.avi" in reasons["dangling.avi"] and "does not exist" in reasons["dangling.avi"]
    assert rows["linked.avi"]["path"] == str(built["media"] / "linked.avi")
    assert "elsewhere/damaged.avi" in reasons["linked.avi"] and "truncated" in reasons["linked.avi"]


def test_manifest_config_and_run_record(built):
    layout = built["layout"]
    manifest = layout.read_manifest()
    assert manifest["weights_id"] == "random-init(seed=0)"
    assert manifest["model"]["arch"] == "ViT-S-32" and manifest["model"]["preset"] == "tempme"
    assert manifest["counts"] == {"rows": len(GOOD), "videos": len(GOOD), "errors": len(BAD)}
    assert manifest["dim"] == 384 and manifest["metric"] == "ip" and manifest["faiss_factory"] == "Flat"
    assert "pretrained: none" in layout.config_path.read_text()
    (record,) = (layout.root / "runs").glob("*.json")
    run = json.loads(record.read_text())
    assert (run["indexed"], run["skipped"], run["failed"]) == (len(GOOD), 0, len(BAD))
    assert sum(run["embed_nodes"].values()) == len(GOOD) + len(BAD) - UNDISCOVERED
    assert not list(layout.root.rglob("*.tmp"))


def test_run_record_breaks_down_start_up_and_stage_costs(built):
    (record,) = (built["layout"].root / "runs").glob("*.json")
    run = json.loads(record.read_text())
    start = run["startup"]
    for milestone in ("discovered_at", "model_facts_at", "ray_ready_at", "graph_started_at",
                      "decode_started_at", "decode_done_at", "embed_init_at", "embed_ready_at",
                      "embed_started_at", "embed_done_at", "first_row_at_driver", "pipeline_done_at"):
        assert milestone in start, milestone
    # causal order: a batch is embedded after some clip was decoded and some actor was ready
    assert start["graph_started_at"] <= start["decode_started_at"] <= start["decode_done_at"]
    assert start["embed_init_at"] <= start["embed_ready_at"] <= start["embed_started_at"]
    assert start["decode_done_at"] <= start["embed_started_at"] <= start["embed_done_at"]
    assert start["embed_done_at"] <= start["first_row_at_driver"] <= start["pipeline_done_at"]
    assert run["first_embedding_s"] == start["embed_done_at"]
    cpu = run["startup_cpu"]
    assert cpu["embed_actors"] >= 1 and cpu["driver_cpu_s"] > 0
    assert all(cpu[f"embed_{k}"] >= 0 for k in ("boot_cpu_s", "import_cpu_s", "build_cpu_s"))
    costs = run["costs"]
    assert costs["items"] == len(GOOD) + len(BAD) - UNDISCOVERED  # everything that went through the graph
    assert costs["cpu_s_per_item"]["decode"] > 0 and costs["cpu_s_per_item"]["embed"] > 0
    assert costs["valid"] and 0 < costs["efficiency"] <= 1 and 0 <= costs["efficiency_steady"] <= 1
    assert costs["bound_kind"] == "cpu" and costs["items_per_s"] <= costs["bound_per_s"]


def test_search_returns_every_video(built):
    layout = built["layout"]
    table = layout.read_embeddings()
    index = load_index(layout.faiss_path)
    assert sorted(index_ids(index).tolist()) == sorted(table["video_id"].to_pylist())
    queries = np.asarray(table["embedding"].to_pylist(), np.float32)
    scores, ids = search_index(index, queries, k=len(GOOD))
    assert ids[:, 0].tolist() == table["video_id"].to_pylist()  # each video is its own best match
    assert {int(i) for row in ids for i in row} == set(table["video_id"].to_pylist())
    assert np.allclose(scores[:, 0], 1.0, atol=1e-4)


def test_reencoded_copy_finds_its_source_at_rank_1(built, opencv_data, tmp_path):
    searcher = VideoSearcher(built["out"], device="cpu")
    for name, size in [("vtest.avi", (400, 300)), ("tree.avi", (240, 180))]:
        query = reencoded_copy(opencv_data / name, tmp_path / f"{name}.mp4", *size)
        results = searcher.search_video(query, k=3)
        assert results[0].video_id == stable_id(id_key(opencv_data / name)), (name, results)
        assert results[0].path == str(opencv_data / name) and results[0].score > results[1].score
    hits = searcher.search_text("people walking in the street", k=len(GOOD))  # random weights: any order
    assert sorted(Path(h.path).name for h in hits) == sorted(GOOD)


def test_rerun_indexes_only_new_inputs_and_retries_failures(built, corpus, tmp_path):
    out = tmp_path / "idx"
    shutil.copytree(built["out"], out)
    before = IndexLayout(out).read_embeddings()
    new = write_video(tmp_path / "new.avi", 15, 128, 96, seed=9)
    inputs = [str(corpus["media"]), str(corpus["list"]), str(new)]
    summary = run_index(inputs, out, FAST + ["ray.actors.count=1"])
    assert (summary.indexed, summary.skipped, summary.failed) == (1, len(GOOD), len(BAD))
    layout = IndexLayout(out)
    after = layout.read_embeddings()
    assert after.num_rows == len(GOOD) + 1
    raw = [i for p in layout.embedding_shards() for i in pq.read_table(p)["video_id"].to_pylist()]
    assert len(raw) == len(set(raw))  # nothing was embedded twice
    assert after.slice(0, before.num_rows).equals(before)  # old rows untouched
    assert layout.read_errors().num_rows == len(BAD)  # still failing: latest error per input
    assert layout.read_errors(include_resolved=True).num_rows == 2 * len(BAD)
    assert layout.read_manifest()["counts"]["rows"] == len(GOOD) + 1


def test_a_different_model_is_refused(built, tmp_path, capsys):
    out = tmp_path / "idx"
    shutil.copytree(built["out"], out)
    code = main([str(tmp_path), "--out", str(out), *FAST, "model.preset=none"])
    assert code == 2
    err = capsys.readouterr().err
    assert "incompatible" in err and "preset" in err and len(err.strip().splitlines()) == 1


def test_missing_pretrained_weights_fail_with_one_line(tmp_path, opencv_data):
    # A fresh process, so that huggingface_hub reads HF_HUB_OFFLINE (as a user's shell would set it).
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tomeray.pipeline.cli", "index", str(opencv_data / "tree.avi"), "--out",
           str(tmp_path / "idx"), "model.pretrained=openai"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tomeray index: error: pretrained weights 'openai'") and "pretrained=none" in last
    assert not (tmp_path / "idx").exists()


def test_segment_mode_rows_carry_time_ranges(ray_local, opencv_data, tmp_path):
    out = tmp_path / "seg"
    inputs = [str(opencv_data / "vtest.avi"), str(opencv_data / "tree.avi")]
    overrides = FAST + ["sampling.segment_s=20", "model.num_frames=4", "model.preset=none",
                        "ray.actors.count=1"]
    summary = run_index(inputs, out, overrides)
    assert (summary.indexed, summary.failed, summary.rows) == (2, 0, 5)  # 4 windows of vtest + tree
    table = IndexLayout(out).read_embeddings().sort_by("start_s")
    vtest = table.filter(np.array([p.endswith("vtest.avi") for p in table["path"].to_pylist()]))
    assert list(zip(vtest["start_s"].to_pylist(), vtest["end_s"].to_pylist())) == [
        (0.0, 20.0), (20.0, 40.0), (40.0, 60.0), (60.0, 79.5)]
    assert len(set(table["video_id"].to_pylist())) == 5
    again = run_index(inputs, out, overrides)
    assert (again.indexed, again.skipped, again.rows) == (0, 2, 0)


def test_merge_deduplicates_and_refuses_incompatible_indexes(built, ray_local, opencv_data, tmp_path):
    other = tmp_path / "other"
    extra = write_video(tmp_path / "extra.avi", 12, 96, 96, seed=11)
    run_index([str(opencv_data / "tree.avi"), str(extra)], other, FAST + ["ray.actors.count=1"])
    merged = tmp_path / "merged"
    assert main(["--merge", str(built["out"]), str(other), "--out", str(merged)]) == 0
    layout = IndexLayout(merged)
    table = layout.read_embeddings()
    assert table.num_rows == len(GOOD) + 1 and len(set(table["video_id"].to_pylist())) == len(GOOD) + 1
    assert layout.read_manifest()["counts"]["rows"] == len(GOOD) + 1
    assert load_index(layout.faiss_path).ntotal == len(GOOD) + 1
    assert layout.read_errors().num_rows == len(BAD)  # the sources' errors come along
    # merging again adds nothing
    assert main(["--merge", str(other), "--out", str(merged)]) == 0
    assert IndexLayout(merged).read_embeddings().num_rows == len(GOOD) + 1
    # an index made with another model is refused
    seg = tmp_path / "seg"
    run_index([str(opencv_data / "tree.avi")], seg, FAST + ["model.preset=none", "ray.actors.count=1"])
    assert main(["--merge", str(seg), "--out", str(merged)]) == 2
