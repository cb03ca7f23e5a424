"""The application of ``tomeray serve``: the search service's (``pipeline.video.serve.app``) over the
served indexes, if any, plus the served reconstructions and the viewer (``.scene_routes``), and the
reconstruction of search hits (``.hit_routes``) when both are there."""

from __future__ import annotations

import os

from fastapi import FastAPI
from starlette.responses import RedirectResponse
from tomeray.pipeline.service.config import ScenesConfig
from tomeray.pipeline.service.scene_routes import add_scene_routes
from tomeray.pipeline.service.scenes import SceneStore
from tomeray.pipeline.video.serve.app import create_app
from tomeray.pipeline.video.serve.service import SearchService

__all__ = ["create_service_app"]


def create_service_app(service: SearchService | None, store: SceneStore, cfg: ScenesConfig, *,
                       jobs=None, token: str | None = None, cors_origins: list[str] | None = None) -> FastAPI:
    app = create_app(service, token=token, cors_origins=cors_origins)
    add_scene_routes(app, store, cfg)
    if service is None:  # reconstructions only: the scenes are the home page
        @app.get("/", include_in_schema=False)
        async def home():
            return RedirectResponse("/scenes")

        @app.get("/api/health", tags=["service"], summary="Liveness: the service is up")
        async def health():
            return {"status": "ok", "indexes": 0, "scenes": len(store.scenes()), "pid": os.getpid()}
    if jobs is not None and service is not None:
        from tomeray.pipeline.service.hit_routes import add_hit_routes

        add_hit_routes(app, service, jobs)
    return app
