"""Index layout: stable ids, shard reading with deduplication, the errors view, manifests."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest
from tomeray.models.errors import InputError
from tomeray.pipeline.index_layout import (
    ERRORS_SCHEMA,
    IncompatibleIndexError,
    IndexLayout,
    embeddings_schema,
    errors_table,
    id_key,
    stable_id,
)


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
    with pytest.raises(InputError, match="not under ids.root"):
        id_key(tmp_path / "m1/sub/v.mp4", root=tmp_path / "m2")


def test_read_embeddings_unions_shards_and_deduplicates(tmp_path):
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


def test_errors_view_keeps_the_latest_unresolved_error_per_path(tmp_path):
    layout = IndexLayout(tmp_path)
    layout.write_errors(errors_table([{"path": "/x", "stage": "decode", "error_type": "A", "message": "1"},
                                      {"path": "/y", "stage": "decode", "error_type": "A", "message": "1"}]),
                        "20240101T000000Z-aaaa-00000")
    layout.write_errors(errors_table([{"path": "/x", "stage": "embed", "error_type": "B", "message": "2"}]),
                        "20240102T000000Z-bbbb-00000")
    layout.write_embeddings(rows([5], ["/y"]), "20240102T000000Z-bbbb-00000")  # /y succeeded on a rerun
    current = layout.read_errors()
    assert current.to_pylist() == [{"path": "/x", "stage": "embed", "error_type": "B", "message": "2"}]
    assert layout.read_errors(include_resolved=True).num_rows == 3
    assert layout.read_errors(done_paths=set()).num_rows == 2


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
    layout = IndexLayout(tmp_path)
    layout.check_compatible({"arch": "x"})  # no index yet: anything goes
    layout.write_manifest({"schema_version": 1, "model": {"arch": "ViT-B-32", "preset": "tempme"}})
    layout.check_compatible({"arch": "ViT-B-32", "preset": "tempme"})
    with pytest.raises(IncompatibleIndexError, match="differs in: preset"):
        layout.check_compatible({"arch": "ViT-B-32", "preset": "none"})
    assert json.loads(layout.manifest_path.read_text())["schema_version"] == 1


def test_unreadable_shard_is_reported_with_its_path(tmp_path):
    layout = IndexLayout(tmp_path)
    layout.embeddings_dir.mkdir(parents=True)
    (layout.embeddings_dir / "part-bad.parquet").write_bytes(b"garbage")
    with pytest.raises(InputError, match="part-bad.parquet"):
        layout.read_embeddings()
