"""The FAISS index of an index directory, kept up to date with its Parquet shards.

    scan the shards (ids only) -> train once, on a sample -> encode the rows the index lacks, one
    group of shards at a time (in this process or in parallel Ray tasks) -> merge them into the
    previous index (in memory, or into on-disk inverted lists) -> swap the file atomically

* Train once: the trained parts (coarse quantizer, PQ / SQ codebooks) are kept next to the index
  as an empty index, ``index.trained-<fingerprint>.faiss``, with what they were trained on
  (``.json``: ``trained_on`` vectors sampled from ``sampled_from``). A rerun encodes only rows
  the index lacks; rows whose shard is newer than the last build for an id already indexed
  (a re-embedded input) are removed and added again; ids no longer in any shard are removed.
* Retraining (everything re-added) happens only when asked (``faiss.retrain=true``), when the
  index type changes, when the index holds more than ``faiss.retrain_growth`` times the vectors
  it was sampled from, or when no trained parts match the index; the reason is logged and
  recorded in the manifest (``faiss.build``).
* Memory: the driver holds one group of shards (``faiss.group_rows`` rows) plus the index it
  merges; with on-disk inverted lists (``faiss.ondisk``) only the small parts of the index.
* Faults: every file is written under a new name and ``index.faiss`` is replaced last, so a
  killed build leaves the previous index usable; the next run cleans up and finishes the job.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
from tomeray.models.errors import ConfigError, InputError, TomerayError
from tomeray.models.host import host_available_memory
from tomeray.pipeline.core.atomic import atomic_write_json
from tomeray.pipeline.video.faiss_config import FaissConfig
from tomeray.pipeline.video.faiss_delta import (
    DELTA_SHARE,
    current_delta,
    delta_files,
    delta_path,
    extend_delta,
    find_delta,
    join_delta,
    takes_delta,
)
from tomeray.pipeline.video.faiss_index import (
    METRICS,
    default_train_size,
    deserialize_index,
    estimated_bytes_per_vector,
    ids_digest,
    index_ids,
    inner_index,
    ivf_or_none,
    load_index,
    metric_name,
    mmap_flag,
    new_index,
    resolve_factory,
    save_index,
    search_defaults,
    serialize_index,
    train_index,
    trained_fingerprint,
)
from tomeray.pipeline.video.faiss_merge import IndexMerger, check_mergeable, encode_part, ondisk_file
from tomeray.pipeline.video.faiss_rows import ShardRows, read_rows, row_groups, sample_rows, scan_shards
from tomeray.pipeline.video.faiss_tune import GroundTruth, apply_search_params, tune_build, tuning_path

log = logging.getLogger(__name__)

__all__ = ["faiss_entry", "remove_faiss_files", "trained_paths", "update_faiss"]

ONDISK_CHOICES = ("auto", "always", "never")
MEMORY_SHARE = 0.5  # on-disk lists when the index would take more than this share of free memory


def faiss_entry(manifest: dict) -> dict | None:
    """The manifest's FAISS record (``faiss``), or the one older manifests kept in top-level
    ``faiss_factory`` / ``faiss_spec`` keys; None when the index was built without FAISS."""
    if "faiss_factory" in manifest and not manifest.get("faiss_factory"):
        return None
    entry = manifest.get("faiss")
    if isinstance(entry, dict):
        return entry
    if manifest.get("faiss_factory"):
        return {"factory": manifest["faiss_factory"], "spec": manifest.get("faiss_spec"), "ondisk": None}
    return None


# --------------------------------------------------------------------------------------------
# files next to the index


def trained_paths(faiss_path: Path, fingerprint: str) -> tuple[Path, Path]:
    stem = f"{faiss_path.stem}.trained-{fingerprint}"
    return faiss_path.parent / f"{stem}.faiss", faiss_path.parent / f"{stem}.json"


def _save_trained(faiss_path: Path, template, record: dict) -> dict:
    fingerprint = trained_fingerprint(template)
    index_file, record_file = trained_paths(faiss_path, fingerprint)
    record = {**record, "trained_fingerprint": fingerprint}
    save_index(template, index_file)
    atomic_write_json(record_file, record)
    return record


def _load_trained(faiss_path: Path, fingerprint: str):
    index_file, record_file = trained_paths(faiss_path, fingerprint)
    if not (index_file.is_file() and record_file.is_file()):
        return None, None
    try:
        return load_index(index_file), json.loads(record_file.read_text(encoding="utf-8"))
    except (TomerayError, OSError, ValueError):
        return None, None


def _clean_up(faiss_path: Path, fingerprint: str | None, ivfdata: str | None, delta: str | None) -> None:
    """Remove trained parts, on-disk lists and delta files the current index does not use (older
    builds', a killed build's)."""
    folder = faiss_path.parent
    for p in delta_files(faiss_path):
        if p.name != delta:  # (a delta of another base would be ignored anyway)
            p.unlink(missing_ok=True)
    for p in folder.glob(f"{faiss_path.stem}.trained-*"):
        if fingerprint is None or f".trained-{fingerprint}." not in p.name:
            p.unlink(missing_ok=True)
    for p in folder.glob(f"{faiss_path.stem}-*.ivfdata"):
        if p.name != ivfdata:
            p.unlink(missing_ok=True)
    for p in folder.glob(f".{faiss_path.stem}-*.tmp"):  # parts a killed on-disk merge left
        p.unlink(missing_ok=True)


def remove_faiss_files(faiss_path: Path) -> None:
    """Delete the index file and its companions (an index built without FAISS has none)."""
    faiss_path.unlink(missing_ok=True)
    tuning_path(faiss_path).unlink(missing_ok=True)
    _clean_up(faiss_path, None, None, None)


def _file_bytes(faiss_path: Path, *companions: str | None) -> int:
    return faiss_path.stat().st_size + sum((faiss_path.parent / c).stat().st_size for c in companions if c)


# --------------------------------------------------------------------------------------------
# deciding what to do


def _same_spec(a, b) -> bool:
    return str(a or "").strip().lower() == str(b or "").strip().lower()


def _check_matches(index, what: str, dim: int, metric: str) -> None:
    if index.d != dim or index.metric_type != METRICS[metric]:
        raise InputError(
            f"{what} was trained for {index.d}-d vectors with metric {metric_name(index.metric_type)}, "
            f"but the embeddings are {dim}-d with metric {metric}: its trained parts cannot encode "
            "them; rerun with faiss.retrain=true to train new ones (or delete it)")


def _previous(faiss_path: Path, cfg: FaissConfig, dim: int, metric: str, n_rows: int, mapped: str | None
              ) -> tuple[object, object, dict | None, str | None]:
    """(previous index, its trained template, their record, reason to retrain or None);
    ``mapped``: the previous index's factory when it may be read memory-mapped (an add that goes
    to a delta file never reads the base's lists)."""
    if cfg.retrain:
        return None, None, None, "asked (faiss.retrain=true)"
    if not faiss_path.is_file():
        return None, None, None, "no trained index yet"
    try:
        index = load_index(faiss_path, mmap=True, factory=mapped) if mapped else load_index(faiss_path,
                                                                                           ondisk=True)
    except TomerayError as e:
        log.warning("%s; rebuilding it", e)
        return None, None, None, "the previous FAISS file is unreadable"
    _check_matches(index, f"FAISS index {faiss_path}", dim, metric)
    template, record = _load_trained(faiss_path, trained_fingerprint(index))
    if template is None:
        return None, None, None, ("no trained parts are recorded for the index (made by an older tomeray, "
                                  "or their file was removed)")
    _check_matches(template, "the trained parts of the FAISS index", dim, metric)
    if not _same_spec(record.get("spec"), cfg.factory):
        return None, None, None, f"the index type changed from {record.get('spec')!r} to {cfg.factory!r}"
    sampled_from = int(record.get("sampled_from") or 0)
    if cfg.retrain_growth and sampled_from and n_rows > cfg.retrain_growth * sampled_from:
        return None, None, None, (f"the index grew to {n_rows} vectors, more than faiss.retrain_growth="
                                  f"{cfg.retrain_growth:g} x the {sampled_from} its trained parts were "
                                  "sampled from")
    if record.get("factory") == "Flat" and resolve_factory(cfg.factory, n_rows, dim) != "Flat":
        return None, None, None, f"the {cfg.factory!r} preset has enough vectors to train now ({n_rows})"
    return index, template, record, None


