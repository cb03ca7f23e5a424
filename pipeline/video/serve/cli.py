"""``tomeray serve INDEX [INDEX ...] [--host H] [--port P] [--token T] [--ray ...] [key=value ...]``: the
search service on uvicorn (default) or on Ray Serve (``--ray``)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from tomeray.models.errors import ConfigError, InputError
from tomeray.pipeline.core.config import load_config, split_overrides
from tomeray.pipeline.core.runner import command_parser, run_command, weights_line
from tomeray.pipeline.video.serve.config import ServeConfig

__all__ = ["TOKEN_ENV", "check_bind", "main", "resolve_token"]

TOKEN_ENV = "TOMERAY_SERVE_TOKEN"


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "tomeray serve",
        "Serve video indexes over HTTP: a JSON API (docs at /docs) and a search page at /.",
        "Examples:\n"
        "  tomeray serve idx                      # http://127.0.0.1:8000\n"
        "  tomeray serve idx_a idx_b --port 9000 limits.max_k=100\n"
        "  TOMERAY_SERVE_TOKEN=$(openssl rand -hex 16) tomeray serve idx --host 0.0.0.0\n"
        "  tomeray serve idx --ray --replicas 2 --address auto\n"
        "Binding anything but a loopback address needs a token (--token or TOMERAY_SERVE_TOKEN).",
        "INDEX|KEY=VALUE",
        "index directories written by 'tomeray index', and config overrides (see 'tomeray config serve')")
    add_server_options(parser, "deploy on Ray Serve instead of uvicorn")
    return parser


def add_server_options(parser, ray_help: str) -> None:
    """The options of every serve command: where to bind, the token, and Ray Serve's."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--token", default=None,
                        help=f"bearer token every API request must carry (default: ${TOKEN_ENV})")
    parser.add_argument("--ray", action="store_true", help=ray_help)
    parser.add_argument("--replicas", type=int, default=None,
                        help="Ray Serve replicas (default: ray.replicas)")
    parser.add_argument("--shards", type=int, default=None,
                        help="split the index's rows over this many Ray Serve shard replicas, which the "
                             "front replicas query (default: ray.shards, 0: none; needs --ray and one index)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(given: str | None) -> str | None:
    token = given if given is not None else os.environ.get(TOKEN_ENV)
    if token is not None and not token.strip():
        raise InputError("the token is empty; pass a non-empty --token (or unset the variable)")
    if token is not None and (len(token) < 8 or not token.isprintable() or " " in token):
        raise InputError("the token must be at least 8 printable characters without spaces")
    return token


def check_bind(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise InputError(f"binding {host} makes the index reachable from other machines: give a token "
                         f"(--token or {TOKEN_ENV}) or bind 127.0.0.1")


def _bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog while the indexes load
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_uvicorn(dirs: list[str], cfg: ServeConfig, host: str, port: int, token: str | None) -> int:
    from tomeray.pipeline.video.serve.app import create_app
    from tomeray.pipeline.video.serve.service import SearchService, check_limits

    check_limits(cfg)
    sock = _bind(host, port)  # fails before the minutes of loading on a taken port
    if cfg.server.torch_threads > 0:
        import torch

        torch.set_num_threads(cfg.server.torch_threads)
    service = SearchService(dirs, cfg)
    app = create_app(service, token=token, cors_origins=cfg.server.cors_origins)
    stats = service.stats()
    url = _url(host, sock.getsockname()[1])
    print(f"serving {stats['rows']} rows from {stats['videos']} videos "
          f"({', '.join(i['name'] for i in stats['indexes'])}) at {url}  (API docs: {url}/docs)")
    print(weights_line(service.weights_id, "search results are not meaningful"))
    try:
        run_server(app, sock, token)
    finally:
        service.close()
    return 0


def run_server(app, sock, token: str | None) -> None:
    """Serve ``app`` with uvicorn on the bound socket until stopped (Ctrl-C, SIGTERM)."""
    import uvicorn

    if token:
        print("requests need the bearer token (the page asks for it once)")
    sys.stdout.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=5))
    server.run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    dirs, overrides = split_overrides(args.items)

    def body() -> int:
        if not dirs:
            raise InputError("no index given: pass one or more index directories made by 'tomeray index'")
        cfg = load_config(ServeConfig, "serve", overrides)
        token = resolve_token(args.token)
        check_bind(args.host, token)
        if args.replicas is not None:
            if not args.ray:
                raise InputError("--replicas needs --ray")
            cfg.ray.replicas = args.replicas
        if args.shards is not None:
            if not args.ray:
                raise InputError("--shards needs --ray")
            cfg.ray.shards = args.shards
        if cfg.ray.replicas < 1 or cfg.ray.shards < 0:
            raise ConfigError(f"ray.replicas must be at least 1 and ray.shards at least 0, got "
                              f"{cfg.ray.replicas} and {cfg.ray.shards}")
        if cfg.ray.shards and len(dirs) != 1:
            raise InputError(f"--shards serves one index, got {len(dirs)}: run one service per index")
        if args.ray:
            from tomeray.pipeline.video.serve.ray_app import serve_ray

            return serve_ray(dirs, cfg, args.host, args.port, token, args.address)
        if args.address:
            raise InputError("--address needs --ray")
        return serve_uvicorn(dirs, cfg, args.host, args.port, token)

    return run_command("tomeray serve", body, "stopped")


if __name__ == "__main__":
    sys.exit(main())
