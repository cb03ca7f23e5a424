"""``tomeray serve DIR [DIR ...] [--host H] [--port P] [--token T] [--ray ...] [key=value ...]``: video
indexes and reconstruction outputs (each directory's kind read from its manifest) on one server: the
search page and API, the scenes and their 3D viewer, and 3D reconstructions of search hits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tomeray.models.errors import InputError
from tomeray.pipeline.core.config import load_config, split_overrides
from tomeray.pipeline.core.runner import command_parser, run_command, weights_line
from tomeray.pipeline.service.config import ScenesConfig, split_scene_overrides, validate_scenes
from tomeray.pipeline.service.scenes import SceneStore, output_kind
from tomeray.pipeline.video.serve import cli as video_serve_cli
from tomeray.pipeline.video.serve.cli import (
    _bind,
    _url,
    add_server_options,
    check_bind,
    resolve_token,
    run_server,
)
from tomeray.pipeline.video.serve.config import ServeConfig

__all__ = ["main", "serve_uvicorn"]


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "tomeray serve",
        "Serve video indexes and reconstructions over HTTP: a JSON API (docs at /docs), a search page "
        "at / and a 3D viewer at /scenes.",
        "Examples:\n"
        "  tomeray serve idx                      # http://127.0.0.1:8000\n"
        "  tomeray serve idx recon                # search, scenes, and 3D from a hit\n"
        "  tomeray serve recon --port 9000        # scenes only\n"
        "  tomeray serve idx_a idx_b --port 9000 limits.max_k=100 recon.views=8\n"
        "  TOMERAY_SERVE_TOKEN=$(openssl rand -hex 16) tomeray serve idx --host 0.0.0.0\n"
        "  tomeray serve idx --ray --replicas 2 --address auto\n"
        "  tomeray serve idx --ray --shards 2           # the index's rows split over two shard replicas\n"
        "Binding anything but a loopback address needs a token (--token or TOMERAY_SERVE_TOKEN).",
        "DIR|KEY=VALUE",
        "index directories ('tomeray index'), reconstruction outputs ('tomeray reconstruct'), and config "
        "overrides (see 'tomeray config serve' and 'tomeray config scenes')")
    add_server_options(parser, "deploy on Ray Serve instead of uvicorn (video indexes only)")
    return parser


def hit_output(index_dirs: list[str], scenes: ScenesConfig) -> str | None:
    """Where reconstructions of search hits land (``recon.out``, default ``<first index>/scenes``)."""
    if scenes.recon.out:
        return scenes.recon.out
    return str(Path(index_dirs[0]) / "scenes") if index_dirs else None


def serve_uvicorn(index_dirs: list[str], recon_dirs: list[str], cfg: ServeConfig, scenes: ScenesConfig,
                  host: str, port: int, token: str | None) -> int:
    from tomeray.pipeline.service.app import create_service_app
    from tomeray.pipeline.video.serve.service import SearchService, check_limits

    check_limits(cfg)
    sock = _bind(host, port)  # fails before the minutes of loading on a taken port
    if cfg.server.torch_threads > 0:
        import torch

        torch.set_num_threads(cfg.server.torch_threads)
    store = SceneStore(recon_dirs)
    service = SearchService(index_dirs, cfg) if index_dirs else None
    jobs = None
    if service is not None:
        from tomeray.pipeline.service.hit_jobs import HitJobs

        jobs = HitJobs(hit_output(index_dirs, scenes), scenes, store)
    app = create_service_app(service, store, scenes, jobs=jobs, token=token,
                             cors_origins=cfg.server.cors_origins)
    url = _url(host, sock.getsockname()[1])
    parts = []
    if service is not None:
        stats = service.stats()
        parts.append(f"{stats['rows']} rows from {stats['videos']} videos "
                     f"({', '.join(i['name'] for i in stats['indexes'])})")
    if recon_dirs:
        parts.append(f"{len(store.scenes())} scenes ({', '.join(store.names)})")
    print(f"serving {' and '.join(parts)} at {url}  (API docs: {url}/docs, scenes: {url}/scenes)")
    if service is not None:
        print(weights_line(service.weights_id, "search results are not meaningful"))
    for scene in store.scenes().values():
        if scene.weights_id.startswith("random"):
            print(weights_line(scene.weights_id, f"scene {scene.name} is not a real reconstruction"))
            break
    try:
        run_server(app, sock, token)
    finally:
        if jobs is not None:
            jobs.close()
        if service is not None:
            service.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_intermixed_args(argv)
    dirs, overrides = split_overrides(args.items)

    def body() -> int:
        if not dirs:
            raise InputError("nothing to serve: pass index directories made by 'tomeray index' and/or "
                             "reconstruction outputs made by 'tomeray reconstruct'")
        kinds = {d: output_kind(d) for d in dirs}
        index_dirs = [d for d in dirs if kinds[d] == "index"]
        recon_dirs = [d for d in dirs if kinds[d] == "reconstruction"]
        scene_overrides, search_overrides = split_scene_overrides(overrides)
        if args.ray:
            if recon_dirs or scene_overrides:
                raise InputError("--ray serves video indexes only; serve reconstruction outputs (and 3D "
                                 "from search hits) with uvicorn (without --ray)")
            return video_serve_cli.main(argv)  # the search service on Ray Serve
        if args.replicas is not None or args.shards is not None or args.address:
            raise InputError("--replicas, --shards and --address need --ray")
        cfg = load_config(ServeConfig, "serve", search_overrides)
        scenes = load_config(ScenesConfig, "scenes", scene_overrides)
        validate_scenes(scenes)
        token = resolve_token(args.token)
        check_bind(args.host, token)
        return serve_uvicorn(index_dirs, recon_dirs, cfg, scenes, args.host, args.port, token)

    return run_command("tomeray serve", body, "stopped")


if __name__ == "__main__":
    sys.exit(main())
