"""Search on a small real index: real decoded videos, a real (random-weights) encoder, real Parquet
and FAISS files in the index layout. The index is written here without Ray to keep these tests
fast; the demo test covers the Ray indexing job end to end."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch
from ranking import assert_same_ranking
from tomeray.models.errors import InputError
from tomeray.models.frames import normalize_frames
from tomeray.models.tempme import VideoModelConfig, create_video_encoder
from tomeray.operators.text_embed import TextEmbedder
from tomeray.operators.video_decode import decode_clips
from tomeray.pipeline.core.errors_table import error_row
from tomeray.pipeline.core.output import IncompatibleOutputError
from tomeray.pipeline.video import search, search_cli
from tomeray.pipeline.video.config import FaissConfig
from tomeray.pipeline.video.ids import id_key, stable_id
from tomeray.pipeline.video.job import finish_index
from tomeray.pipeline.video.layout import IndexLayout, embeddings_schema, index_header

MODEL = VideoModelConfig(arch="ViT-S-32", pretrained="none", preset="none", num_frames=4,
                         seed=7)


def synthetic_video(path, n_frames=24, size=(160, 120)):
    """A short clip of a bright square moving over a dark background."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 8.0, size)
    for i in range(n_frames):
        frame = np.full((size[1], size[0], 3), 30, np.uint8)
        x = 5 + i * 4
        frame[40:80, x : x + 40] = (40, 200, 250)
        writer.write(frame)
    writer.release()
    return path


def write_index(root, videos, cfg=MODEL) -> IndexLayout:
    """An index in the on-disk layout, built by decoding and embedding ``videos`` directly (no Ray)
    and written by the indexing job's own functions (manifest, shards, FAISS)."""
    encoder = create_video_encoder(cfg)
    layout = IndexLayout(root)
    rows = []
    for path in videos:
        (clip,) = decode_clips(path, encoder.image_size, encoder.num_frames)
        frames = normalize_frames(torch.from_numpy(clip.frames), encoder.mean, encoder.std)[None]
        embedding = encoder.encode_video(frames, torch.from_numpy(clip.mask)[None])[0].numpy()
        rows.append({"video_id": stable_id(id_key(path)), "path": str(path), "start_s": clip.start_s,
                     "end_s": clip.end_s, "duration_s": clip.duration_s, "fps": clip.fps,
                     "n_frames": clip.n_frames, "frame_indices": clip.frame_indices.tolist(),
                     "embedding": embedding.tolist()})
    sampling = {"fps": None, "segment_s": 0.0, "num_frames": cfg.num_frames}
    dim = encoder.embed_dim
    manifest = layout.open(index_header(encoder.identity(), encoder.weights_id, dim, sampling, None))
    layout.write_embeddings(pa.Table.from_pylist(rows, schema=embeddings_schema(dim)), "test-00000")
    layout.write_errors([error_row("/nowhere/broken.mp4", "decode", "UnreadableVideoError", "not a video",
                                   input="/nowhere/broken.mp4", path="/nowhere/broken.mp4")], "test-00000")
    finish_index(layout, manifest, FaissConfig(factory="flat"), True, layout.indexed_paths())
    return layout


