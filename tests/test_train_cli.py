"""``tomeray train`` and ``tomeray eval-retrieval`` refuse what they cannot run before starting any
work: one ``error:`` line on stderr, exit status 2."""

from __future__ import annotations

import csv

import pytest
from tomeray.pipeline.cli import main
from tomeray.pipeline.training.layout import TrainLayout

FAST = ["model.arch=ViT-S-32", "model.pretrained=none", "model.preset=none", "model.num_frames=2",
        "inference.device=cpu", "data.val_fraction=0"]


@pytest.fixture
def pairs(opencv_data, tmp_path):
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption"])
        writer.writerows([[str(opencv_data / "tree.avi"), "a tree"],
                          [str(opencv_data / "vtest.avi"), "people walking"]])
    return tmp_path / "pairs.csv"


@pytest.mark.parametrize("args, words", [
    (["train", "nowhere.csv", "--out", "o"], "data source 'nowhere.csv' does not exist"),
    (["train", "a.csv", "b.csv", "--out", "o"], "give one data source"),
    (["train", "{pairs}", "--out", "o", "train.batch_size=1"],
     "train.batch_size=1 is smaller than train.workers=2"),
    (["train", "{pairs}", "--out", "o", "train.workers=4", "train.batch_size=4"],
     "2 training pairs cannot be shared"),
    (["train", "{pairs}", "--out", "o", "train.bogus=1"], "unknown config key 'train.bogus'"),
    (["eval-retrieval", "{pairs}", "eval.split=test"], "no usable clips in split 'test'"),
    (["eval-retrieval", "{pairs}", "eval.split=sideways"], "eval.split must be"),
])
def test_refused_before_any_work(args, words, pairs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([a.format(pairs=pairs) for a in args] + FAST) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and "error:" in err


def test_a_rerun_with_other_settings_is_refused_with_the_differences(pairs, tmp_path, capsys):
    out = tmp_path / "ft"
    TrainLayout(out).open({"model": {"arch": "ViT-B-16"}, "data": {}, "recipe": {}})
    assert main(["train", str(pairs), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "training output" in err and "model.arch" in err and "new --out directory" in err
