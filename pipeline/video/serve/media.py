"""Files the search service sends: the page and its assets (a fixed list shipped in the package),
thumbnails, and the indexed videos themselves (range requests, so a browser can seek).

Only the file an indexed row names is ever served, looked up by its id: no path from a request
reaches the file system. The stored path is canonical (absolute, links resolved at index time); a
file that has since become a link, or that resolves outside the corpus root, is refused.
"""


import logging
import mimetypes
import os
import stat
import threading
from collections import OrderedDict
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, HTMLResponse, Response
from tomeray.pipeline.video.serve.routes import parse_video_id
from tomeray.pipeline.video.serve.service import NotFound, SearchService

__all__ = ["MediaStore", "add_media_routes", "placeholder_jpeg"]

log = logging.getLogger(__name__)

STATIC_TYPES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
                "docs.js": "text/javascript; charset=utf-8", "favicon.svg": "image/svg+xml"}
VIDEO_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
               ".mkv": "video/x-matroska", ".avi": "video/x-msvideo", ".ogv": "video/ogg",
               ".mpg": "video/mpeg", ".mpeg": "video/mpeg", ".ts": "video/mp2t", ".3gp": "video/3gpp"}
MADE_CACHE_BYTES = 32 * 2**20


def _asset(name: str) -> bytes:
    return resources.files("tomeray.pipeline.video.serve").joinpath("static", name).read_bytes()


_placeholder: bytes | None = None


def placeholder_jpeg() -> bytes:
    """The thumbnail of a row whose video cannot be decoded any more: a dark frame with a play mark."""
    global _placeholder
    if _placeholder is None:
        import cv2
        from tomeray.operators.thumbnail import thumbnail_jpeg

        frame = np.full((180, 320, 3), (32, 36, 46), np.uint8)
        cv2.fillPoly(frame, [np.array([[140, 60], [140, 120], [190, 90]], np.int32)], (110, 118, 140))
        _placeholder = thumbnail_jpeg(frame)
    return _placeholder


class MediaStore:
    """Thumbnails (stored, else made once and cached, else a placeholder) and video files by id."""

    def __init__(self, service: SearchService, cache_bytes: int = MADE_CACHE_BYTES):
        self.service = service
        self._made: OrderedDict[int, bytes] = OrderedDict()
        self._made_bytes, self._limit = 0, cache_bytes
        self._lock = threading.Lock()

    def thumbnail(self, video_id: int) -> tuple[bytes, str]:
        """``(JPEG bytes, source)``: source "index", "made" (decoded now, for an index without
        thumbnails) or "placeholder"."""
        index, row = self.service.find(video_id)
        stored = index.searcher.thumbnail_of(video_id)
        if stored:
            return stored, "index"
        with self._lock:
            if video_id in self._made:
                self._made.move_to_end(video_id)
                return self._made[video_id], "made"
        try:
            from tomeray.operators.thumbnail import thumbnails_of

            path = self.media_path(video_id)[0]
            (data,) = thumbnails_of(path, [index.searcher.thumbnail_frame(video_id)],
                                    int(index.searcher.manifest["model"].get("image_size", 224)))
        except Exception as e:  # noqa: BLE001 - a video that no longer decodes still gets a picture
            log.info("no thumbnail for %s (%s): placeholder", row.path, e)
            return placeholder_jpeg(), "placeholder"
        with self._lock:
            self._made[video_id] = data
            self._made_bytes += len(data)
            while self._made_bytes > self._limit and self._made:
                self._made_bytes -= len(self._made.popitem(last=False)[1])
        return data, "made"

    def media_path(self, video_id: int) -> tuple[str, str, str]:
        """``(path, media type, file name)`` of an indexed row's video, after the checks above."""
        index, row = self.service.find(video_id)
        stored = row.path
        if not os.path.isabs(stored):
            raise NotFound(f"video {video_id} has no absolute path in the index")
        real = os.path.realpath(stored)
        if real != os.path.normpath(stored):
            raise HTTPException(403, f"video {video_id}: its file is now a link (rebuild the index)")
        root = index.searcher.id_root
        if root and os.path.commonpath([real, os.path.realpath(root)]) != os.path.realpath(root):
            raise HTTPException(403, f"video {video_id} is outside the corpus root")
        try:
            st = os.stat(real)
        except OSError:
            raise NotFound(f"the file of video {video_id} is gone") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"the file of video {video_id} is not a regular file")
        suffix = Path(real).suffix.lower()
        kind = VIDEO_TYPES.get(suffix) or mimetypes.guess_type(real)[0] or "application/octet-stream"
        if not kind.startswith("video/"):
            raise HTTPException(403, f"video {video_id}: '{suffix}' files are not served")
        return real, kind, Path(real).name


def add_media_routes(app: FastAPI, service: SearchService) -> None:
    store = MediaStore(service)
    app.state.media = store
    page, docs = _asset("index.html"), _asset("docs.html")
    assets = {name: _asset(name) for name in STATIC_TYPES}

    @app.get("/", include_in_schema=False)
    async def index_page():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def docs_page():
        return HTMLResponse(docs, headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in assets:
            raise HTTPException(404, "no such file")
        return Response(assets[name], media_type=STATIC_TYPES[name], headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(assets["favicon.svg"], media_type=STATIC_TYPES["favicon.svg"])

    @app.get("/api/videos/{video_id}/thumbnail", tags=["videos"], summary="The row's thumbnail (JPEG)",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(video_id: str):
        data, source = await run_in_threadpool(store.thumbnail, parse_video_id(video_id))
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600", "X-Thumbnail": source})

    @app.api_route("/media/{video_id}", methods=["GET", "HEAD"], tags=["videos"],
                   summary="The row's video file (HTTP range requests)", response_class=FileResponse)
    async def media(video_id: str):
        path, kind, name = await run_in_threadpool(store.media_path, parse_video_id(video_id))
        return FileResponse(path, media_type=kind, filename=name, content_disposition_type="inline",
                            headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics", response_class=Response)
    async def metrics():
        body, kind = service.metrics.render()
        return Response(body, media_type=kind)


