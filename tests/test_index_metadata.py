"""The memory-mapped metadata file of an index: rows by video id, in any order of writing."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from tomeray.pipeline.video.metadata import MetadataLookup, write_metadata


def table_of(ids, paths):
    n = len(ids)
    return pa.table({"video_id": pa.array(ids, pa.int64()), "path": paths,
                     "start_s": np.arange(n, dtype=np.float64), "end_s": np.arange(n) + 2.0,
                     "duration_s": np.full(n, 9.5)})


def test_lookup_by_id_returns_each_row_and_none_for_unknown_ids(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.choice(np.arange(-2**62, 2**62, 2**50), size=500, replace=False)
    paths = [f"/data/vidéo {i}/clip-{'x' * (i % 7)}.mp4" for i in range(500)]
    write_metadata(tmp_path / "metadata.bin", table_of(ids, paths))
    lookup = MetadataLookup(tmp_path / "metadata.bin")
    assert len(lookup) == 500
    for row in rng.permutation(500)[:100]:
        assert lookup.get(int(ids[row])) == (paths[row], float(row), row + 2.0, 9.5)
    assert lookup.get(int(ids.max()) + 1) is None and lookup.get(int(ids.min()) - 1) is None
    lookup.close()


def test_an_empty_table_and_a_foreign_file(tmp_path):
    write_metadata(tmp_path / "empty.bin", table_of([], []))
    empty = MetadataLookup(tmp_path / "empty.bin")
    assert len(empty) == 0 and empty.get(5) is None
    (tmp_path / "other.bin").write_bytes(b"PAR1 not metadata")
    with pytest.raises(ValueError, match="not a metadata file"):
        MetadataLookup(tmp_path / "other.bin")
