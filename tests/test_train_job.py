"""Fine-tuning end to end on a real Ray cluster (a `ray start` head with 2 CPUs): 2 Ray Train workers on
CPU (gloo) train TempMe's adapter on 16 clips cut from the opencv-doc videos, each with its own
synthetic caption, on random-init base weights. The driver is SIGKILLed after the first checkpoint
and the same command is rerun; the resumed run finishes the training. Then the adapter is evaluated
(`tomeray eval-retrieval`), indexed with (`tomeray index`) and searched with (`tomeray search`).

The encoder is the smallest open_clip tower (ViT-S-32) with 4 frames and a TempMe schedule for 4
frames (ClipMe at 2/3 and 5/6 of the depth, 2 groups per clip each), so a step takes seconds."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ray_cluster import REPO, RayHead, kill_driver_when
from safetensors.torch import load_file
from tomeray.models.frames import normalize_frames
from tomeray.models.retrieval_metrics import retrieval_metrics
from tomeray.models.tempme import MergeSchedule, VideoModelConfig, adapter_digest, create_video_encoder
from tomeray.operators.video_decode import decode_clips
from tomeray.pipeline.training.layout import TrainLayout
from tomeray.pipeline.training.state import read_progress
from tomeray.pipeline.video import search_cli
from tomeray.pipeline.video.layout import IndexLayout

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = ["model.arch=ViT-S-32", "model.pretrained=none", "model.preset=custom", "model.num_frames=4",
         "model.schedule.frames_per_clip=[2,2]", "model.schedule.clip_layers=[0.67,0.84]",
         "inference.device=cpu", "ray.progress=false"]
EPOCHS, BATCH = 4, 8
# 8 steps on random-init towers: a higher learning rate than the recipe's, and no RandAugment (it is
# tested on its own), so that 8 steps visibly separate 16 clips of three videos
TRAIN = [*MODEL, f"train.epochs={EPOCHS}", f"train.batch_size={BATCH}", "train.lr=3e-3", "train.workers=2",
         "train.augment.enabled=false", "train.checkpoint_steps=1", "data.val_fraction=0"]
SEGMENTS = [("vtest.avi", 79.5, 10), ("Megamind.avi", 11.2, 4), ("tree.avi", 4.5, 2)]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "silver", "golden", "black", "white", "pink",
           "brown", "grey", "cyan", "violet", "amber"]


def run(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def data(opencv_data, tmp_path_factory):
    """16 good clips with distinct captions, plus five bad rows: a missing video, an empty caption,
    a truncated video (which fails only when decoded), a link whose target is gone and a link to a
    damaged video."""
    root = tmp_path_factory.mktemp("pairs")
    truncated = root / "cut.avi"
    truncated.write_bytes((opencv_data / "tree.avi").read_bytes()[:300_000])
    (root / "dangling.avi").symlink_to("/nonexistent/file.avi")
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "damaged.avi").write_bytes((opencv_data / "tree.avi").read_bytes()[:200_000])
    (root / "linked.avi").symlink_to(root / "elsewhere" / "damaged.avi")
    rows, k = [], 0
    for name, duration, count in SEGMENTS:
        for i in range(count):
            step = duration / count
            rows.append({"path": str(opencv_data / name), "caption": f"the {COLOURS[k]} part {k} of the "
                         f"{name[:-4]} video", "start_s": round(i * step, 2),
                         "end_s": round((i + 1) * step, 2)})
            k += 1
    good = list(rows)
    rows += [{"path": "missing.avi", "caption": "a video that is not there", "start_s": "", "end_s": ""},
             {"path": str(opencv_data / "tree.avi"), "caption": " ", "start_s": 0, "end_s": 1},
             {"path": "cut.avi", "caption": "a damaged video", "start_s": "", "end_s": ""},
             {"path": "dangling.avi", "caption": "a broken link", "start_s": "", "end_s": ""},
             {"path": "linked.avi", "caption": "a link to a damaged video", "start_s": "", "end_s": ""}]
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "caption", "start_s", "end_s"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "pairs.csv", good


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with RayHead(tmp_path_factory.mktemp("ray"), num_cpus=2) as head:
        yield head


@pytest.fixture(scope="module")
def trained(cluster, data, tmp_path_factory):
    """The training command, SIGKILLed once its first checkpoint is registered, then rerun."""
    out = tmp_path_factory.mktemp("train") / "ft"
    cmd = [sys.executable, "-m", "tomeray.jobs.train_tempme", str(data[0]), "--out", str(out), *TRAIN]
    layout = TrainLayout(out)
    kill_driver_when(cmd, cluster.env, lambda: layout.latest_checkpoint() is not None, "a checkpoint",
                     timeout=600)
    killed = read_progress(layout.latest_checkpoint())
    assert not layout.adapter_path.exists(), "the kill did not land mid-training"
    rerun = run(["tomeray.jobs.train_tempme", str(data[0]), "--out", str(out), *TRAIN], cluster.env)
    return {"layout": layout, "killed": killed, "rerun": rerun,
            "metrics": json.loads(layout.metrics_path.read_text()) if layout.metrics_path.exists() else {}}


@pytest.fixture(scope="module")
def clips(data):
    """The good clips, decoded here without Ray (4 frames, 224 px)."""
    frames, masks = [], []
    for c in data[1]:
        (clip,) = decode_clips(c["path"], 224, 4, None, window=(c["start_s"], c["end_s"]))
        frames.append(clip.frames)
        masks.append(clip.mask)
    return np.stack(frames), np.stack(masks), [c["caption"] for c in data[1]]


def retrieval(clips, adapter: str | None) -> dict:
    """Retrieval metrics of the encoder (with ``adapter``) on the good clips, computed without Ray."""
    frames, masks, captions = clips
    schedule = MergeSchedule(clip_layers=[0.67, 0.84], frames_per_clip=[2, 2])
    encoder = create_video_encoder(VideoModelConfig(arch="ViT-S-32", pretrained="none", preset="custom",
                                                    num_frames=4, schedule=schedule, adapter=adapter),
                                   device="cpu")
    video = encoder.encode_video(normalize_frames(torch.from_numpy(frames), encoder.mean, encoder.std),
                                 torch.from_numpy(masks))
    text = encoder.encode_text(encoder.tokenize(captions, 32))
    return retrieval_metrics((text @ video.T).numpy())


@pytest.fixture(scope="module")
def after(trained, clips):
    return retrieval(clips, str(trained["layout"].adapter_path))


def test_a_killed_driver_resumes_from_the_last_checkpoint(trained):
    rerun, layout, killed = trained["rerun"], trained["layout"], trained["killed"]
    assert rerun.returncode == 1, rerun.stdout[-3000:] + rerun.stderr[-3000:]  # 1: some rows were unusable
    assert killed.global_step >= 1 and killed.global_step < EPOCHS * 2
    name = f"checkpoint-e{killed.epoch:03d}-s{killed.global_step:08d}"
    assert f"resuming from checkpoint {name}" in rerun.stdout
    (record,) = [r for r in layout.run_records() if r["epochs"]]
    assert record["resumed_from"].startswith(f"checkpoint-e{killed.epoch:03d}")
    epochs = trained["metrics"]["epochs"]
    # every step ran exactly once over the two runs: 16 pairs / 8 = 2 steps per epoch
    assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))
    assert [e["steps"] for e in epochs] == [2] * EPOCHS
    assert layout.read_manifest()["status"] == "complete"
    assert "RANDOM weights" in rerun.stdout and "random-init(seed=0)" in rerun.stdout


def test_training_lowers_the_loss_and_raises_text_to_video_recall(trained, clips, after):
    losses = [e["train_loss"] for e in trained["metrics"]["epochs"]]
    assert losses[-1] < losses[0], losses
    # 18 pairs, 2 steps of 8: 16 slots per epoch; the two damaged clips' slots, when drawn, are left out
    assert all(e["clips"] in (14, 15, 16) for e in trained["metrics"]["epochs"])
    before = retrieval(clips, None)
    assert after["t2v"]["R@1"] > before["t2v"]["R@1"], (before, after)


def test_unusable_rows_are_in_the_errors_table(trained):
    rows = trained["layout"].read_errors().to_pylist()
    errors = {(Path(e["path"]).name, e["stage"], e["error_type"]) for e in rows}
    assert errors == {("missing.avi", "load", "MissingVideo"), ("tree.avi", "load", "EmptyCaption"),
                      ("cut.avi", "decode", "TruncatedVideoError"), ("dangling.avi", "load", "MissingVideo"),
                      ("linked.avi", "decode", "TruncatedVideoError")}
    # links are named as the table names them, with where they lead in the message
    messages = {Path(e["path"]).name: e["message"] for e in rows}
    assert "/nonexistent/file.avi" in messages["dangling.avi"]
    assert "does not exist" in messages["dangling.avi"]
    assert "elsewhere/damaged.avi" in messages["linked.avi"]
    assert "error [decode]" in trained["rerun"].stdout


def test_eval_retrieval_prints_and_writes_the_metrics(cluster, trained, data, after, tmp_path):
    adapter = trained["layout"].adapter_path
    result = run(["tomeray.jobs.eval_retrieval", str(data[0]), *MODEL, f"model.adapter={adapter}",
                  "--json", str(tmp_path / "m.json")], cluster.env)
    assert result.returncode == 1, result.stderr[-3000:]  # the unusable rows are listed
    assert "t2v" in result.stdout and "v2t" in result.stdout and "RANDOM weights" in result.stdout
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_videos"] == 16 and metrics["n_captions"] == 16
    assert metrics["weights_id"] == "random-init(seed=0)" and metrics["adapter"]["path"] == str(adapter)
    for direction in ("t2v", "v2t"):  # the same numbers as computed here, without Ray
        assert metrics[direction]["R@1"] == pytest.approx(after[direction]["R@1"])
        assert metrics[direction]["MnR"] == pytest.approx(after[direction]["MnR"])
    assert f"{metrics['t2v']['R@1']:8.2f}" in result.stdout


def test_the_adapter_indexes_and_searches_and_another_is_refused(cluster, trained, opencv_data, tmp_path,
                                                                  capsys):
    layout = trained["layout"]
    index = tmp_path / "idx"
    videos = [str(opencv_data / name) for name, _, _ in SEGMENTS]
    built = run(["tomeray.jobs.index_videos", *videos, "--out", str(index), *MODEL,
                 f"model.adapter={layout.adapter_path}"], cluster.env)
    assert built.returncode == 0, built.stderr[-3000:]
    manifest = IndexLayout(index).read_manifest()
    assert manifest["model"]["adapter"]["id"] == adapter_digest(load_file(layout.adapter_path))
    assert manifest["adapter"]["path"] == str(layout.adapter_path)
    assert f"adapter: {manifest['model']['adapter']['id']}" in built.stdout

    assert search_cli.main([str(index), "the red part 0 of the vtest video", "--json", "-k", "3",
                            "inference.device=cpu"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 3
    assert {Path(h["path"]).name for h in hits} == {"vtest.avi", "Megamind.avi", "tree.avi"}

    moved = tmp_path / "moved.safetensors"  # the same adapter elsewhere: found with model.adapter=
    shutil.copyfile(layout.adapter_path, moved)
    assert search_cli.main([str(index), "a tree", "-k", "1", f"model.adapter={moved}",
                            "inference.device=cpu"]) == 0
    assert f"adapter: {manifest['model']['adapter']['id']}" in capsys.readouterr().out
    other = sorted(layout.run_dir.glob("checkpoint-*"))[0] / "adapter.safetensors"  # an earlier adapter
    assert search_cli.main([str(index), "a tree", f"model.adapter={other}", "inference.device=cpu"]) == 2
    assert "model.adapter.id" in capsys.readouterr().err  # (adding to it: tests/test_adapter_index.py)
