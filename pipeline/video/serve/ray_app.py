"""The search service on Ray Serve: each replica builds its own :class:`SearchService` (warm encoder,
FAISS index and lookup tables, loaded once) and serves the same FastAPI application as uvicorn.

    tomeray serve idx --ray --replicas 2 [--address auto]        # deploys, then waits for Ctrl-C
    serve run tomeray.pipeline.video.serve.ray_app:build indexes=/data/idx replicas=2
    ray job submit -- python -m tomeray.jobs.serve_search /data/idx --port 8000

Every replica opens the index directories itself, so they must be on storage each node can read.
The token, when given, is passed to the replicas as a deployment argument (the Ray cluster's users
can read it); ``serve run`` replicas also read ``TOMERAY_SERVE_TOKEN`` from their environment.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time

from ray import serve
from tomeray.pipeline.core.config import config_to_dict, load_config
from tomeray.pipeline.core.runner import weights_line
from tomeray.pipeline.video.serve.config import ServeConfig

__all__ = ["SearchDeployment", "build", "deploy", "serve_ray"]

log = logging.getLogger(__name__)

APP_NAME = "tomeray-search"


@serve.deployment(name="SearchDeployment", max_ongoing_requests=64)
@serve.ingress()
class SearchDeployment:
    def __init__(self, index_dirs: list[str], config: dict, token: str | None = None,
                 shards: list | None = None):
        import torch
        from tomeray.pipeline.video.search import VideoSearcher
        from tomeray.pipeline.video.serve.service import SearchService

        self.cfg = load_config(ServeConfig, config)
        torch.set_num_threads(self.cfg.ray.threads or max(1, round(self.cfg.ray.num_cpus)))
        self.token = token or os.environ.get("TOMERAY_SERVE_TOKEN") or None
        searcher = VideoSearcher
        if shards:  # the FAISS step runs on the shard deployments (pipeline.video.serve.shards)
            from tomeray.pipeline.video.serve.shards import ShardedSearcher

            searcher = functools.partial(ShardedSearcher, handles=shards)
        self.service = SearchService(index_dirs, self.cfg, server="ray-serve", searcher_class=searcher)

    def __serve_build_asgi_app__(self):
        from tomeray.pipeline.video.serve.app import create_app

        return create_app(self.service, token=self.token, cors_origins=self.cfg.server.cors_origins)


def application(index_dirs: list[str], cfg: ServeConfig, token: str | None):
    """The bound Ray Serve application: ``cfg.ray.replicas`` replicas of ``cfg.ray.num_cpus`` CPUs."""
    dirs = [os.path.abspath(d) for d in index_dirs]
    shards = None
    if cfg.ray.shards > 0:
        from tomeray.pipeline.video.serve.shards import shard_deployments

        shards = shard_deployments(dirs[0], cfg.ray.shards, cfg)
    return SearchDeployment.options(num_replicas=cfg.ray.replicas,
                                    ray_actor_options={"num_cpus": cfg.ray.num_cpus}).bind(
        dirs, config_to_dict(cfg), token, shards)


def build(args: dict):
    """``serve run tomeray.pipeline.video.serve.ray_app:build indexes=a,b [replicas=N] [token=T]
    [section.key=value ...]``."""
    args = dict(args)
    dirs = [d for d in str(args.pop("indexes", "")).split(",") if d]
    if not dirs:
        raise ValueError("give the index directories: indexes=/path/a,/path/b")
    token = args.pop("token", None)
    replicas = args.pop("replicas", None)
    cfg = load_config(ServeConfig, "serve", [f"{k}={v}" for k, v in args.items()])
    if replicas is not None:
        cfg.ray.replicas = int(replicas)
    return application(dirs, cfg, token)


def deploy(index_dirs: list[str], cfg: ServeConfig, host: str, port: int, token: str | None) -> str:
    """Start Ray Serve's HTTP proxy on ``host:port`` and deploy the service (the Ray connection must be
    up); returns the URL once every replica is ready."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(index_dirs, cfg, token), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def serve_ray(index_dirs: list[str], cfg: ServeConfig, host: str, port: int, token: str | None,
              address: str | None) -> int:
    from tomeray.models.errors import InputError
    from tomeray.pipeline.core.ray_session import init_ray
    from tomeray.pipeline.video.layout import IndexLayout
    from tomeray.pipeline.video.serve.service import check_limits

    check_limits(cfg)
    manifests = [IndexLayout(d).read_manifest() for d in index_dirs]  # a bad directory fails here
    if port == 0:
        raise InputError("--port 0 is not supported with --ray; give a port")
    init_ray(address or cfg.ray.address)
    url = deploy(index_dirs, cfg, host, port, token)
    sharded = f", {cfg.ray.shards} shard(s)" if cfg.ray.shards else ""
    print(f"serving {', '.join(index_dirs)} on Ray Serve ({cfg.ray.replicas} replica(s){sharded}) at {url}  "
          f"(API docs: {url}/docs)")
    print(weights_line(str(manifests[0].get("weights_id", "")), "search results are not meaningful"))
    print("press Ctrl-C to stop")
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        serve.delete(APP_NAME)

