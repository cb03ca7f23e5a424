"""``tomeray demo`` offline: it must say it uses random weights, and still index and search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tomeray.models.errors import TomerayError
from tomeray.pipeline.video import demo, search_cli
from tomeray.pipeline.video.layout import IndexLayout

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_offline_falls_back_to_random_weights_and_still_searches(tmp_path, opencv_data, capsys):
    out = tmp_path / "demo-index"
    # HF_HUB_OFFLINE: no weights can be fetched. RAY_ADDRESS=local: a fresh Ray cluster of the
    # demo's own, never one that another process on this machine started.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "local",
           "TOMERAY_SAMPLE_DATA": str(opencv_data)}
    command = [sys.executable, "-m", "tomeray.pipeline.cli", "demo", "--out", str(out)]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert first.returncode == 0, first.stderr[-3000:]
    text = first.stdout
    assert "pretrained weights could not be loaded" in text and "RANDOM weights" in text
    assert "weights: random-init(seed=0)" in text
    assert "indexed 4 videos, 0 already indexed, 1 failed" in text

    layout = IndexLayout(out)
    manifest = layout.read_manifest()
    assert manifest["weights_id"] == "random-init(seed=0)" and manifest["counts"]["rows"] == 4
    errors = layout.read_errors().to_pylist()
    assert [(Path(e["path"]).name, e["error_type"]) for e in errors] == [("tree-truncated.avi",
                                                                          "TruncatedVideoError")]
    assert "tree-truncated.avi" in text and "TruncatedVideoError" in text
    for query in demo.TEXT_QUERIES:
        assert f"text query: {query!r}" in text
    video_block = text.split("video query:")[1]
    first_hit = next(line for line in video_block.splitlines() if line.strip().startswith("1 "))
    assert first_hit.split()[1] == "1.0000" and first_hit.endswith("tree.avi")

    # The index the Ray job wrote is searchable from the CLI, by text and JSON.
    argv = [str(out), "people walking down a street", "-k", "4", "--json", "inference.device=cpu"]
    assert search_cli.main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["random_weights"] is True and len(payload["results"]) == 4
    assert {Path(r["path"]).name for r in payload["results"]} == set(demo.DEMO_VIDEOS)


def test_demo_requires_the_sample_videos(tmp_path):
    (tmp_path / "vtest.avi").write_bytes(b"x")
    with pytest.raises(TomerayError, match=r"missing under .*Megamind\.avi.*apt-get install -y opencv-doc"):
        demo.sample_data_dir(tmp_path)


def test_fresh_only_deletes_an_index_directory(tmp_path):
    index = tmp_path / "idx"
    index.mkdir()
    (index / "manifest.json").write_text("{}")
    demo._reset_for_new_weights(index)
    assert not index.exists()
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"jpg")
    with pytest.raises(TomerayError, match="not an index directory"):
        demo._reset_for_new_weights(precious)
    assert (precious / "holiday.jpg").is_file()


def test_truncated_copy_is_half_the_source(tmp_path, opencv_data):
    copy = demo.write_truncated_copy(opencv_data / "tree.avi", tmp_path / "inputs" / "t.avi")
    assert copy.stat().st_size == (opencv_data / "tree.avi").stat().st_size // 2
