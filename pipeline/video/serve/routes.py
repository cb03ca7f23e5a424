"""JSON routes of the search service: health, stats, login, search (GET and POST), one video's row.

A search is a text query (``q``), "more like this" (``like``: a video id, searched with its stored
embedding) or an uploaded clip or image (POST: the raw body with an image/video content type, or a
multipart form with a ``file`` field). ``k`` hits from rank ``offset + 1``; filters on the rows'
metadata (``path_prefix``, ``path_glob``, ``duration_min/max``, ``time_min/max``) select rows before
the nearest-neighbour search, so a filtered page is never silently short.
"""

# No "from __future__ import annotations": FastAPI reads the route signatures at runtime.

import asyncio
import json
import os
from typing import Annotated

from fastapi import FastAPI
from fastapi import Query as Param
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from tomeray.models.errors import InputError
from tomeray.pipeline.video.filters import SearchFilters
from tomeray.pipeline.video.serve.service import NotFound, Query, SearchService
from tomeray.pipeline.video.serve.uploads import encode_upload

__all__ = ["FILTER_FIELDS", "SearchBody", "add_api_routes", "add_login_route", "parse_video_id"]

FILTER_FIELDS = ("path_prefix", "path_glob", "duration_min", "duration_max", "time_min", "time_max")
MAX_PATTERN_CHARS = 1000
MAX_ID = 2**63 - 1


class FilterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path_prefix: str | None = None
    path_glob: str | None = None
    duration_min: float | None = None
    duration_max: float | None = None
    time_min: float | None = None
    time_max: float | None = None


class SearchBody(BaseModel):
    """``POST /api/search`` with ``Content-Type: application/json``."""

    model_config = ConfigDict(extra="forbid")
    q: str | None = None
    like: str | int | None = None
    k: int | None = None
    offset: int = 0
    filters: FilterBody | None = None


def parse_video_id(text) -> int:
    """A video id from a URL or a request (a decimal string or an integer); NotFound otherwise."""
    value = str(text).strip()
    if not value.isdigit() or not value.isascii() or len(value) > 19 or int(value) > MAX_ID:
        raise NotFound(f"no indexed video has id {value[:40]!r} (ids are decimal numbers)")
    return int(value)


