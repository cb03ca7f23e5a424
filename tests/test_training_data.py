"""Training / evaluation data: tables in three formats, MSR-VTT in its reference layout (synthesized
here in the formats the retrieval literature ships), bad rows, splits."""

from __future__ import annotations

import csv
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from media import write_video
from tomeray.models.errors import InputError
from tomeray.pipeline.training.config import DataConfig
from tomeray.pipeline.training.data import load_clips, select_split, splits_needed, train_val_split


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return [write_video(root / f"v{i}.avi", 30, 64, 48, seed=i) for i in range(4)]


ROWS = [  # (video index, caption, start_s, end_s)
    (0, "a dog runs", "", ""),
    (0, "a dog is running on grass", "", ""),
    (1, "first half of a cat", 0.0, 1.5),
    (1, "second half of a cat", 1.5, 3.0),
    (2, "a bird", "", ""),
]


def write_table(path, rows, extra_columns=()):
    records = [{"path": v if isinstance(v, str) else f"v{v}.avi", "caption": c, "start_s": s, "end_s": e,
                **dict(extra)} for (v, c, s, e), extra in zip(rows, extra_columns or [{}] * len(rows))]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({k: (None if x == "" else x) for k, x in r.items()}) + "\n"
                                for r in records))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist([{**r, "start_s": None if r["start_s"] == "" else r["start_s"],
                                              "end_s": None if r["end_s"] == "" else r["end_s"]}
                                             for r in records]), path)
    else:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, list(records[0]))
            w.writeheader()
            w.writerows(records)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_tables_give_clips_with_all_their_captions(videos, suffix):
    table = write_table(videos[0].parent / f"pairs{suffix}", ROWS)
    clips = load_clips(table, DataConfig())
    assert clips.format == "table" and not clips.errors
    assert [len(c.captions) for c in clips.clips] == [2, 1, 1, 1]
    dog, cat1, cat2, bird = clips.clips
    assert dog.captions == ["a dog runs", "a dog is running on grass"]
    assert math.isnan(dog.start_s) and dog.path == str(videos[0].resolve())
    assert (cat1.start_s, cat1.end_s, cat2.start_s) == (0.0, 1.5, 1.5)
    assert cat1.key.endswith("v1.avi@0-1.5s") and cat1.key != cat2.key
    assert clips.n_captions == 5
    assert clips.digest() == load_clips(table, DataConfig()).digest()


def test_bad_rows_become_error_rows_and_the_rest_is_used(videos, tmp_path):
    rows = [*ROWS, ("missing.avi", "never there", "", ""), ("missing.avi", "twice", "", ""),
            (3, "   ", "", ""),
            (3, "backwards", 2.0, 1.0), (3, "half a range", 1.0, ""), (3, "not numbers", "x", "y"),
            ("", "no path", "", ""), (3, "fine", "", "")]
    table = write_table(videos[0].parent / "bad.csv", rows)
    clips = load_clips(table, DataConfig())
    assert len(clips.clips) == 5 and clips.clips[-1].captions == ["fine"]
    kinds = [(e["error_type"], e["stage"]) for e in clips.errors]
    assert kinds.count(("MissingVideo", "load")) == 1  # one row per clip, not per caption
    assert ("EmptyCaption", "load") in kinds and len(clips.errors) == 6
    messages = " | ".join(e["message"] for e in clips.errors)
    assert "row 9: start_s=2, end_s=1 is not a clip" in messages and "not numbers" in messages
    assert all(e["input"] == str(table) for e in clips.errors)


def test_links_are_named_as_the_table_names_them(videos, tmp_path):
    """A link whose target is gone is a missing video named by the link, with its target in the
    message; a good link is used under the table's name and keyed by the file it leads to."""
    (tmp_path / "dangling.avi").symlink_to("/nonexistent/file.avi")
    (tmp_path / "alias.avi").symlink_to(videos[3])
    rows = [("dangling.avi", "broken", "", ""), ("alias.avi", "a link", "", "")]
    table = write_table(tmp_path / "links.csv", rows)
    clips = load_clips(table, DataConfig())
    (error,) = clips.errors
    assert error["error_type"] == "MissingVideo" and error["path"] == str(tmp_path / "dangling.avi")
    assert "/nonexistent/file.avi" in error["message"] and "does not exist" in error["message"]
    (clip,) = clips.clips
    assert clip.path == str(tmp_path / "alias.avi") and clip.key == str(videos[3].resolve())


