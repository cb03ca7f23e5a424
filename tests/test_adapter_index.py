"""An index built with an adapter: the manifest pins the adapter's identity and records its file, the
searcher reloads it from there (or from model.adapter=, if it moved), and refuses another adapter or
none. The index is written without Ray, by the indexing job's own functions."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pyarrow as pa
import pytest
import torch
from tomeray.models.errors import InputError
from tomeray.models.tempme import VideoModelConfig, create_video_encoder, save_adapter
from tomeray.pipeline.core.config import load_config
from tomeray.pipeline.core.output import IncompatibleOutputError
from tomeray.pipeline.video.config import FaissConfig, IndexConfig, SearchConfig
from tomeray.pipeline.video.job import finish_index
from tomeray.pipeline.video.layout import IndexLayout, embeddings_schema, index_header
from tomeray.pipeline.video.search import VideoSearcher, model_config_from_manifest

MODEL = VideoModelConfig(arch="ViT-S-32", pretrained="none", preset="none", num_frames=2, seed=3)


def trained_adapter(path, seed):
    """An adapter file whose LoRA B tensors are nonzero (as after training)."""
    encoder = create_video_encoder(MODEL, device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in encoder.adapter_parameters().items():
            if name.endswith("TVPt_LoRA_b"):
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    save_adapter(encoder, path, name=f"ft{seed}")
    return path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return trained_adapter(root / "a.safetensors", 1), trained_adapter(root / "b.safetensors", 2)


@pytest.fixture(scope="module")
def index(adapters, tmp_path_factory):
    cfg = dataclasses.replace(MODEL, adapter=str(adapters[0]))
    encoder = create_video_encoder(cfg, device="cpu")
    layout = IndexLayout(tmp_path_factory.mktemp("index") / "idx")
    frames = torch.randn(3, 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    vectors = encoder.encode_video(frames).numpy()
    rows = [{"video_id": i + 1, "path": f"/v/{i}.mp4", "start_s": 0.0, "end_s": 1.0, "duration_s": 1.0,
             "fps": 2.0, "n_frames": 2, "frame_indices": [0, 1], "embedding": v.tolist()}
            for i, v in enumerate(vectors)]
    sampling = {"fps": None, "segment_s": 0.0, "num_frames": 2}
    header = index_header(encoder.identity(), encoder.weights_id, encoder.embed_dim, sampling, None,
                          adapter_path=cfg.adapter)
    manifest = layout.open(header)
    layout.write_embeddings(pa.Table.from_pylist(rows, schema=embeddings_schema(encoder.embed_dim)), "t-0")
    finish_index(layout, manifest, FaissConfig(factory="flat"), True, layout.indexed_paths())
    return layout, header, vectors


def test_the_manifest_pins_the_adapter_and_records_its_file(index, adapters):
    layout, header, _ = index
    manifest = layout.read_manifest()
    assert manifest["model"]["adapter"]["name"] == "ft1" and manifest["adapter"]["path"] == str(adapters[0])
    config = model_config_from_manifest(manifest)
    assert config.adapter == str(adapters[0]) and config.arch == "ViT-S-32" and config.num_frames == 2
    moved = model_config_from_manifest(manifest, {"adapter": "/moved/a.safetensors"})
    assert moved.adapter == "/moved/a.safetensors"
    other = create_video_encoder(dataclasses.replace(MODEL, adapter=str(adapters[1])), device="cpu")
    rebuilt = index_header(other.identity(), other.weights_id, other.embed_dim, header["sampling"], None,
                           adapter_path=str(adapters[1]))
    with pytest.raises(IncompatibleOutputError, match="model.adapter.id"):
        layout.open(rebuilt)  # adding to the index with another adapter is refused
    lost = {**manifest, "adapter": None}
    with pytest.raises(InputError, match="does not say where the file is"):
        model_config_from_manifest(lost)


def test_the_searcher_reloads_the_adapter_and_refuses_others(index, adapters, tmp_path):
    layout, _, vectors = index
    searcher = VideoSearcher(layout.root, device="cpu")
    assert searcher.encoder.adapter.name == "ft1"
    frames = torch.randn(3, 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(searcher.encoder.encode_video(frames), torch.from_numpy(vectors), atol=1e-5)
    assert [r.video_id for r in searcher.search_embeddings(vectors[1:2], k=1)[0]] == [2]
    moved = shutil.copy(adapters[0], tmp_path / "moved.safetensors")
    assert VideoSearcher(layout.root, device="cpu", adapter=str(moved)).encoder.adapter.path == str(moved)
    for wrong in (str(adapters[1]), ""):  # another adapter, or none
        with pytest.raises(IncompatibleOutputError, match="model.adapter"):
            _ = VideoSearcher(layout.root, device="cpu", adapter=wrong).encoder


def test_adapter_paths_in_configs_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    index = load_config(IndexConfig, "index", ["model.adapter=ft/adapter.safetensors"])
    search = load_config(SearchConfig, "search", ["model.adapter=ft/adapter.safetensors"])
    assert index.model.adapter == search.model.adapter == str(tmp_path / "ft" / "adapter.safetensors")
    assert load_config(SearchConfig, "search", []).model.adapter is None


def test_an_index_with_a_custom_schedule_rebuilds_its_schedule():
    cfg = VideoModelConfig(arch="ViT-S-32", pretrained="none", preset="custom", num_frames=4,
                           schedule={"clip_layers": [0.67, 0.84], "frames_per_clip": [2, 2]})
    encoder = create_video_encoder(cfg, with_text=False, device="cpu")
    manifest = index_header(encoder.identity(), encoder.weights_id, encoder.embed_dim, {}, None)
    rebuilt = create_video_encoder(model_config_from_manifest(manifest), with_text=False, device="cpu")
    assert rebuilt.identity() == encoder.identity()


def test_index_and_search_outputs_say_which_adapter(index, adapters, tmp_path, capsys):
    from tomeray.pipeline.video import search_cli
    from tomeray.pipeline.video.layout import adapter_line

    layout, header, _ = index
    manifest = layout.read_manifest()
    line = adapter_line(manifest)
    assert line.startswith("adapter: ") and manifest["model"]["adapter"]["id"] in line
    assert "ft1" in line and str(adapters[0]) in line
    assert "none" in adapter_line({**manifest, "model": {k: v for k, v in manifest["model"].items()
                                                          if k != "adapter"}})
    assert search_cli.main([str(layout.root), "a clip", "-k", "1", "inference.device=cpu"]) == 0
    out = capsys.readouterr().out
    assert line in out and "RANDOM weights" in out
    assert search_cli.main([str(layout.root), "a clip", "-k", "1", "--json", "inference.device=cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["adapter"]["name"] == "ft1"
    moved = shutil.copy(adapters[0], tmp_path / "moved.safetensors")
    assert search_cli.main([str(layout.root), "a clip", "-k", "1", f"model.adapter={moved}",
                            "inference.device=cpu"]) == 0
    assert f"ft1, {moved})" in capsys.readouterr().out  # the file it was loaded from