@pytest.fixture(scope="module")
def videos(opencv_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return [opencv_data / "tree.avi", opencv_data / "vtest.avi", synthetic_video(folder / "square.avi")]


@pytest.fixture(scope="module")
def index_dir(videos, tmp_path_factory):
    return write_index(tmp_path_factory.mktemp("index") / "idx", videos).root


@pytest.fixture(scope="module")
def searcher(index_dir):
    return search.VideoSearcher(index_dir, device="cpu")


def test_text_search_returns_ranked_results_with_metadata(searcher, videos):
    results = searcher.search("people walking in the street", k=2)
    assert [r.rank for r in results] == [1, 2]
    assert results[0].score >= results[1].score
    assert {r.path for r in results} <= {str(v) for v in videos}
    top = searcher.search("people walking in the street", k=10)
    assert len(top) == 3 and top[:2] == results  # k beyond the index size: every video, same order
    vtest = next(r for r in top if r.path.endswith("vtest.avi"))
    assert vtest.start_s == 0.0
    assert vtest.end_s == pytest.approx(79.5) and vtest.duration_s == pytest.approx(79.5)
    assert searcher.random_weights and searcher.weights_id == "random-init(seed=7)"
    assert searcher.model_config.seed == 7 and searcher.model_config.pretrained == "none"


def test_video_query_finds_itself_first_with_the_same_random_weights(searcher, videos):
    """The searcher re-creates the index's random weights from the seed: a video that is in the
    index is re-embedded to the very vector that was stored (cosine 1)."""
    for video in videos:
        results = searcher.search(str(video), k=3)
        assert results[0].path == str(video)
        assert results[0].score == pytest.approx(1.0, abs=1e-4)
        assert results[1].score < 0.9999


def test_batched_text_search_matches_single_queries(searcher):
    texts = ["a tree in the wind", "a yellow square"]
    batched = searcher.search_many(texts, k=3)
    for text, results in zip(texts, batched):
        single = searcher.search(text, k=3)
        assert_same_ranking([(r.video_id, r.score) for r in results], [(r.video_id, r.score) for r in single])


def test_bad_queries_are_clear_errors(searcher, tmp_path):
    with pytest.raises(InputError, match="non-empty"):
        searcher.search("   ", k=3)
    with pytest.raises(InputError, match="k must be a positive integer"):
        searcher.search("trees", k=0)
    with pytest.raises(InputError, match="cannot use video .*missing.mp4"):
        searcher.search(str(tmp_path / "missing.mp4"))
    not_video = tmp_path / "notes.avi"
    not_video.write_text("this is not a video")
    with pytest.raises(InputError, match="cannot use video"):
        searcher.search(str(not_video))


def test_a_different_model_is_refused(index_dir):
    other = search.VideoSearcher(index_dir, device="cpu", seed=8)
    with pytest.raises(IncompatibleOutputError, match="differ in: model.weights_id"):
        other.search("trees", k=1)


def test_model_config_from_manifest_reads_every_kind_of_weights():
    def cfg(weights_id, **overrides):
        return search.model_config_from_manifest(
            {"model": {"arch": "ViT-B-32", "preset": "tempme", "num_frames": 12, "weights_id": weights_id}},
            overrides)

    assert cfg("open_clip:ViT-B-32/openai").pretrained == "openai"
    assert cfg("file:/ckpt/my model.pt#sha256=0123abcd").pretrained == "/ckpt/my model.pt"
    random = cfg("random-init(seed=3)", num_frames=4)
    assert (random.pretrained, random.seed, random.num_frames) == ("none", 3, 4)
    with pytest.raises(InputError, match="cannot tell which weights"):
        cfg("mystery")
    with pytest.raises(Exception, match="unknown model setting 'colour'"):
        cfg("random-init(seed=3)", colour="red")


def test_text_embedder_operator_matches_the_searcher(searcher):
    embedder = TextEmbedder(searcher.model_config, num_threads=1)
    batch = {"query": np.array(["a tree in the wind", "people walking"]), "qid": np.array([4, 5])}
    out = embedder(batch)
    assert out["embedding"].shape == (2, 384) and out["embedding"].dtype == np.float32
    np.testing.assert_array_equal(out["qid"], [4, 5])
    np.testing.assert_allclose(out["embedding"], searcher.encode_text(list(batch["query"])), atol=1e-5)
    assert out["weights_id"][0] == "random-init(seed=7)"


# ------------------------------------------------------------------------------------------ CLI


def run_cli(capsys, *argv):
    code = search_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_a_ranked_table_and_the_weights(index_dir, capsys):
    code, out, err = run_cli(capsys, index_dir, "a tree", "-k", "2", "inference.device=cpu")
    assert code == 0, err
    assert "random-init(seed=7)" in out and "RANDOM weights" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("rank"))
    rows = [line.split() for line in lines[header + 2 :]]
    assert [r[0] for r in rows] == ["1", "2"]
    assert float(rows[0][1]) >= float(rows[1][1])
    assert all(r[-1].endswith(".avi") for r in rows)


def test_cli_json(index_dir, videos, capsys):
    code, out, _ = run_cli(capsys, index_dir, videos[0], "-k", "3", "--json", "inference.device=cpu")
    assert code == 0
    payload = json.loads(out)
    assert payload["weights_id"] == "random-init(seed=7)" and payload["random_weights"] is True
    assert payload["query_type"] == "video"
    assert [r["rank"] for r in payload["results"]] == [1, 2, 3]
    assert payload["results"][0]["path"] == str(videos[0])
    fields = {"rank", "score", "video_id", "path", "start_s", "end_s", "duration_s"}
    assert set(payload["results"][0]) == fields


@pytest.fixture
def broken_indexes(index_dir, tmp_path):
    def copy(name):
        return shutil.copytree(index_dir, tmp_path / name)

    corrupt_faiss = copy("corrupt_faiss")
    (corrupt_faiss / "index.faiss").write_bytes(b"\x00garbage" * 10)
    no_faiss = copy("no_faiss")
    (no_faiss / "index.faiss").unlink()
    corrupt_manifest = copy("corrupt_manifest")
    (corrupt_manifest / "manifest.json").write_text("{not json")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    return {"corrupt_faiss": (corrupt_faiss, "corrupt"), "no_faiss": (no_faiss, "does not exist"),
            "corrupt_manifest": (corrupt_manifest, "unreadable"),
            "empty_dir": (empty_dir, "manifest.json is missing"),
            "missing": (tmp_path / "missing", "does not exist")}


@pytest.mark.parametrize("case", ["corrupt_faiss", "no_faiss", "corrupt_manifest", "empty_dir", "missing"])
def test_cli_reports_a_broken_index_in_one_line(broken_indexes, case, capsys):
    path, words = broken_indexes[case]
    code, out, err = run_cli(capsys, path, "trees")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("tomeray search: error:") and words in err


@pytest.mark.parametrize("argv, words", [
    (["", "-k", "3"], "query is empty"),
    (["trees", "-k", "0"], "k must be a positive integer"),
    (["trees", "model.colour=red"], "unknown config key 'model.colour'"),
    (["trees", "inference.device=gpu0"], "unknown device 'gpu0'"),
])
def test_cli_rejects_bad_arguments_in_one_line(index_dir, argv, words, capsys):
    code, out, err = run_cli(capsys, index_dir, *argv)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_an_index_built_without_faiss_is_searched_exactly(index_dir, searcher, tmp_path):
    copy = shutil.copytree(index_dir, tmp_path / "no_faiss_built")
    (copy / "index.faiss").unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "faiss_factory": None}))
    exact = search.VideoSearcher(copy, device="cpu")
    queries = searcher.encode_text(["a tree", "a street"])
    assert exact.search_embeddings(queries, k=3) == searcher.search_embeddings(queries, k=3)