def _query(service: SearchService, *, q=None, like=None, k=None, offset=0, filters: dict | None = None,
           vector=None) -> Query:
    """Check a request's parts against the limits and build the :class:`Query`."""
    limits = service.cfg.limits
    given = [name for name, v in (("q", q), ("like", like), ("an upload", vector))
             if v is not None and not (isinstance(v, str) and not v)]
    if len(given) != 1:
        raise InputError("give exactly one query: q (text), like (a video id) or an uploaded clip/image"
                         + (f"; got {' and '.join(given)}" if given else ""))
    if q is not None:
        if not isinstance(q, str) or not q.strip():
            raise InputError("the text query q is empty")
        if len(q) > limits.max_query_chars:
            raise InputError(f"the text query is {len(q)} characters long; at most {limits.max_query_chars}")
        if "\x00" in q:
            raise InputError("the text query contains a NUL character")
        q = q.strip()
    if like is not None:
        try:
            like = parse_video_id(like)
        except NotFound:
            raise InputError(f"like must be a video id (a decimal number), got {str(like)[:40]!r}") from None
    k = service.cfg.search.default_k if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.max_k:
        raise InputError(f"k must be an integer from 1 to {limits.max_k}, got {k!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= limits.max_offset:
        raise InputError(f"offset must be an integer from 0 to {limits.max_offset}, got {offset!r}")
    values = {name: v for name, v in (filters or {}).items() if v not in (None, "")}
    for name in ("path_prefix", "path_glob"):
        if name in values and len(str(values[name])) > MAX_PATTERN_CHARS:
            raise InputError(f"filter {name} is longer than {MAX_PATTERN_CHARS} characters")
    return Query(text=q, like=like, vector=vector, k=k, offset=offset, filters=SearchFilters(**values))


async def _answer(service: SearchService, query: Query) -> dict:
    answer = await asyncio.wrap_future(service.submit(query))
    return service.respond(query, answer)


async def _read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused (413) as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413, f"the {what} is larger than {limit:,} bytes" if declared.isdigit()
                            else "invalid Content-Length")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the {what} is larger than {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _int_field(form, name: str, default=None):
    value = form.get(name)
    if value in (None, ""):
        return default
    try:
        return int(str(value))
    except ValueError:
        raise InputError(f"{name} must be an integer, got {str(value)[:40]!r}") from None


def _float_fields(source) -> dict:
    out = {}
    for name in FILTER_FIELDS:
        value = source.get(name)
        if value in (None, ""):
            continue
        if name.startswith("path_"):
            out[name] = str(value)
            continue
        try:
            out[name] = float(str(value))
        except ValueError:
            raise InputError(f"filter {name} must be a number of seconds, got {str(value)[:40]!r}") from None
    return out


def add_login_route(app: FastAPI) -> None:
    @app.post("/api/login", tags=["service"],
              summary="Exchange the bearer token for a session cookie (used by the web page)")
    async def login(request: Request):
        from tomeray.pipeline.video.serve.app import SESSION_COOKIE, session_value

        token = request.app.state.token
        response = JSONResponse({"auth": bool(token)})
        if token:  # the guard has checked the bearer token by now
            response.set_cookie(SESSION_COOKIE, session_value(token), max_age=30 * 86400, httponly=True,
                                samesite="strict", path="/")
        return response


def add_api_routes(app: FastAPI, service: SearchService) -> None:
    limits = service.cfg.limits

    @app.get("/api/health", tags=["service"], summary="Liveness: the service is up and its indexes loaded")
    async def health():
        indexes = service.indexes
        rows = sum(len(i.searcher.metadata) for i in indexes)
        return {"status": "ok", "indexes": len(indexes), "rows": rows, "server": service.server,
                "pid": os.getpid()}

    @app.get("/api/stats", tags=["service"],
             summary="Indexes served (rows, videos, FAISS type), model identity and weights")
    async def stats():
        return service.stats()

    add_login_route(app)

    @app.get("/api/search", tags=["search"], summary="Search by text (q) or like a video (like)")
    async def search_get(
        q: Annotated[str | None, Param(description="text query")] = None,
        like: Annotated[str | None, Param(description="video id: rows like this one")] = None,
        k: Annotated[int | None, Param(description=f"hits per page (1..{limits.max_k})")] = None,
        offset: Annotated[int, Param(description="hits to skip (pages)")] = 0,
        path_prefix: Annotated[str | None, Param(description="keep paths starting with this")] = None,
        path_glob: Annotated[str | None, Param(description="keep paths matching this pattern")] = None,
        duration_min: Annotated[float | None, Param(description="video duration, seconds")] = None,
        duration_max: Annotated[float | None, Param()] = None,
        time_min: Annotated[float | None, Param(description="clips overlapping [time_min, time_max]")] = None,
        time_max: Annotated[float | None, Param()] = None,
    ):
        filters = {"path_prefix": path_prefix, "path_glob": path_glob, "duration_min": duration_min,
                   "duration_max": duration_max, "time_min": time_min, "time_max": time_max}
        return await _answer(service, _query(service, q=q, like=like, k=k, offset=offset, filters=filters))

    @app.post("/api/search", tags=["search"],
              summary="Search with a JSON body (SearchBody), or an uploaded clip or image",
              description="Content-Type application/json: a SearchBody. image/* or video/* (or "
                          "application/octet-stream): the body is the query media, options in the URL. "
                          "multipart/form-data: a 'file' field plus k, offset and filter fields. "
                          f"Uploads up to {limits.max_upload_mb} MB.",
              openapi_extra={"requestBody": {"content": {
                  "application/json": {"schema": SearchBody.model_json_schema()},
                  "video/mp4": {"schema": {"type": "string", "format": "binary"}},
                  "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}})
    async def search_post(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            return await _answer(service, await _json_query(request))
        if kind == "multipart/form-data":
            return await _upload_answer(request, *await _multipart(request))
        if kind.startswith(("image/", "video/")) or kind == "application/octet-stream":
            data = await _read_body(request, int(limits.max_upload_mb * 2**20), "upload")
            params = request.query_params
            return await _upload_answer(request, data, params)
        raise HTTPException(415, "POST /api/search takes application/json, multipart/form-data with a "
                                 "'file', or an image/* or video/* body")

    async def _json_query(request: Request) -> Query:
        raw = await _read_body(request, limits.max_json_kb * 1024, "JSON body")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("the JSON body is not valid UTF-8") from None
        data = json.loads(text)
        try:
            body = SearchBody.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            where = f"{where}: " if where else ""
            raise InputError(f"invalid search body: {where}{first.get('msg')}") from None
        filters = body.filters.model_dump() if body.filters else {}
        return _query(service, q=body.q, like=body.like, k=body.k, offset=body.offset, filters=filters)

    async def _multipart(request: Request):
        data = await _read_body(request, int(limits.max_upload_mb * 2**20) + 65536, "upload")

        async def replay():
            return {"type": "http.request", "body": data, "more_body": False}

        form = await Request(request.scope, replay).form(max_files=1, max_fields=20)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InputError("the multipart form has no 'file' field with the query clip or image")
        content = await upload.read()
        if len(content) > limits.max_upload_mb * 2**20:
            raise HTTPException(413, f"the upload is larger than {limits.max_upload_mb} MB")
        return content, form

    async def _upload_answer(request: Request, data: bytes, fields) -> dict:
        if fields.get("q") or fields.get("like"):
            raise InputError("give exactly one query: an upload cannot be combined with q or like")
        options = {"k": _int_field(fields, "k"), "offset": _int_field(fields, "offset", 0),
                   "filters": _float_fields(fields)}
        _query(service, vector=b"checked", **options)  # refuse bad options before encoding
        searcher = service.indexes[0].searcher
        vector, kind = await run_in_threadpool(encode_upload, searcher, data)
        response = await _answer(service, _query(service, vector=vector, **options))
        return {**response, "query": {"upload": kind, "bytes": len(data)}}

    @app.get("/api/videos/{video_id}", tags=["videos"], summary="One indexed row: path, times, URLs")
    async def video(video_id: str):
        index, row = service.find(parse_video_id(video_id))
        return {**service.hit(index, row), "has_thumbnail": index.searcher.has_thumbnail(row.video_id)}
