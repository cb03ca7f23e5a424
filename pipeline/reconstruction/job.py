"""``tomeray reconstruct``: cameras and point clouds for many scenes with VGGT on Ray Data.

    discover scenes -> skip finished ones -> load + preprocess (Ray tasks) -> VGGT (actor pool)
    -> per-scene outputs written by the driver as each scene arrives -> consolidated tables -> manifest

Scenes: :mod:`tomeray.pipeline.reconstruction.discover`. Output layout and conventions:
:mod:`tomeray.pipeline.reconstruction.layout`. Resume: a scene is finished when its completion
record is written (after all its files), so a crash loses at most the scenes in flight and a rerun
into the same ``--out`` does only the others; scenes that failed are retried. The settings that
shape results (model and weights, preprocessing, views, point filtering) are pinned in the
manifest; a rerun with different ones is refused. Exports are derived from the stored tables, so
switching ``export.ply`` / ``export.colmap`` / ``export.colmap_binary`` on for a rerun adds them
to the finished scenes too. Known intrinsics (``cameras.intrinsics``) are read and checked against
every scene before any work; their SHA-256 is pinned and the manifest names the file.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tomeray.models.errors import InputError
from tomeray.operators.worker import process_started_at
from tomeray.pipeline.core.config import load_config, save_config
from tomeray.pipeline.core.graph import worker_lost_rows
from tomeray.pipeline.core.output import new_run_id
from tomeray.pipeline.core.timing import RunFigures, run_costs, startup_timeline
from tomeray.pipeline.reconstruction.config import ReconConfig, pinned_settings, resolve_weights_id, validate
from tomeray.pipeline.reconstruction.discover import discover_scenes
from tomeray.pipeline.reconstruction.exports import write_exports
from tomeray.pipeline.reconstruction.intrinsics import load_intrinsics
from tomeray.pipeline.reconstruction.layout import ReconLayout
from tomeray.pipeline.reconstruction.writer import SceneWriter

log = logging.getLogger(__name__)

__all__ = ["ReconSummary", "finish_reconstruction", "output_header", "run_reconstruct"]

LOST_ADVICE = ", e.g. out of memory; with fewer views.max_views if it happens again"


@dataclass
class ReconSummary(RunFigures):
    reconstructed: int  # scenes finished by this run
    skipped: int  # scenes finished before this run
    failed: int  # scenes that failed in this run (see errors.parquet)
    image_errors: int  # error rows of this run (images and scenes)
    seconds: float
    weights_id: str
    views: int = 0  # views reconstructed by this run
    points: int = 0  # points kept by this run
    pipeline_s: float = 0.0
    out: str = ""
    run_id: str = ""
    first_scene_s: float = float("nan")  # run start -> first scene reconstructed (see startup)
    scenes: dict[str, dict] = field(default_factory=dict)  # this run's scene records
    failures: list[dict] = field(default_factory=list)  # this run's error rows
    load_nodes: dict[str, int] = field(default_factory=dict)
    model_nodes: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.failures else 0


def finish_reconstruction(layout: ReconLayout, manifest: dict, cfg: ReconConfig) -> dict:
    """Exports missing from finished scenes, consolidated tables, then the manifest (the last write)."""
    finished = layout.finished_scenes()
    for scene, record in finished.items():
        added = write_exports(layout, scene, cfg.export, only_missing=True)
        if added:
            exports = sorted(set(record.get("exports", [])) | set(added))
            layout.write_record(scene, {**record, "exports": exports})
    cameras, errors = layout.consolidate()
    failed = layout.scenes_with_errors() - set(finished)
    counts = {"scenes": len(finished), "failed_scenes": len(failed), "views": cameras,
              "points": int(sum(r.get("points", 0) for r in finished.values())), "errors": errors}
    return layout.finish(manifest, complete=True, counts=counts)


def output_header(cfg: ReconConfig, weights_id: str, known=None) -> dict:
    """A run's manifest header: the pinned settings (with the known intrinsics' hash) and weights."""
    settings = pinned_settings(cfg, weights_id)
    settings["cameras"] = {"intrinsics_sha256": known.sha256 if known else None}
    return {"settings": settings, "weights_id": weights_id, "complete": False,
            "intrinsics": known.manifest() if known else "predicted"}


def run_reconstruct(inputs: list[str], out: str | Path, overrides: list[str] | tuple[str, ...] = (),
                    address: str | None = None, *, config: ReconConfig | None = None,
                    scenes: list[dict] | None = None) -> ReconSummary:
    """Reconstruct every scene of ``inputs`` (or the scene specs ``scenes``, as ``discover_scenes``
    makes them) into ``out`` (created, or resumed). See the module docstring."""
    started, started_at = time.perf_counter(), time.time()
    marks = {"driver_process_at": process_started_at()}
    cfg = config if config is not None else load_config(ReconConfig, "reconstruct", list(overrides))
    validate(cfg)
    known = load_intrinsics(cfg.cameras.intrinsics) if cfg.cameras.intrinsics else None
    if not inputs and scenes is None:
        raise InputError("no inputs given: pass a scenes folder, a video or a .csv/.parquet scene list")
    specs, discover_errors = (scenes, []) if scenes is not None else discover_scenes(list(inputs), cfg)
    marks["discovered_at"] = time.time()
    if known is not None:
        known.check_scenes(specs)  # every image has its matrix, before any work
    weights_id = resolve_weights_id(cfg.model)  # fails early on missing weights
    layout = ReconLayout(out)
    manifest = layout.open(output_header(cfg, weights_id, known))
    save_config(cfg, layout.config_path)
    if weights_id.startswith("random-init"):
        log.warning("VGGT weights are RANDOM (%s): cameras and points are for smoke tests only", weights_id)

    finished = layout.finished_scenes()
    todo = [s for s in specs if s["scene"] not in finished]
    layout.write_input_errors([e for e in discover_errors if not e["scene"]])
    for scene in {e["scene"] for e in discover_errors if e["scene"] and e["scene"] not in finished}:
        layout.write_scene_errors(scene, [e for e in discover_errors if e["scene"] == scene])
    log.info("%d scene(s): %d to reconstruct, %d already finished, %d discovery error(s)",
             len(specs), len(todo), len(specs) - len(todo), len(discover_errors))

    run_id = new_run_id()
    writer = SceneWriter(layout, cfg, {s["scene"]: s for s in specs})
    pipeline_s, costs, startup, startup_cpu = 0.0, {}, {}, {}
    if todo:
        from tomeray.pipeline.core.graph import cluster_resources
        from tomeray.pipeline.core.ray_session import init_ray
        from tomeray.pipeline.reconstruction.graph import build_dataset

        init_ray(address or cfg.ray.address, num_cpus=cfg.ray.num_cpus)
        marks["ray_ready_at"] = time.time()
        cores = float(cluster_resources().get("CPU", 0.0))
        pipeline_start = time.perf_counter()
        marks["graph_started_at"], driver_cpu_s = time.time(), time.process_time()
        ds, plan = build_dataset(todo, cfg, known.actor_spec() if known else None)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            writer.add(batch)
        pipeline_s = time.perf_counter() - pipeline_start
        marks.update(first_row_at_driver=writer.first_row_at, pipeline_done_at=time.time())
        costs = run_costs(writer.costs, len(writer.seen), marks["graph_started_at"],
                          marks["pipeline_done_at"], cores, "model" if plan.on_gpu else None,
                          plan.actors if plan.on_gpu else 0,
                          steady_from=writer.costs.first.get("model_done_at"))
        startup = startup_timeline(started_at, marks, writer.costs.first)
        startup_cpu = {"driver_cpu_s": round(driver_cpu_s, 3), **writer.costs.startup_cpu()}
        expected = [{"item": s["scene"], "input": s["input"], "path": s.get("video") or s["root"]}
                    for s in todo]
        for lost in worker_lost_rows(expected, writer.seen, "reconstruct", LOST_ADVICE):
            writer.fail(lost["item"], [lost])
    finish_reconstruction(layout, manifest, cfg)
    failed_discovery = {e["item"] for e in discover_errors}
    summary = ReconSummary(
        reconstructed=len(writer.records), skipped=len(specs) - len(todo),
        failed=len(writer.failed | failed_discovery), image_errors=len(writer.errors) + len(discover_errors),
        seconds=time.perf_counter() - started, weights_id=weights_id,
        views=sum(r["views"] for r in writer.records.values()),
        points=sum(r["points"] for r in writer.records.values()), pipeline_s=pipeline_s, out=str(layout.root),
        run_id=run_id, scenes=writer.records, failures=discover_errors + writer.errors,
        load_nodes=writer.load_nodes, model_nodes=writer.model_nodes,
        first_scene_s=startup.get("model_done_at", float("nan")), startup=startup, startup_cpu=startup_cpu,
        costs=costs,
    )
    layout.write_run_record(run_id, dataclasses.asdict(summary))
    return summary
