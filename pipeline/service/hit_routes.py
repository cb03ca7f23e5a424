"""Routes of 3D from a search hit: ``POST /api/videos/{id}/reconstruct`` (202 with a job, or 200 with
the finished one) and ``GET /api/reconstructions/{job}`` (``queued | running | done | failed``, the
error of a failed job, the viewer URL of a done one). See :mod:`.hit_jobs`."""

# No "from __future__ import annotations": FastAPI reads the route signatures at runtime.

import math

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from tomeray.pipeline.service.hit_jobs import HitJobs, TooManyJobs
from tomeray.pipeline.service.scenes import SceneNotFound
from tomeray.pipeline.video.serve.routes import parse_video_id
from tomeray.pipeline.video.serve.service import SearchService

__all__ = ["add_hit_routes"]


def _window(row) -> tuple[float, float]:
    start = row.start_s if row.start_s is not None and math.isfinite(row.start_s) else 0.0
    end = row.end_s if row.end_s is not None and math.isfinite(row.end_s) else row.duration_s
    if end is None or not math.isfinite(end) or end <= start:
        raise HTTPException(400, "this row has no time window to reconstruct")
    return float(start), float(end)


def add_hit_routes(app: FastAPI, service: SearchService, jobs: HitJobs) -> None:
    app.state.hit_jobs = jobs

    @app.post("/api/videos/{video_id}/reconstruct", tags=["scenes"], status_code=202,
              summary="Reconstruct the row's clip in 3D (a job; GET its url until done)")
    async def reconstruct(video_id: str):
        vid = parse_video_id(video_id)
        _, row = service.find(vid)
        path = (await run_in_threadpool(app.state.media.media_path, vid))[0]  # the served file, checked
        try:
            job, new = jobs.submit(vid, path, *_window(row))
        except TooManyJobs as e:
            raise HTTPException(429, str(e), headers={"Retry-After": "10"}) from None
        return JSONResponse(job.public(), status_code=202 if new else 200)

    @app.get("/api/reconstructions/{job_id}", tags=["scenes"],
             summary="A reconstruction job: queued | running | done (viewer_url) | failed (error)")
    async def reconstruction(job_id: str):
        try:
            return jobs.get(job_id).public()
        except SceneNotFound as e:
            raise HTTPException(404, str(e)) from None
