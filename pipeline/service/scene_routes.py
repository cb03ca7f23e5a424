"""Routes of the served reconstructions and the 3D viewer:

* ``GET /api/scenes`` every served scene; ``GET /api/scenes/{scene}/cameras`` its cameras as in
  ``cameras.parquet``; ``GET /api/scenes/{scene}/points?max=N`` a seeded subsample of its points as
  binary records (``X-Points-Count``, ``X-Points-Total``, ``X-Points-Layout``: ``scenes.POINT_LAYOUT``);
  ``GET /api/scenes/{scene}/views/{frame_idx}/thumbnail`` a view's JPEG
* ``GET /scenes`` the list of scenes, ``GET /scenes/{scene}`` the viewer; ``GET /static/viewer/<file>``
  their assets (a fixed list shipped in the package, three.js among them)

Names from the URL are looked up in :class:`~.scenes.SceneStore`, never used as paths. Errors are the
service's JSON errors (404 for unknown scenes and views, 400 for a bad ``max``).
"""

# No "from __future__ import annotations": FastAPI reads the route signatures at runtime.

from importlib import resources

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response
from tomeray.pipeline.service.config import ScenesConfig
from tomeray.pipeline.service.scenes import POINT_LAYOUT, POINT_RECORD, SceneNotFound, SceneStore

__all__ = ["VIEWER_ASSETS", "add_scene_routes", "parse_count"]

VIEWER_ASSETS = {
    "viewer.js": "text/javascript; charset=utf-8", "scenes.js": "text/javascript; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
    "three/three.module.min.js": "text/javascript; charset=utf-8",
    "three/OrbitControls.js": "text/javascript; charset=utf-8",
    "three/LICENSE": "text/plain; charset=utf-8", "three/VERSION": "text/plain; charset=utf-8",
}


def _asset(name: str) -> bytes:
    return resources.files("tomeray.pipeline.service").joinpath("static", name).read_bytes()


def parse_count(text: str | None, default: int, ceiling: int, name: str = "max") -> int:
    """A positive integer from a query parameter, at most ``ceiling``; HTTP 400 otherwise."""
    if text is None or text == "":
        return default
    value = text.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 12 or int(value) < 1:
        raise HTTPException(400, f"{name} must be a positive integer, got {text[:40]!r}")
    return min(int(value), ceiling)


async def _call(fn, *args):
    try:
        return await run_in_threadpool(fn, *args)
    except SceneNotFound as e:
        raise HTTPException(404, str(e)) from None


def add_scene_routes(app: FastAPI, store: SceneStore, cfg: ScenesConfig) -> None:
    limits = cfg.limits
    pages = {name: _asset(name) for name in ("scenes.html", "viewer.html")}
    assets = {name: _asset(name) for name in VIEWER_ASSETS}
    app.state.scenes = store

    @app.get("/api/scenes", tags=["scenes"], summary="Every scene of the served reconstruction outputs")
    async def scenes():
        listed = await run_in_threadpool(store.scenes)
        return {"scenes": [s.summary() for s in listed.values()], "outputs": store.names}

    @app.get("/api/scenes/{scene}/cameras", tags=["scenes"],
             summary="Per view: frame_idx, image name, size, extrinsic (3x4 world->camera), intrinsic (3x3)")
    async def cameras(scene: str):
        return {"scene": scene, "cameras": await _call(store.cameras, scene)}

    @app.get("/api/scenes/{scene}/points", tags=["scenes"], response_class=Response,
             summary=f"A seeded subsample of the points as binary records ({POINT_RECORD.itemsize} bytes "
                     f"each: {POINT_LAYOUT})",
             responses={200: {"content": {"application/octet-stream": {}}}})
    async def points(scene: str, max: str | None = None):  # noqa: A002 - the documented parameter name
        want = parse_count(max, min(limits.default_points, limits.max_points), limits.max_points)
        body, count, total = await _call(store.points, scene, want)
        return Response(body, media_type="application/octet-stream",
                        headers={"X-Points-Count": str(count), "X-Points-Total": str(total),
                                 "X-Points-Layout": POINT_LAYOUT, "Cache-Control": "private, no-cache"})

    @app.get("/api/scenes/{scene}/views/{frame_idx}/thumbnail", tags=["scenes"], response_class=Response,
             summary="A view's thumbnail (JPEG, made when the scene was written)",
             responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(scene: str, frame_idx: str):
        if not frame_idx.isascii() or not frame_idx.isdigit() or len(frame_idx) > 9:
            raise HTTPException(404, f"no view {frame_idx[:40]!r} (views are numbered by frame_idx)")
        data = await _call(store.thumbnail, scene, int(frame_idx))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/scenes", include_in_schema=False)
    async def scenes_page():
        return HTMLResponse(pages["scenes.html"], headers={"Cache-Control": "no-cache"})

    @app.get("/scenes/{scene}", include_in_schema=False)
    async def viewer_page(scene: str):
        await _call(store.find, scene)
        return HTMLResponse(pages["viewer.html"], headers={"Cache-Control": "no-cache"})

    @app.get("/static/viewer/{name:path}", include_in_schema=False)
    async def viewer_asset(name: str):
        if name not in assets:
            raise HTTPException(404, "no such file")
        return Response(assets[name], media_type=VIEWER_ASSETS[name], headers={"Cache-Control": "no-cache"})
