"""The FastAPI application of the search service: ``create_app(service, token=..., cors_origins=...)``.
The same application runs on uvicorn (``tomeray serve``) and on Ray Serve (``serve.ray_app``).

Routes (OpenAPI spec at ``/openapi.json``, readable at ``/docs``):

* ``GET /`` the search page; ``GET /static/<file>`` its assets (a fixed list, no directory listing)
* ``GET /api/health``, ``GET /api/stats``
* ``GET|POST /api/search`` text, "more like this" (``like=<video id>``) or an uploaded clip/image query,
  with filters and pages (:mod:`.routes`)
* ``GET /api/videos/{id}``, ``GET /api/videos/{id}/thumbnail``, ``GET /media/{id}`` (range requests)
* ``GET /metrics`` Prometheus text; ``POST /api/login`` exchanges the bearer token for a cookie

Every request passes :class:`Guard` first: URLs must be valid UTF-8; with a token, everything except
the page, its assets, the docs page and the health check needs ``Authorization: Bearer <token>`` or
the session cookie that ``/api/login`` sets (how the page's images and video player authenticate).
Errors are JSON ``{"error": message, "status": code}``: 4xx for anything a client can send, and
never a traceback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from tomeray.models.errors import TomerayError, one_line
from tomeray.pipeline.video.serve.metrics import ServiceMetrics
from tomeray.pipeline.video.serve.service import NotFound, SearchService
from tomeray.pipeline.video.serve.uploads import UnsupportedMedia

__all__ = ["SESSION_COOKIE", "Guard", "create_app", "error_response", "session_value"]

log = logging.getLogger(__name__)

SESSION_COOKIE = "tomeray_session"
PUBLIC_PATHS = {"/", "/docs", "/api/health", "/favicon.ico", "/scenes"}  # pages without data
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                                 b"script-src 'self'; style-src 'self'; connect-src 'self'; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
]


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def session_value(token: str) -> str:
    """What the session cookie holds: derived from the token, so the cookie never carries it."""
    return hmac.new(token.encode("utf-8"), b"tomeray-session", hashlib.sha256).hexdigest()


class Guard:
    """ASGI middleware: UTF-8 URLs, the bearer token, security headers and request metrics."""

    def __init__(self, app, metrics: ServiceMetrics, token: str | None):
        self.app, self.metrics, self.token = app, metrics, token or None
        self._bearer = f"Bearer {token}".encode() if token else b""
        self._session = session_value(token) if token else ""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *[(k, v) for k, v in SECURITY_HEADERS if k not in names]]
            await send(message)

        try:
            problem = self._check(scope)
            if problem is not None:
                await problem(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        finally:
            self.metrics.request(scope.get("path", ""), scope.get("method", ""), status[0],
                                 time.perf_counter() - started)

    def _check(self, scope) -> JSONResponse | None:
        try:
            unquote_to_bytes(scope.get("raw_path") or scope["path"].encode()).decode("utf-8")
            unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            return error_response(400, "the URL is not valid UTF-8 (percent-encode text as UTF-8)")
        if self.token is None or scope["method"] == "OPTIONS":  # CORS preflights carry no credentials
            return None
        path = scope["path"]
        if path in PUBLIC_PATHS or path.startswith("/static/"):
            return None
        headers = dict(scope.get("headers", []))
        if hmac.compare_digest(headers.get(b"authorization", b""), self._bearer):
            return None
        cookie = _cookie(headers.get(b"cookie", b""), SESSION_COOKIE)
        if cookie and hmac.compare_digest(cookie, self._session):
            return None
        return error_response(401, "this server needs a token: send 'Authorization: Bearer <token>' "
                                   "(the web page asks for it once)", {"WWW-Authenticate": "Bearer"})


def _cookie(header: bytes, name: str) -> str:
    for part in header.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for e in error.errors()[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path", "body"))
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def create_app(service: SearchService | None, *, token: str | None = None,
               cors_origins: list[str] | None = None) -> FastAPI:
    """The application over ``service`` (see the module docstring). Without a service (a server of
    reconstructions only) it has the guard, the error handling and the login, for others' routes."""
    from tomeray.pipeline.video.serve.media import add_media_routes
    from tomeray.pipeline.video.serve.routes import add_api_routes, add_login_route

    app = FastAPI(title="tomeray search", version="1", docs_url=None, redoc_url=None,
                  description="Text, clip and 'more like this' search over video indexes built by "
                              "'tomeray index'. Video ids are decimal strings (63-bit integers).")
    app.state.service = service
    app.state.token = token or None

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error_response(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return error_response(400, _validation_message(e))

    @app.exception_handler(TomerayError)
    async def tomeray_error(request: Request, e: TomerayError):
        status = 404 if isinstance(e, NotFound) else 415 if isinstance(e, UnsupportedMedia) else 400
        return error_response(status, one_line(e))

    @app.exception_handler(json.JSONDecodeError)
    async def bad_json(request: Request, e: json.JSONDecodeError):
        return error_response(400, f"the body is not valid JSON ({e.msg} at character {e.pos})")

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error (the server log has the details)")

    if service is not None:
        add_api_routes(app, service)
        add_media_routes(app, service)
    else:
        add_login_route(app)
    app.add_middleware(Guard, metrics=service.metrics if service is not None else ServiceMetrics(),
                       token=token)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], allow_credentials=False)
    return app

