"""Thumbnails: made by the decode stage from a frame it decoded anyway, written next to the embedding
rows, found again for rows indexed without them (the backfill), and decoded back as JPEGs."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from media import write_video
from tomeray.operators.thumbnail import THUMBNAIL_MAX, middle_frame, thumbnail_jpeg, thumbnails_of
from tomeray.operators.video_decode import VideoDecoder, decode_clips
from tomeray.pipeline.video.layout import IndexLayout, index_header
from tomeray.pipeline.video.thumbnails import rows_without_thumbnails
from tomeray.pipeline.video.writer import ShardWriter


def jpeg(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def test_thumbnails_fit_the_box_keep_the_shape_and_never_grow():
    rng = np.random.default_rng(0)
    assert jpeg(thumbnail_jpeg(rng.integers(0, 255, (576, 768, 3), np.uint8))).shape == (180, 240, 3)
    assert jpeg(thumbnail_jpeg(rng.integers(0, 255, (224, 398, 3), np.uint8))).shape[:2] == (180, 320)
    assert jpeg(thumbnail_jpeg(rng.integers(0, 255, (60, 80, 3), np.uint8))).shape[:2] == (60, 80)
    colour = np.zeros((90, 160, 3), np.uint8)
    colour[..., 0] = 250  # red in RGB
    assert jpeg(thumbnail_jpeg(colour))[45, 80].tolist()[2] > 200  # red in OpenCV's BGR
    bad_frames = (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                  np.zeros((0, 5, 3), np.uint8))
    for bad in bad_frames:
        with pytest.raises(ValueError):
            thumbnail_jpeg(bad)
    assert middle_frame([4, 8, 12, 16]) == 12 and middle_frame([]) == 0


def test_decode_stage_makes_one_thumbnail_per_clip_from_its_middle_frame(opencv_data):
    path = opencv_data / "tree.avi"
    clips = list(decode_clips(path, 224, 4, segment_s=2.0, thumbnails=True))
    assert len(clips) >= 2
    again = thumbnails_of(path, [middle_frame(c.frame_indices) for c in clips])
    for clip, redone in zip(clips, again):
        image = jpeg(clip.thumbnail)
        assert image.shape[0] <= THUMBNAIL_MAX[1] and image.shape[1] <= THUMBNAIL_MAX[0]
        assert image.shape[1] / image.shape[0] == pytest.approx(320 / 240, abs=0.02)  # tree.avi is 4:3
        assert np.abs(image.astype(int) - jpeg(redone).astype(int)).mean() < 3  # the same frame
    assert [c.thumbnail for c in decode_clips(path, 224, 4)] == [b""]  # only when asked for


def test_decoder_rows_carry_the_thumbnail_and_failures_carry_none(tmp_path, opencv_data):
    (tmp_path / "broken.avi").write_bytes(b"RIFF0000AVI not really")
    decoder = VideoDecoder(224, 4, thumbnails=True)
    good = list(decoder.rows(str(opencv_data / "tree.avi"), "k"))
    bad = list(decoder.rows(str(tmp_path / "broken.avi"), "b"))
    assert len(good) == 1 and jpeg(good[0]["thumbnail"]).size
    assert bad[0]["error_type"] and bad[0]["thumbnail"] == b""
    batch = next(iter(decoder({"path": np.array([str(opencv_data / "tree.avi")]), "key": np.array(["k"])})))
    assert batch["thumbnail"].dtype == object and batch["thumbnail"][0] == good[0]["thumbnail"]


def test_writer_stores_thumbnails_beside_the_rows_and_the_backfill_finds_the_rest(tmp_path):
    video = write_video(tmp_path / "v.avi", 30, 160, 120, seed=1)
    layout = IndexLayout(tmp_path / "idx")
    layout.open(index_header({"arch": "x"}, "random-init(seed=0)", 4, {"fps": None}, None))
    writer = ShardWriter(layout, "run", 4, shard_rows=100, flush_s=60, segmented=True)
    clips = list(decode_clips(video, 64, 4, segment_s=1.0, thumbnails=True))
    n = len(clips)
    frame_indices = np.empty(n, dtype=object)
    frame_indices[:] = [c.frame_indices for c in clips]
    thumbnails = np.empty(n, dtype=object)
    thumbnails[:] = [c.thumbnail if i % 2 == 0 else b"" for i, c in enumerate(clips)]  # odd rows: none made
    writer.add({"path": np.array([str(video)] * n), "key": np.array(["v"] * n),
                "start_s": np.array([c.start_s for c in clips]), "end_s": np.array([c.end_s for c in clips]),
                "duration_s": np.full(n, clips[0].duration_s), "fps": np.full(n, clips[0].fps),
                "n_frames": np.full(n, 30), "frame_indices": frame_indices, "thumbnail": thumbnails,
                "embedding": np.ones((n, 4), np.float32), "decode_node": np.array(["a"] * n),
                "embed_node": np.array(["a"] * n), "error_stage": np.array([""] * n),
                "error_type": np.array([""] * n), "error_message": np.array([""] * n)})
    writer.flush()
    (part,) = layout.thumbnail_shards()
    assert part.name == layout.embedding_shards()[0].name  # written with the rows, under the same name
    stored = pq.read_table(part)
    rows = layout.read_embeddings(["video_id", "frame_indices"])
    assert stored["video_id"].to_pylist() == rows["video_id"].to_pylist()[::2]
    assert all(jpeg(t).size for t in stored["thumbnail"].to_pylist())
    (missing,) = rows_without_thumbnails(layout)
    assert missing["path"] == str(video)
    assert missing["video_ids"] == rows["video_id"].to_pylist()[1::2]
    assert missing["frames"] == [middle_frame(f) for f in rows["frame_indices"].to_pylist()[1::2]]


def test_merging_indexes_carries_their_thumbnails(tmp_path):
    import pyarrow as pa
    from serving import write_synthetic
    from tomeray.pipeline.video.layout import thumbnails_schema
    from tomeray.pipeline.video.merge import merge_indexes

    sources = []
    for seed in (1, 2):
        layout, (ids, *_rest) = write_synthetic(tmp_path / f"src{seed}", n=8, parts=1, seed=seed)
        layout.write_thumbnails(pa.Table.from_pydict(
            {"video_id": ids[:5].tolist(), "thumbnail": [f"jpeg {i}".encode() for i in ids[:5]]},
            schema=thumbnails_schema()), "t-00000")
        sources.append((layout, ids))
    merge_indexes([str(s.root) for s, _ in sources], tmp_path / "out")
    out = IndexLayout(tmp_path / "out")
    stored = [row for part in out.thumbnail_shards() for row in pq.read_table(part).to_pylist()]
    expected = {int(i) for _, ids in sources for i in ids[:5]}
    assert {r["video_id"] for r in stored} == expected and len(stored) == 10
    assert all(r["thumbnail"] == f"jpeg {r['video_id']}".encode() for r in stored)
    missing = rows_without_thumbnails(out)
    assert sorted(v for item in missing for v in item["video_ids"]) == sorted(
        int(i) for _, ids in sources for i in ids[5:])  # the rows that had none
