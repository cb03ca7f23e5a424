"""Writes each scene as its result arrives on the driver (layout: ``pipeline.reconstruction.layout``):
its parts, its exports, then its completion record, the write that makes it finished."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from tomeray.pipeline.core.atomic import utc_now
from tomeray.pipeline.core.errors_table import error_row
from tomeray.pipeline.core.timing import CostTotals
from tomeray.pipeline.reconstruction.config import ReconConfig
from tomeray.pipeline.reconstruction.exports import write_exports
from tomeray.pipeline.reconstruction.layout import ReconLayout, cameras_table, points_table
from tomeray.pipeline.reconstruction.results import SceneCameras, ScenePoints
from tomeray.pipeline.reconstruction.thumbnails import write_view_thumbnails

log = logging.getLogger(__name__)

__all__ = ["SceneWriter", "scene_errors"]


def scene_errors(spec: dict, rows: list[dict]) -> list[dict]:
    """Error-table rows of a scene from the stages' rows (``path``, ``stage``, ``error_type``,
    ``message``; an empty path means the scene as a whole)."""
    root = spec.get("video") or spec.get("root") or ""
    return [error_row(spec["scene"], r["stage"], r["error_type"], r["message"], input=spec.get("input", ""),
                      path=r.get("path") or root) for r in rows]


class SceneWriter:
    """Collects the reconstructed scene rows (see ``pipeline.reconstruction.graph``) into ``layout``."""

    def __init__(self, layout: ReconLayout, cfg: ReconConfig, specs: dict[str, dict]):
        self.layout, self.cfg, self.specs = layout, cfg, specs
        self.records: dict[str, dict] = {}
        self.failed: set[str] = set()
        self.errors: list[dict] = []
        self.seen: set[str] = set()
        self.load_nodes: dict[str, int] = {}
        self.model_nodes: dict[str, int] = {}
        self.costs = CostTotals(("load", "model"))  # the stages' cost columns (pipeline.core.timing)
        self.first_row_at = 0.0  # epoch seconds when the first scene reached the driver

    def add(self, batch: dict[str, np.ndarray]) -> None:
        self.first_row_at = self.first_row_at or time.time()
        self.costs.add(batch)
        for i in range(len(batch["scene"])):
            self._add_one({k: v[i] for k, v in batch.items()})

    def fail(self, scene: str, errors: list[dict]) -> None:
        """Record a scene that failed as a whole (its latest attempt's errors replace older ones)."""
        self.failed.add(scene)
        self.errors.extend(errors)
        self.layout.write_scene_errors(scene, errors)

    def _add_one(self, row: dict) -> None:
        scene = str(row["scene"])
        spec = self.specs[scene]
        self.seen.add(scene)
        for key, counter in (("load_node", self.load_nodes), ("model_node", self.model_nodes)):
            counter[str(row[key])] = counter.get(str(row[key]), 0) + 1
        errors = scene_errors(spec, json.loads(str(row["errors"])))
        stats = json.loads(str(row["stats"]))
        if str(row["status"]) != "ok":
            self.fail(scene, errors)
            log.warning("scene %s failed: %s", scene, errors[-1]["message"] if errors else "?")
            return
        self.errors.extend(errors)
        cams = SceneCameras(
            scene, np.asarray(row["frame_idx"], np.int32), json.loads(str(row["image_path"])),
            np.asarray(row["width"], np.int32), np.asarray(row["height"], np.int32),
            np.asarray(row["extrinsic"], np.float64), np.asarray(row["intrinsic"], np.float64))
        pts = ScenePoints(np.asarray(row["xyz"], np.float32), np.asarray(row["rgb"], np.uint8),
                          np.asarray(row["confidence"], np.float32), np.asarray(row["point_frame"], np.int32))
        self.layout.write_scene_parts(
            scene, cameras_table(scene, cams.frame_idx, cams.image_path, cams.width, cams.height,
                                 cams.extrinsic, cams.intrinsic),
            points_table(pts.xyz, pts.rgb, pts.confidence, pts.frame_idx), errors)
        write_view_thumbnails(self.layout, scene, cams)
        exports = write_exports(self.layout, scene, self.cfg.export, cams, pts, spec)
        record = {**stats, "image_errors": len(errors), "exports": exports, "finished": utc_now(),
                  "source": spec.get("video") or spec.get("root")}
        self.layout.write_record(scene, record)  # last: the scene is finished
        self.records[scene] = record
        log.info("scene %s: %d views, %d points (%.1f s model)", scene, record["views"], record["points"],
                 record.get("model_seconds", 0.0))
