"""The ``faiss`` section of ``tomeray index`` (``configs/index.yaml``), in a module of its own so
that FAISS builds (and their benchmark) do not import the encoder stack."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FaissConfig"]


@dataclass
class FaissConfig:
    factory: str = "flat"  # preset (flat, ivf, hnsw, ivfpq) or a FAISS factory string
    train_size: int | None = None  # training sample (None: 64 per IVF list / PQ code word, at most N)
    use_gpu: str = "auto"  # train (k-means) on a GPU: auto | always | never
    retrain: bool = False  # train again from a fresh sample and re-add every vector
    retrain_growth: float = 10.0  # ... also when N > this x the vectors the training sampled (0: never)
    workers: int | None = None  # Ray tasks encoding at once (None: one per CPU when Ray runs; 0: none)
    group_rows: int = 100_000  # rows read and encoded at once: bounds the build's memory
    ondisk: str = "auto"  # IVF lists in an .ivfdata file: auto (index > half the free memory), always, never
    seed: int = 0  # of the training sample
    target_recall: float = 0.95  # search settings tuned to reach this recall@10 (0: keep the presets')
    max_search_ms: float = 50.0  # ... at most this many ms per query (one thread); else a warning
    tune_queries: int = 1000  # held-out rows the tuning measures recall on (its margin: ~1/sqrt)

    def held_back_queries(self, n_rows: int) -> int:
        """Query rows a graph index of ``n_rows`` is tuned without: ``tune_queries``, at most a
        tenth of the corpus, so that holding them back does not thin the graph out."""
        return min(self.tune_queries, max(1, n_rows // 10))