def _train(shards: list[ShardRows], cfg: FaissConfig, dim: int, metric: str, n_rows: int, workers: int):
    """A freshly trained, empty template and its record."""
    template, factory = new_index(cfg.factory, n_rows, dim, metric)
    size = 0
    node = "local"
    held_out = None  # queries for tuning: a share of the training sample (read already)
    if not template.is_trained:
        size = min(n_rows, cfg.train_size or default_train_size(template))
        if size < 1:
            raise ConfigError(f"faiss.train_size must be positive, got {cfg.train_size}")
        sample, sample_ids = read_rows(sample_rows(shards, size, cfg.seed), dim, metric)
        pick = np.random.default_rng(cfg.seed + 1).permutation(len(sample))[:cfg.tune_queries]
        held_out = GroundTruth(sample[pick], sample_ids[pick])
        if workers:
            from tomeray.pipeline.video.faiss_ray import train_on_worker

            template, node = train_on_worker(template, sample, factory, cfg.use_gpu)
        else:
            train_index(template, sample, factory, cfg.use_gpu)
        del sample
    record = {"spec": cfg.factory, "factory": factory, "dim": dim, "metric": metric, "trained_on": size,
              "sampled_from": n_rows if size else 0, "trained_node": node}
    return template, record, held_out


def _wants_ondisk(cfg: FaissConfig, template, previous, n_rows: int) -> bool:
    choice = str(cfg.ondisk).lower()
    if choice not in ONDISK_CHOICES:
        raise ConfigError(f"faiss.ondisk must be one of {', '.join(ONDISK_CHOICES)}, got {cfg.ondisk!r}")
    ivf = ivf_or_none(template) is not None
    if choice == "always" and not ivf:
        raise ConfigError("faiss.ondisk=always needs an IVF index (ivf, ivfpq or an IVF factory string); "
                          "flat and HNSW indexes are served from disk by memory-mapping instead")
    if choice != "auto":
        return choice == "always"
    if not ivf:
        return False
    if previous is not None and ondisk_file(previous):
        return True
    return estimated_bytes_per_vector(template) * n_rows > MEMORY_SHARE * host_available_memory()


