"""Reconstructions of search hits: the clip of an indexed row (``recon.views`` frames sampled evenly in
its ``[start_s, end_s]``) reconstructed into the output the service serves (``recon.out``).

Jobs run one at a time on a worker thread of the server process, which keeps the model loaded
between them (``pipeline.reconstruction.local``: the reconstruction job's own stages and writer).
At most ``recon.max_jobs`` are queued or running; more are refused (HTTP 429). A row's scene is
named by its id and times, so a request for a finished scene is answered at once and concurrent
requests for one row share one job.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tomeray.models.errors import InputError, one_line
from tomeray.pipeline.core.config import load_config
from tomeray.pipeline.reconstruction.config import ReconConfig
from tomeray.pipeline.reconstruction.layout import ReconLayout
from tomeray.pipeline.service.config import ScenesConfig
from tomeray.pipeline.service.scenes import SceneNotFound, SceneStore

__all__ = ["HitJob", "HitJobs", "TooManyJobs", "hit_recon_config", "hit_scene_name"]

log = logging.getLogger(__name__)

KEPT_JOBS = 1000  # finished jobs remembered for status requests


class TooManyJobs(InputError):
    """``recon.max_jobs`` reconstructions are queued or running already (HTTP 429)."""


def hit_scene_name(video_id: int, start_s: float, end_s: float) -> str:
    return f"{video_id}_{start_s:.2f}-{end_s:.2f}s"


def hit_recon_config(cfg: ScenesConfig) -> ReconConfig:
    """The reconstruction settings of hit jobs: ``tomeray reconstruct``'s defaults with the model
    of ``recon.model`` and ``recon.views`` frames per clip."""
    recon = load_config(ReconConfig, "reconstruct", [])
    recon.model = cfg.recon.model
    recon.video.num_frames = cfg.recon.views
    recon.views.max_views = max(recon.views.max_views, cfg.recon.views)
    recon.ray.progress = False
    return recon


@dataclass
class HitJob:
    id: str
    scene: str
    video_id: str
    status: str = "queued"  # queued | running | done | failed
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    def public(self) -> dict:
        out = {"job": self.id, "status": self.status, "scene": self.scene, "video_id": self.video_id,
               "error": self.error, "url": f"/api/reconstructions/{self.id}"}
        if self.finished is not None and self.started is not None:
            out["seconds"] = round(self.finished - self.started, 3)
        if self.status == "done":
            out["viewer_url"] = f"/scenes/{quote(self.scene, safe='')}"
        return out


class HitJobs:
    """The hit reconstructions of one server (see the module docstring)."""

    def __init__(self, out: str | Path, cfg: ScenesConfig, store: SceneStore):
        self.out, self.cfg, self.store = Path(out), cfg, store
        self.recon_cfg = hit_recon_config(cfg)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tomeray-recon")
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, HitJob] = OrderedDict()
        self._by_scene: dict[str, HitJob] = {}
        self._reconstructor = None
        if ReconLayout(self.out).exists():
            store.add(self.out)

    def submit(self, video_id: int, path: str, start_s: float, end_s: float) -> tuple[HitJob, bool]:
        """``(job, new)``: the job of this row's clip (a finished one when it was reconstructed)."""
        scene = hit_scene_name(video_id, start_s, end_s)
        with self._lock:
            job = self._by_scene.get(scene)
            if job is not None and job.status != "failed":
                return job, False
            layout = ReconLayout(self.out)
            if layout.exists() and scene in layout.finished_scenes():
                now = time.time()
                done = HitJob(uuid.uuid4().hex, scene, str(video_id), "done", None, now, now, now)
                return self._add(done), False
            active = sum(j.status in ("queued", "running") for j in self._jobs.values())
            if active >= self.cfg.recon.max_jobs:
                raise TooManyJobs(f"{active} reconstruction(s) are queued or running (recon.max_jobs = "
                                  f"{self.cfg.recon.max_jobs}); try again when one is done")
            job = self._add(HitJob(uuid.uuid4().hex, scene, str(video_id)))
        spec = {"scene": scene, "video": path, "window_s": [float(start_s), float(end_s)],
                "root": str(Path(path).parent), "input": f"video {video_id}"}
        self._pool.submit(self._run, job, spec)
        return job, True

    def _add(self, job: HitJob) -> HitJob:
        self._jobs[job.id] = job
        self._by_scene[job.scene] = job
        while len(self._jobs) > KEPT_JOBS:
            old = next((j for j in self._jobs.values() if j.status in ("done", "failed")), None)
            if old is None:
                break
            del self._jobs[old.id]
            if self._by_scene.get(old.scene) is old:
                del self._by_scene[old.scene]
        return job

    def _run(self, job: HitJob, spec: dict) -> None:
        job.status, job.started = "running", time.time()
        try:
            if self._reconstructor is None:  # the model loads once, on the first job
                from tomeray.pipeline.reconstruction.local import LocalReconstructor

                self._reconstructor = LocalReconstructor(str(self.out), self.recon_cfg)
                self.store.add(self.out)
            self._reconstructor.reconstruct(spec)
            job.status = "done"
        except Exception as e:  # noqa: BLE001 - a failed reconstruction is a failed job, not a dead server
            log.warning("reconstruction of %s failed: %s", job.scene, one_line(e))
            job.status, job.error = "failed", one_line(e)
        job.finished = time.time()

    def get(self, job_id: str) -> HitJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise SceneNotFound(f"no reconstruction job {job_id[:40]!r} (jobs are kept while the server "
                                "runs)")
        return job

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
