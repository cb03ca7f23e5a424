"""Index layout: stable ids, shard reading with deduplication, the errors view, manifests."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tomeray.models.errors import InputError
from tomeray.pipeline.core.errors_table import ERRORS_SCHEMA, error_row
from tomeray.pipeline.core.output import IncompatibleOutputError
from tomeray.pipeline.video.ids import id_key, stable_id
from tomeray.pipeline.video.layout import IndexLayout, check_same_embeddings, embeddings_schema, index_header


def rows(ids, paths, dim=4, value=0.0):
    n = len(ids)
    emb = np.full((n, dim), value, np.float32)
    return pa.Table.from_pydict({
        "video_id": pa.array(ids, pa.int64()), "path": paths,
        "start_s": [0.0] * n, "end_s": [1.0] * n, "duration_s": [1.0] * n, "fps": [10.0] * n,
        "n_frames": [10] * n, "frame_indices": [[0, 5]] * n,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), dim),
    }, schema=embeddings_schema(dim))


def test_stable_ids(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "a.mp4", tmp_path / "link.mp4")
    key = id_key(tmp_path / "a.mp4")
    assert key == str(tmp_path / "a.mp4")
    assert id_key(tmp_path / "link.mp4") == key == id_key(str(tmp_path / "sub" / ".." / "a.mp4"))
    assert stable_id(key) == stable_id(key) > 0  # positive int64, deterministic across processes
    assert stable_id(key) == 0x7FFF_FFFF_FFFF_FFFF & int.from_bytes(
        __import__("hashlib").blake2b(key.encode(), digest_size=8).digest(), "little")
    assert stable_id(key, 0.0) != stable_id(key, 10.0) != stable_id(key)
    ids = {stable_id(f"/corpus/video_{i}.mp4") for i in range(20000)}
    assert len(ids) == 20000


def test_relative_ids_are_the_same_wherever_the_corpus_is_mounted(tmp_path):
    for mount in ("m1", "m2"):
        (tmp_path / mount / "sub").mkdir(parents=True)
        (tmp_path / mount / "sub" / "v.mp4").write_bytes(b"x")
    a = id_key(tmp_path / "m1/sub/v.mp4", root=tmp_path / "m1")
    b = id_key(tmp_path / "m2/sub/v.mp4", root=tmp_path / "m2")
    assert a == b == "sub/v.mp4"
    with pytest.raises(InputError, match="not under input.id_root"):
        id_key(tmp_path / "m1/sub/v.mp4", root=tmp_path / "m2")


def test_read_embeddings_unions_parquet_parts_and_deduplicates(tmp_path):
    layout = IndexLayout(tmp_path)
    layout.write_embeddings(rows([1, 2], ["/a", "/b"], value=1.0), "20240101T000000Z-aaaa-00000")
    layout.write_embeddings(rows([2, 3], ["/b", "/c"], value=2.0), "20240102T000000Z-bbbb-00000")
    table = layout.read_embeddings()
    assert table["video_id"].to_pylist() == [1, 2, 3]
    assert table["embedding"].to_pylist()[1] == [1.0] * 4  # the earliest shard wins
    assert layout.read_embeddings(["path"]).column_names == ["path"]
    assert layout.indexed_paths() == {"/a", "/b", "/c"}
    assert not list(tmp_path.rglob("*.tmp"))


def test_empty_index_reads_as_empty_tables(tmp_path):
    layout = IndexLayout(tmp_path / "nothing")
    assert layout.read_embeddings().num_rows == 0 and layout.read_errors().schema == ERRORS_SCHEMA
    assert not layout.exists()


def error(path, stage, error_type, message, given="videos/"):
    return error_row(path, stage, error_type, message, input=given, path=path)


def test_errors_view_keeps_the_latest_unresolved_error_per_path(tmp_path):
    layout = IndexLayout(tmp_path)
    layout.write_errors([error("/x", "decode", "A", "1"), error("/y", "decode", "A", "1")],
                        "20240101T000000Z-aaaa-00000")
    layout.write_errors([error("/x", "embed", "B", "2")], "20240102T000000Z-bbbb-00000")
    layout.write_embeddings(rows([5], ["/y"]), "20240102T000000Z-bbbb-00000")  # /y succeeded on a rerun
    current = layout.read_errors()
    assert current.to_pylist() == [{"item": "/x", "input": "videos/", "path": "/x", "stage": "embed",
                                    "error_type": "B", "message": "2"}]
    assert layout.read_errors(include_resolved=True).num_rows == 3
    assert layout.read_errors(done_paths=set()).num_rows == 2


def test_error_parts_of_the_first_index_format_are_read(tmp_path):
    """Indexes written before the shared error table (path, stage, error_type, message) still read."""
    layout = IndexLayout(tmp_path)
    layout.errors_dir.mkdir(parents=True)
    old = pa.table({"path": ["/x"], "stage": ["decode"], "error_type": ["A"], "message": ["bad"]})
    pq.write_table(old, layout.errors_dir / "part-20240101T000000Z-aaaa-00000.parquet")
    assert layout.read_errors().to_pylist() == [{"item": "/x", "input": "/x", "path": "/x", "stage": "decode",
                                                 "error_type": "A", "message": "bad"}]


def test_manifest_errors_are_one_line_messages(tmp_path):
    layout = IndexLayout(tmp_path)
    with pytest.raises(InputError, match="manifest.json is missing"):
        layout.read_manifest()
    layout.manifest_path.write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        layout.read_manifest()
    layout.write_manifest({"schema_version": 99})
    with pytest.raises(InputError, match="upgrade tomeray"):
        layout.read_manifest()


def test_check_compatible_names_what_differs(tmp_path):
    sampling = {"fps": None, "segment_s": 0.0, "num_frames": 12}
    header = index_header({"arch": "ViT-B-32", "preset": "tempme"}, "random-init(seed=0)", 4, sampling, None)
    layout = IndexLayout(tmp_path)
    layout.open(header)  # no index yet: anything goes, and the manifest pins it
    assert layout.open(header)["model"] == {"arch": "ViT-B-32", "preset": "tempme"}
    other = index_header({"arch": "ViT-B-32", "preset": "none"}, "random-init(seed=0)", 4, sampling, None)
    with pytest.raises(IncompatibleOutputError, match='differ in: model.preset = "tempme" vs "none"'):
        layout.open(other)
    with pytest.raises(IncompatibleOutputError, match="differ in: model.preset"):
        check_same_embeddings(header, other, "a", "b")
    # the id root may move (another mount of the corpus); absolute vs relative ids may not
    moved = {**header, "ids": {**header["ids"], "root": "/elsewhere"}}
    check_same_embeddings(header, moved, "a", "b")
    relative = index_header(header["model"], header["weights_id"], 4, sampling, "/corpus")
    with pytest.raises(IncompatibleOutputError, match="ids.relative"):
        check_same_embeddings(header, relative, "a", "b")
    assert json.loads(layout.manifest_path.read_text())["schema_version"] == IndexLayout.schema_version


def test_results_without_a_manifest_are_not_trusted(tmp_path):
    layout = IndexLayout(tmp_path)
    layout.write_embeddings(rows([1], ["/a"]), "20240101T000000Z-aaaa-00000")
    with pytest.raises(InputError, match="holds results but no manifest.json"):
        layout.open(index_header({"arch": "x"}, "w", 4, {}, None))


def test_unreadable_parquet_part_is_reported_with_its_path(tmp_path):
    layout = IndexLayout(tmp_path)
    layout.embeddings_dir.mkdir(parents=True)
    (layout.embeddings_dir / "part-bad.parquet").write_bytes(b"garbage")
    with pytest.raises(InputError, match="part-bad.parquet"):
        layout.read_embeddings()