# --------------------------------------------------------------------------------------------
# the build


def update_faiss(faiss_path: str | Path, shards: list[Path], cfg: FaissConfig, *, dim: int,
                 metric: str = "ip", prior: dict | None = None,
                 before_ondisk_swap: Callable[[], None] | None = None) -> dict:
    """Bring the FAISS index at ``faiss_path`` up to date with ``shards`` (see the module doc);
    returns the manifest's ``faiss`` record. ``prior``: the record of the previous build.
    ``before_ondisk_swap`` runs before an index with on-disk lists replaces the file (the
    manifest must say so first: searchers read such an index differently)."""
    started = time.perf_counter()
    faiss_path = Path(faiss_path)
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if cfg.group_rows < 1:
        raise ConfigError(f"faiss.group_rows must be positive, got {cfg.group_rows}")
    selection = scan_shards(list(shards))
    all_ids = np.concatenate([s.ids for s in selection]) if selection else np.zeros(0, np.int64)
    latest = selection[-1].path.name if selection else None
    mapped = _mappable(prior)
    base, template, record, reason = _previous(faiss_path, cfg, dim, metric, len(all_ids), mapped)
    if base is None:
        mode = "trained" if reason == "no trained index yet" else "retrained"
        log.info("training the FAISS index: %s", reason)
        train_start = time.perf_counter()
        template, record, truth = _train(selection, cfg, dim, metric, len(all_ids),
                                         _workers(cfg, selection, None))
        train_s = time.perf_counter() - train_start
        record = _save_trained(faiss_path, template, record)
        base = load_index(trained_paths(faiss_path, record["trained_fingerprint"])[0])  # an empty copy
        to_add, drop = selection, np.zeros(0, np.int64)
        if cfg.target_recall and isinstance(inner_index(template), faiss.IndexHNSW):  # queries held back
            held = sample_rows(selection, cfg.held_back_queries(len(all_ids)), cfg.seed + 1)
            truth = GroundTruth(*read_rows(held, dim, metric))
    else:
        mode, train_s = "incremental", 0.0
        to_add, drop = _changes(base, selection, all_ids, (prior or {}).get("covered_through"))
        truth = GroundTruth.load(tuning_path(faiss_path), ids_digest(base))  # kept exact as rows change
        if truth is not None:
            truth.drop(drop)
    check_mergeable(template)
    n_add = sum(len(s.rows) for s in to_add)
    build = {"mode": mode, "reason": reason, "added": n_add, "removed": int(len(drop)), "workers": 0,
             "groups": 0, "nodes": {}, "train_s": round(train_s, 3)}
    if mode == "incremental" and n_add == 0 and len(drop) == 0:
        delta = current_delta(faiss_path, record["factory"])
        _clean_up(faiss_path, record["trained_fingerprint"], ondisk_file(base), delta)
        return _entry(faiss_path, base, record, latest, ondisk_file(base), {**build, "mode": "unchanged"},
                      started, (prior or {}).get("tuning"), delta)
    ondisk = _wants_ondisk(cfg, template, base, len(all_ids))
    held_back = mode != "incremental" and truth is not None and isinstance(inner_index(template),
                                                                            faiss.IndexHNSW)

    def read(group):  # every row the build reads is scored against the tuning queries too
        vectors, ids = read_rows(group, dim, metric)
        if truth is not None:
            if held_back:
                keep = ~np.isin(ids, truth.query_ids)
                vectors, ids = vectors[keep], ids[keep]
            truth.update(vectors, ids)
        return vectors, ids

    def full_truth() -> GroundTruth:
        return _full_truth(selection, cfg, dim, metric)

    if mode == "incremental" and mapped and not ondisk and not len(drop):
        added = _add_to_delta(faiss_path, mapped, template, record, to_add, read, truth, full_truth, cfg,
                              build, prior, latest, started)
        if added is not None:
            return added
    if mapped and mode == "incremental":  # the full path reads the lists (and folds in any delta)
        del base
        base = load_index(faiss_path, ondisk=True)
    ivfdata = faiss_path.parent / f"{faiss_path.stem}-{time.time_ns():x}.ivfdata" if ondisk else None
    merger = IndexMerger(base, template, drop, ivfdata)
    del base
    for part in _encoded(template, to_add, read, cfg, build):
        merger.add(part)
        del part
    index = merger.finish()
    del merger
    tuning = tune_build(faiss_path, index, truth, cfg, full_truth, held_back,
                        (prior or {}).get("params") if mode == "incremental" else None)
    if ondisk and before_ondisk_swap is not None:
        before_ondisk_swap()
    save_index(index, faiss_path)
    _clean_up(faiss_path, record["trained_fingerprint"], ivfdata.name if ivfdata else None, None)
    entry = _entry(faiss_path, index, record, latest, ivfdata.name if ivfdata else None, build, started,
                   tuning, None)
    log.info("FAISS index %s: %s, %d vectors added, %d removed, %d in all (%.1f s)", record["factory"],
             mode, n_add, len(drop), entry["ntotal"], entry["build"]["seconds"])
    return entry


