"""Text queries at int8 and through the query cache (pipeline.video.query_text), on the index of the
opencv-doc videos the service tests use (random ViT-S-32 weights: fidelity of the arithmetic, not
of retrieval quality): per query, the cosine between int8 and fp32 text embeddings and the top-10
overlap of their results; a cached query returns the very vector it computed, and the cache keeps
the most recently used entries."""

from __future__ import annotations

import numpy as np
import pytest
from tomeray.models.errors import ConfigError
from tomeray.pipeline.video.query_text import QueryTextEncoder
from tomeray.pipeline.video.search import VideoSearcher

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

QUERIES = ["people walking", "a tree in the wind", "a man talking", "an animated character", "a busy street",
           "leaves moving", "a crowd at night", "a cartoon face close up", "two people meet", "a green tree"]


@pytest.mark.parametrize("precision", ["int8", "int8-all"])
def test_int8_text_queries_match_fp32_on_the_opencv_index(served_index, precision):
    fp32 = VideoSearcher(served_index, device="cpu")
    int8 = VideoSearcher(served_index, device="cpu", text_precision=precision)
    int8.use_encoder(fp32.encoder)  # the same weights; only the text tower's arithmetic differs
    a, b = fp32.encode_text(QUERIES), int8.encode_text(QUERIES)
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.99, cosine
    assert not np.array_equal(a, b)  # the int8 tower really ran
    k = min(10, len(fp32))
    for query in QUERIES:
        top_fp32 = {r.video_id for r in fp32.search(query, k=k)}
        top_int8 = {r.video_id for r in int8.search(query, k=k)}
        assert len(top_fp32 & top_int8) / k >= 0.8, query
    assert fp32.text_encoder.stats()["text_precision"] == "fp32"
    assert int8.text_encoder.stats()["text_precision"] == precision


def test_the_query_cache_returns_what_it_computed_and_drops_the_oldest(served_index):
    searcher = VideoSearcher(served_index, device="cpu", cache_size=2)
    first = searcher.encode_text(["a tree", "people"])
    assert searcher.text_encoder.stats() == {"text_precision": "fp32", "cache_size": 2, "cached": 2,
                                                  "hits": 0, "misses": 2}
    again = searcher.encode_text(["people", "a tree"])
    np.testing.assert_array_equal(again, first[::-1])
    assert searcher.text_encoder.stats()["hits"] == 2
    searcher.encode_text(["a river"])  # evicts "people", the least recently used
    searcher.encode_text(["a tree"])
    stats = searcher.text_encoder.stats()
    assert stats["cached"] == 2 and stats["hits"] == 3 and stats["misses"] == 3
    searcher.encode_text(["people"])
    assert searcher.text_encoder.stats()["misses"] == 4
    uncached = VideoSearcher(served_index, device="cpu")
    uncached.use_encoder(searcher.encoder)
    assert uncached.search("people", k=3) == searcher.search("people", k=3)
    with pytest.raises(ConfigError, match="text_precision"):
        QueryTextEncoder(searcher.encoder, "int4")
    with pytest.raises(ConfigError, match="cache_size"):
        QueryTextEncoder(searcher.encoder, cache_size=-1)


def test_the_folded_text_tower_computes_what_the_lora_forward_does_and_quantises_whole():
    import torch
    from tomeray.models.clip import load_clip
    from tomeray.models.quantize import quantize_linear_int8

    text = load_clip("ViT-S-32", "none", seed=0).text
    with torch.no_grad():  # a trained-looking LoRA: its update must survive the folding
        for parts in text.tvpt.blocks:
            parts.attn.TVPt_LoRA_b.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    folded = text.folded()
    with torch.inference_mode():
        torch.testing.assert_close(folded(QUERIES), text(QUERIES), atol=1e-5, rtol=0)
        assert not torch.allclose(text(QUERIES), load_clip("ViT-S-32", "none", seed=0).text(QUERIES))
    # every projection of every block is int8 once quantised (not only the MLPs)
    quantized = quantize_linear_int8(folded)
    blocks = len(text._tower.transformer.resblocks)
    kinds = [type(m).__name__ for m in quantized.modules()]
    assert kinds.count("Linear") - kinds.count("NonDynamicallyQuantizableLinear") >= 4 * blocks
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized._tower.transformer.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.tvpt.modules())