def test_missing_columns_and_unknown_sources_are_clear_errors(videos, tmp_path):
    (tmp_path / "t.csv").write_text("video,text\na.avi,x\n")
    with pytest.raises(InputError, match="no 'path' column"):
        load_clips(tmp_path / "t.csv", DataConfig())
    with pytest.raises(InputError, match="cannot tell what"):
        load_clips(videos[0], DataConfig())
    with pytest.raises(InputError, match="does not exist"):
        load_clips(tmp_path / "nothing.csv", DataConfig())


def test_the_seed_split_holds_out_clips_never_captions(videos):
    rows = [(i % 4, f"caption {i}", float(i // 4), float(i // 4) + 0.5) for i in range(24)]
    clips = load_clips(write_table(videos[0].parent / "many.csv", rows), DataConfig())
    train, val = train_val_split(clips, DataConfig(val_fraction=0.25, seed=3))
    assert len(val) == 6 and len(train) == 18
    assert not {c.key for c in train} & {c.key for c in val}
    keys = [c.key for c in val]
    assert [c.key for c in train_val_split(clips, DataConfig(val_fraction=0.25, seed=3))[1]] == keys
    assert [c.key for c in train_val_split(clips, DataConfig(val_fraction=0.25, seed=4))[1]] != keys
    assert train_val_split(clips, DataConfig(val_fraction=0.0))[1] == []
    assert select_split(clips, "val", DataConfig(val_fraction=0.25, seed=3)) == val


def test_a_split_column_decides(videos):
    labels = [{"split": s} for s in ("train", "train", "val", "TEST", "")]
    clips = load_clips(write_table(videos[0].parent / "split.csv", ROWS, labels), DataConfig())
    train, val = train_val_split(clips, DataConfig(val_fraction=0.5))
    assert [c.captions[0] for c in train] == ["a dog runs", "a bird"]
    assert [c.captions[0] for c in val] == ["first half of a cat"]
    assert [c.captions[0] for c in select_split(clips, "auto", DataConfig())] == ["second half of a cat"]
    assert len(select_split(clips, "all", DataConfig())) == 4
    bad = load_clips(write_table(videos[0].parent / "bad_split.csv", ROWS[:1], [{"split": "holdout"}]),
                     DataConfig())
    assert not bad.clips and "split 'holdout'" in bad.errors[0]["message"]


def write_msrvtt(root, videos):
    """MSR-VTT's annotation files in the reference formats, for 4 videos (2 train, 2 test), 3 sentences
    each, one training video missing from the videos folder."""
    (root / "videos" / "all").mkdir(parents=True)
    for i, video in enumerate(videos[:3]):
        (root / "videos" / "all" / f"video{i}.mp4").symlink_to(video)
    sentences = [{"caption": f"sentence {s} of video {v}", "video_id": f"video{v}", "sen_id": 3 * v + s}
                 for v in range(4) for s in range(3)]
    videos_meta = [{"category": 0, "url": "", "video_id": f"video{v}", "start time": 0.0, "end time": 3.0,
                    "split": "train", "id": v} for v in range(4)]
    (root / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": videos_meta,
                                                       "sentences": sentences}))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo3\n")
    (root / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr1,video1,a test sentence for one\n"
        "ret1,msr2,video2,a test sentence for two\n")
    return root


def test_msrvtt_loader_reads_the_reference_layout(videos, tmp_path):
    root = write_msrvtt(tmp_path / "msrvtt", videos)
    train = load_clips(root, DataConfig(), ("train", "val"))
    assert train.format == "msrvtt"
    assert [c.key for c in train.clips] == [str((root / "videos/all/video0.mp4").resolve())]
    assert train.clips[0].captions == [f"sentence {s} of video 0" for s in range(3)]
    (missing,) = train.errors  # video3 is in the training list but not in the videos folder
    assert missing["error_type"] == "MissingVideo" and missing["path"].endswith("video3.mp4")
    test = load_clips(root / "MSRVTT_data.json", DataConfig(), splits_needed("auto"))
    picked = select_split(test, "auto", DataConfig())
    assert [c.captions for c in picked] == [["a test sentence for one"], ["a test sentence for two"]]
    assert {c.split for c in picked} == {"test"} and not test.errors
    both = load_clips(root, DataConfig(), splits_needed("all"))
    assert len(both.clips) == 3


def test_msrvtt_missing_lists_are_clear_errors(videos, tmp_path):
    root = write_msrvtt(tmp_path / "msrvtt", videos)
    (root / "MSRVTT_train.9k.csv").unlink()
    with pytest.raises(InputError, match="training list .* does not exist"):
        load_clips(root, DataConfig(), ("train",))
    assert load_clips(root, DataConfig(), ("test",)).clips  # the test split does not need it
