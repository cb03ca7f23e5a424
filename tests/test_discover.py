"""Input discovery: directories, globs, list files, deduplication and inputs that name nothing."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tomeray.models.errors import InputError
from tomeray.pipeline.video.discover import discover_videos


@pytest.fixture
def tree(tmp_path):
    """a/1.mp4, a/b/2.AVI, a/b/notes.txt, a/.hidden/3.mp4, a/.4.mp4, 'c d/ñandú 視頻.mkv'."""
    files = ["a/1.mp4", "a/b/2.AVI", "a/b/notes.txt", "a/.hidden/3.mp4", "a/.4.mp4", "c d/ñandú 視頻.mkv"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_directory_is_searched_recursively_by_extension(tree):
    found = discover_videos([tree / "a"])
    assert found.paths == [str(tree / "a/1.mp4"), str(tree / "a/b/2.AVI")]  # case-insensitive, no hidden
    assert found.errors == []


def test_custom_extensions(tree):
    assert discover_videos([tree / "a"], extensions=["txt"]).paths == [str(tree / "a/b/notes.txt")]


def test_glob_takes_matching_files_as_named(tree):
    found = discover_videos([str(tree / "a" / "**" / "*.txt")])
    assert found.paths == [str(tree / "a/b/notes.txt")]
    found = discover_videos([str(tree / "*" / "*.mkv")])
    assert found.paths == [str(tree / "c d/ñandú 視頻.mkv")]


def test_text_list_with_comments_and_relative_paths(tree):
    listing = tree / "list.txt"
    listing.write_text("# corpus\n\na/1.mp4\n" + str(tree / "c d" / "ñandú 視頻.mkv") + "\n  a/b/2.AVI  \n",
                       encoding="utf-8")
    found = discover_videos([listing])
    assert found.paths == [str(tree / "a/1.mp4"), str(tree / "c d/ñandú 視頻.mkv"), str(tree / "a/b/2.AVI")]


def test_csv_list_uses_the_path_column(tree):
    listing = tree / "list.csv"
    listing.write_text("id,path\n1,a/1.mp4\n2,c d/ñandú 視頻.mkv\n", encoding="utf-8")
    assert discover_videos([listing]).paths == [str(tree / "a/1.mp4"), str(tree / "c d/ñandú 視頻.mkv")]
    other = tree / "other.csv"
    other.write_text("video,label\na/b/2.AVI,x\n", encoding="utf-8")  # no 'path': the first column
    assert discover_videos([other]).paths == [str(tree / "a/b/2.AVI")]


def test_parquet_list(tree):
    listing = tree / "list.parquet"
    pq.write_table(pa.table({"n": [1, 2], "path": [str(tree / "a/1.mp4"), "a/b/2.AVI"]}), listing)
    assert discover_videos([listing]).paths == [str(tree / "a/1.mp4"), str(tree / "a/b/2.AVI")]


def test_paths_are_canonical_and_deduplicated(tree):
    os.symlink(tree / "a" / "1.mp4", tree / "link.mp4")
    found = discover_videos([tree / "a/1.mp4", tree / "link.mp4", str(tree / "a/b/../1.mp4"), tree / "a"])
    assert found.paths == [str(tree / "a/1.mp4"), str(tree / "a/b/2.AVI")]


def test_inputs_that_name_nothing_become_error_rows(tree):
    listing = tree / "list.txt"
    listing.write_text("a/1.mp4\ngone.mp4\n", encoding="utf-8")
    found = discover_videos([listing, tree / "missing.mp4", str(tree / "*.webm")])
    assert found.paths == [str(tree / "a/1.mp4")]
    assert [(e["stage"], e["error_type"]) for e in found.errors] == [
        ("discover", "FileNotFoundError"), ("discover", "FileNotFoundError"), ("discover", "NoMatch")]
    assert found.errors[0]["path"].endswith("gone.mp4")


def test_unreadable_list_is_an_error_row(tree):
    bad = tree / "bad.parquet"
    bad.write_bytes(b"not parquet")
    found = discover_videos([bad])
    assert found.paths == [] and found.errors[0]["path"] == str(bad)
    assert "cannot read the input list" in found.errors[0]["message"]


def test_no_inputs_is_an_input_error():
    with pytest.raises(InputError, match="no inputs"):
        discover_videos([])