def _mappable(prior: dict | None) -> str | None:
    """The factory of the previous index when an add may go to a delta file (a plain IVF index
    with lists in memory, :func:`faiss_delta.takes_delta`), else None."""
    factory = str((prior or {}).get("factory") or "")
    if not factory or (prior or {}).get("ondisk") or mmap_flag(factory) != faiss.IO_FLAG_MMAP:
        return None
    return factory


def _add_to_delta(faiss_path: Path, factory: str, template, record: dict, to_add: list[ShardRows],
                  read: Callable, truth: GroundTruth | None, full_truth: Callable[[], GroundTruth],
                  cfg: FaissConfig, build: dict, prior: dict | None, latest: str | None,
                  started: float) -> dict | None:
    """Add the rows to the delta file of the index (see :mod:`.faiss_delta`) and return the
    manifest's record; None when the delta would outgrow ``DELTA_SHARE`` of the base (or the
    index cannot take one): the caller rewrites the whole index instead."""
    base = load_index(faiss_path, mmap=True, factory=factory, delta=False)
    if not takes_delta(base):
        return None
    old = find_delta(faiss_path, base)
    if old:
        delta = load_index(old, delta=False)
    else:  # a first delta starts from the base's search settings, as a rewrite would keep them
        delta = deserialize_index(serialize_index(template))
        apply_search_params(delta, search_defaults(base))
    if delta.ntotal + build["added"] > DELTA_SHARE * base.ntotal:
        return None
    for part in _encoded(template, to_add, read, cfg, build):
        extend_delta(delta, part, base.ntotal)
    path = delta_path(faiss_path, base)
    index = join_delta(base, delta, mapped=True)
    tuning = tune_build(faiss_path, index, truth, cfg, full_truth, floor=(prior or {}).get("params"))
    apply_search_params(delta, search_defaults(index))
    save_index(delta, path)
    _clean_up(faiss_path, record["trained_fingerprint"], None, path.name)
    build["delta_rows"] = int(delta.ntotal)
    entry = _entry(faiss_path, index, record, latest, None, build, started, tuning, path.name)
    log.info("FAISS index %s: %d vectors added to its delta file (%d rows, %d in all; %.1f s)",
             record["factory"], build["added"], delta.ntotal, entry["ntotal"], entry["build"]["seconds"])
    return entry


