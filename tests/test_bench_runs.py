"""The FAISS and search-service benchmarks run end to end at a tiny scale and write the rows their
reports are read from (a bench that no longer runs measures nothing). Only the columns are checked,
never a timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ray_cluster import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_bench_faiss_rows_at_a_tiny_scale(tmp_path):
    out = tmp_path / "faiss.json"
    subprocess.run([sys.executable, "-m", "tomeray.jobs.bench_faiss", "--n", "3000", "--dim", "64",
                    "--queries", "50", "--presets", "ivf", "--distributed-n", "0", "--json", str(out)],
                   check=True, capture_output=True, text=True, cwd=REPO, timeout=240)
    rows = json.loads(out.read_text())
    builds = {r["index"]: r for r in rows if r["stage"] == "build"}
    assert set(builds) == {"flat", "ivf"}
    for r in builds.values():
        assert {"recall_at_10", "speedup_vs_flat", "bytes_per_vector", "build_s", "peak_rss_mb"} <= set(r)
        assert 0 < r["recall_at_10"] <= 1
    assert builds["ivf"]["search"].startswith("nprobe=") and builds["ivf"]["target_recall"] == 0.95
    assert 0 < builds["ivf"]["tuned_recall_at_10"] <= 1
    (grown,) = [r for r in rows if r["stage"] == "incremental" and r["index"] == "ivf"]
    assert grown["added"] == 30 and grown["mode"] == "incremental" and grown["add_vs_rebuild"] > 0


@pytest.mark.timeout(600)
def test_bench_serve_rows_at_a_tiny_scale(tmp_path):
    out = tmp_path / "serve.json"
    result = subprocess.run(
        [sys.executable, "-m", "tomeray.jobs.bench_serve", "--rows", "2000", "--servers", "uvicorn",
         "--clients", "1,4", "--requests", "8", "--seconds", "10", "--join-sizes", "1000",
         "--workdir", str(tmp_path / "work"), "--text-precision", "--fidelity-queries", "40",
         "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=540)  # (it starts three servers)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    served = [r for r in rows if r.get("server") == "uvicorn"]
    assert sorted(r["clients"] for r in served) == [1, 4]
    for r in served:
        assert {"p50_ms", "p99_ms", "qps"} <= set(r) and r["qps"] > 0
    assert "random weights" in result.stdout
    precision = {r["text_precision"]: r for r in rows if "text_precision" in r}
    assert set(precision) == {"fp32", "int8", "int8-all"} and precision["fp32"]["cosine_min"] == 1.0
    for name in ("int8", "int8-all"):
        assert 0.9 < precision[name]["cosine_min"] < 1 and 0 <= precision[name]["top10_overlap"] <= 1
        assert precision[name]["fidelity_queries"] == 40
    assert all(r["p50_ms"] > 0 for r in precision.values())


def test_bench_shots_rows_at_a_tiny_scale(tmp_path):
    out = tmp_path / "shots.json"
    result = subprocess.run(
        [sys.executable, "-m", "tomeray.jobs.bench_shots", "--videos", "1", "--pieces", "3",
         "--arch", "ViT-S-32", "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    quality = [r for r in rows if r["stage"] == "quality"]
    detectors = ("transnetv2", "transnetv2-fast", "histogram", "fixed")
    assert {(r["detector"], r["kind"]) for r in quality} == {
        (d, k) for d in detectors for k in ("cut", "dissolve", "all")}
    for r in quality:
        assert {"precision", "recall", "f1", "cpu_s_per_min"} <= set(r) and 0 <= r["f1"] <= 1
    costs = {r["detector"]: r for r in rows if r["stage"] == "cost"}
    assert set(costs) == set(detectors)
    assert all(0 <= r["detect_share"] < 1 and r["embed_cpu_s_per_min"] > 0 for r in costs.values())
    speed = [r for r in rows if r["stage"] == "speed"][0]
    assert speed["max_abs_diff"] < 1e-5 and speed["frames_per_s"] > 0  # fp32, windows of 100: parity


def test_bench_viewer_rows_at_a_tiny_scale(tmp_path):
    out = tmp_path / "viewer.json"
    result = subprocess.run(
        [sys.executable, "-m", "tomeray.jobs.bench_viewer", "--points", "2000,5000", "--repeats", "1",
         "--hit-views", "2", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    points = [r for r in rows if r["stage"] == "points"]
    assert [r["points"] for r in points] == [2000, 5000]
    for r in points:
        assert r["served_points"] == r["points"] and r["bytes"] == 20 * r["points"]
        assert {"server_ms", "inprocess_ms", "http_ratio", "rss_growth_mb", "browser_ms"} <= set(r)
        assert r["server_ms"] > 0 and r["browser_ms"] > 0
    assert [r["stage"] for r in rows if r["stage"].startswith("hit")] == ["hit-cold", "hit-warm"]
    assert "random-init vggt-tiny" in result.stdout


def test_bench_alignment_rows_at_a_tiny_scale(tmp_path):
    out = tmp_path / "alignment.json"
    subprocess.run([sys.executable, "-m", "tomeray.jobs.bench_alignment", "--views", "120", "--chunk", "30",
                    "--overlap", "15", "--ba-views", "6", "--ba-points", "100", "--json", str(out)],
                   check=True, capture_output=True, text=True, cwd=REPO, timeout=240)
    rows = json.loads(out.read_text())["rows"]
    aligned = {r["policy"]: r for r in rows if r["stage"] == "alignment"}
    assert set(aligned) == {"split", "chunks"}
    for r in aligned.values():
        assert r["views"] == 120 and {"ate_rel", "rpe_deg", "seconds"} <= set(r)
    assert aligned["chunks"]["ate_rel"] <= 0.01 < aligned["split"]["ate_rel"]
    for stage in ("refine", "chessboard"):
        refined = {r["refine"]: r for r in rows if r["stage"] == stage}
        assert set(refined) == {"none", "ba"}
        assert refined["ba"]["pose_err_mm"] < refined["none"]["pose_err_mm"]
        assert refined["ba"]["reproj_px_after"] < refined["ba"]["reproj_px_before"]
    (board,) = [r for r in rows if r["stage"] == "chessboard" and r["refine"] == "ba"]
    assert board["pose_err_mm"] <= 1.0 and board["pose_err_deg"] <= 0.2
