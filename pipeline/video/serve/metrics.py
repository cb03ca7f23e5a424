"""Prometheus metrics of the search service (``GET /metrics``): requests by route and status, request
latency, the time of each search stage (text/clip encoding, FAISS, metadata join), batch sizes, index
sizes and reloads. One registry per service, so several services in one process stay apart; under
Ray Serve each replica reports its own."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["ServiceMetrics", "route_label"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


def route_label(path: str) -> str:
    """A bounded label for a request path (ids are not labels)."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "/"
    if parts[0] == "media":
        return "/media/{id}"
    if parts[:2] == ["api", "videos"]:
        thumbnail = len(parts) == 4 and parts[-1] == "thumbnail"
        return "/api/videos/{id}/thumbnail" if thumbnail else "/api/videos/{id}"
    known = {"/api/search", "/api/stats", "/api/health", "/api/login", "/metrics", "/docs", "/openapi.json"}
    joined = "/" + "/".join(parts)
    if joined in known:
        return joined
    return "/static" if parts[0] == "static" else "other"


class ServiceMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter("tomeray_http_requests", "HTTP requests", ["route", "method", "status"],
                                 registry=r)
        self._latency = Histogram("tomeray_http_request_seconds", "HTTP request latency", ["route"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self._stages = Histogram("tomeray_search_stage_seconds",
                                 "time per search stage (encode: text/clip encoding, faiss, metadata join)",
                                 ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self._batches = Histogram("tomeray_search_batch_size", "queries encoded and searched together",
                                  buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self._rows = Gauge("tomeray_index_rows", "rows of each served index", ["index"], registry=r)
        self._reloads = Counter("tomeray_index_reloads", "index reloads after 'tomeray index' updated one",
                                ["index", "outcome"], registry=r)

    def request(self, path: str, method: str, status: int, seconds: float) -> None:
        route = route_label(path)
        self._requests.labels(route, method, str(status)).inc()
        self._latency.labels(route).observe(seconds)

    def stage(self, name: str, seconds: float) -> None:
        self._stages.labels(name).observe(seconds)

    def batch(self, size: int) -> None:
        self._batches.observe(size)

    def index_rows(self, index: str, rows: int) -> None:
        self._rows.labels(index).set(rows)

    def reload(self, index: str, outcome: str) -> None:
        self._reloads.labels(index, outcome).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