def _changes(index, selection: list[ShardRows], all_ids: np.ndarray, covered: str | None
             ) -> tuple[list[ShardRows], np.ndarray]:
    """(rows to add, ids to remove) to bring ``index`` up to date: rows it lacks; rows of shards
    newer than ``covered`` (the last shard of its build) for ids it has, which are replaced; and
    ids no shard holds any more."""
    indexed = index_ids(index)
    # one membership test for all rows (each np.isin sorts ``indexed``), then split per shard
    fresh_all = np.split(~np.isin(all_ids, indexed), np.cumsum([len(s.ids) for s in selection])[:-1])
    to_add, replaced = [], []
    for s, fresh in zip(selection, fresh_all):
        if covered is not None and s.path.name > covered:
            replaced.append(s.ids[~fresh])  # re-embedded since the last build: replaced by id
            fresh[:] = True
        to_add.append(ShardRows(s.path, s.rows[fresh], s.ids[fresh]))
    return to_add, np.concatenate([indexed[~np.isin(indexed, all_ids)], *replaced]).astype(np.int64)


def _workers(cfg: FaissConfig, selection: list[ShardRows], template) -> int:
    """Ray tasks for this build (0: this process). HNSW graphs are built in this process."""
    from tomeray.pipeline.video.faiss_ray import ray_workers

    if template is not None and isinstance(inner_index(template), faiss.IndexHNSW):
        return 0
    return ray_workers(cfg.workers, len(row_groups(selection, cfg.group_rows)))


def _full_truth(selection: list[ShardRows], cfg: FaissConfig, dim: int, metric: str) -> GroundTruth:
    """Held-out queries and their exact neighbours over every row (one pass over the shards)."""
    truth = GroundTruth(*read_rows(sample_rows(selection, cfg.tune_queries, cfg.seed + 1), dim, metric))
    for group in row_groups(selection, cfg.group_rows):
        truth.update(*read_rows(group, dim, metric))
    return truth


def _encoded(template, to_add: list[ShardRows], read: Callable, cfg: FaissConfig, build: dict):
    """The rows to add as parts encoded with ``template``, a group at a time (``read`` reads one),
    in Ray tasks where there are workers; ``build`` records the workers, groups and nodes."""
    groups = row_groups(to_add, cfg.group_rows)
    build.update(workers=_workers(cfg, to_add, template), groups=len(groups))
    if build["workers"]:
        from tomeray.pipeline.video.faiss_ray import encode_on_workers

        parts = encode_on_workers(template, groups, read, build["workers"])
    else:
        parts = ((encode_part(template, *read(group)), "local") for group in groups)
    for part, node in parts:
        build["nodes"][node] = build["nodes"].get(node, 0) + 1
        yield part


def _entry(faiss_path: Path, index, record: dict, latest: str | None, ivfdata: str | None, build: dict,
           started: float, tuning: dict | None, delta: str | None) -> dict:
    """The manifest's ``faiss`` record of a built index (``delta``: its delta file, if any)."""
    ntotal = int(index.ntotal)
    size = _file_bytes(faiss_path, ivfdata, delta)
    entry = {k: record.get(k) for k in ("spec", "factory", "dim", "metric", "trained_on", "sampled_from",
                                        "trained_fingerprint")}
    entry.update(ntotal=ntotal, index_bytes=size,
                 bytes_per_vector=round(size / ntotal, 1) if ntotal else None, ondisk=ivfdata,
                 mmap=_mapped_part(entry["factory"], ivfdata), params=search_defaults(index),
                 covered_through=latest, tuning=tuning, delta=delta,
                 build={**build, "seconds": round(time.perf_counter() - started, 3)})
    return entry


def _mapped_part(factory: str, ivfdata: str | None) -> str:
    """What a memory-mapped searcher maps (``faiss_index.load_index``)."""
    if ivfdata:
        return "inverted lists (on disk)"
    return "inverted lists" if mmap_flag(factory) == faiss.IO_FLAG_MMAP else "stored vectors / codes"
