"""Joining a running Ray cluster, and saying in one line why a cluster refuses this process.

Ray's own refusals are slow and hard to read: ``ray.init`` retries a cluster that rejects its token
for ~20 s and then raises a ``ConnectionError`` around a C++ traceback, and it retries a dead port
for many minutes. So before ``ray.init`` the address is checked the cheap way (a TCP connect, one
GCS handshake, one dashboard request), and whatever ``ray.init`` still raises for a refusal is
translated. Every refusal is a :class:`ClusterError` naming what is wrong (the token, the address,
the versions) and the README section that fixes it.

Address forms: ``HOST:PORT`` (the GCS port of ``ray start --head --port``, for a driver on a cluster
node), ``ray://HOST:PORT`` (Ray Client) and ``http(s)://HOST:PORT`` (the dashboard: the address of
``ray job submit``; tomeray checks it and says how to submit, since a driver cannot join through it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

from tomeray.models.errors import TomerayError, one_line

log = logging.getLogger(__name__)

__all__ = ["README_SECTION", "SUBSECTIONS", "ClusterError", "connect_cluster"]

README_SECTION = "README 'Run on a Ray cluster'"
# its sub-sections that the messages point to (tests check that the README has them)
SUBSECTIONS = {"token": "Start a cluster with token authentication", "install": "Get tomeray onto every node",
               "submit": "Submit, follow and stop jobs"}
_TOKEN_FIX = ("set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on "
              f"the head prints it); see {README_SECTION} > {SUBSECTIONS['token']}")
_ADDRESS_FIX = ("check the head's address and port (the GCS port of `ray start --head --port`, 6379 by "
                "default; the dashboard's, 8265, for `ray job submit`) and that the head is running; see "
                f"{README_SECTION}")
_CONNECT_TIMEOUT_S = 10.0


class ClusterError(TomerayError):
    """The Ray cluster named by ``--address`` / ``RAY_ADDRESS`` cannot be joined: unreachable,
    refusing this process's authentication token, or running another Ray or Python version."""


def connect_cluster(address: str) -> None:
    """``ray.init(address)``, with every refusal raised as a one-line :class:`ClusterError`."""
    import ray

    _check_own_token(address)
    if re.match(r"^https?://", address):
        _check_dashboard(address)
        raise ClusterError(
            f"{address} is a Ray dashboard (job submission) address, which a driver cannot join: run "
            f"the job on the cluster with `ray job submit --address {address} -- python -m "
            "tomeray.jobs.<job> ...`, or, on a cluster node, pass the GCS address HEAD:6379 as --address; "
            f"see {README_SECTION} > {SUBSECTIONS['submit']}")
    host_port = _host_port(address.removeprefix("ray://"))
    if host_port is not None:
        _check_reachable(address, *host_port)
        if not address.startswith("ray://"):
            _check_gcs(address)
    log.info("connecting to the Ray cluster at %s", address)
    try:
        ray.init(address=address, log_to_driver=True)
    except Exception as e:
        refusal = _explain(e, address)
        if refusal is None:
            raise
        if ray.is_initialized():
            ray.shutdown()  # a version mismatch is found after connecting
        raise refusal from None


# --------------------------------------------------------------------------------------- checks


def _check_own_token(address: str) -> None:
    """With token authentication on, a token must be at hand before any connection: Ray aborts the
    process (a failed C++ check) when one of its clients starts without."""
    if _auth_mode() != "token" or _token_source()[0] is not None:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        raise ClusterError(f"RAY_AUTH_TOKEN_PATH names {path}, which is missing or empty; {_TOKEN_FIX}")
    raise _auth_error(address)


def _host_port(address: str) -> tuple[str, int] | None:
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d+)", address)
    return (match.group(1), int(match.group(2))) if match else None


def _check_reachable(address: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise _unreachable(f"cannot reach the Ray cluster at {address}: {_reason(e)}") from None


def _check_gcs(address: str) -> None:
    """One GCS handshake: a wrong or missing token is refused at once (``ray.init`` would retry it
    for ~20 s), and a port that is open but no GCS fails after one timeout instead of twenty."""
    import ray

    try:
        from ray._raylet import GcsClient  # not public API: without it, ray.init's errors are translated
    except ImportError:
        return
    try:
        GcsClient(address=address)
    except TypeError:  # the constructor changed: leave the diagnosis to ray.init
        return
    except Exception as e:
        if isinstance(e, getattr(ray.exceptions, "AuthenticationError", ())) or _is_auth_text(str(e)):
            raise _auth_error(address) from None
        raise _unreachable(f"no Ray cluster answers at {address} ({one_line(e, 200)})") from None


def _check_dashboard(url: str) -> None:
    """One request to the dashboard's version endpoint, with this process's token when it has one."""
    request = urllib.request.Request(url.rstrip("/") + "/api/version")
    token, _ = _token_source()
    if token and _auth_mode() == "token":
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=_CONNECT_TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise _auth_error(url) from None
        raise _unreachable(f"{url} answered HTTP {e.code}, not like a Ray dashboard") from None
    except (urllib.error.URLError, OSError) as e:
        raise _unreachable(f"cannot reach the Ray dashboard at {url}: {_reason(e)}") from None
    try:
        json.loads(body)["ray_version"]
    except (ValueError, KeyError, TypeError):
        raise _unreachable(f"{url} does not answer like a Ray dashboard") from None


def _unreachable(what: str) -> ClusterError:
    return ClusterError(f"{what}; {_ADDRESS_FIX}")


def _reason(error: BaseException) -> str:
    error = getattr(error, "reason", error)  # URLError wraps the socket error
    if isinstance(error, TimeoutError):
        return f"no answer within {_CONNECT_TIMEOUT_S:.0f} s"
    if isinstance(error, socket.gaierror):
        return "unknown host name"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    return one_line(error, 200)


# ------------------------------------------------------------------------- refusals from ray.init


def _explain(error: BaseException, address: str) -> ClusterError | None:
    """The refusal behind what ``ray.init`` raised, or None for errors that are not refusals."""
    import ray

    auth_type = getattr(ray.exceptions, "AuthenticationError", ())
    chain, seen = [], error
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, auth_type) or _is_auth_text(str(e)):
            return _auth_error(address)
        if "Version mismatch" in str(e):
            return _version_error(str(e), address)
    if isinstance(error, ConnectionError):
        if address.startswith("ray://"):
            return ClusterError(
                f"the Ray Client server at {address} did not accept the connection: a missing or wrong "
                f"token is the usual cause ({_TOKEN_FIX}), else it is not the Ray Client port (10001 by "
                "default)")
        return _unreachable(f"cannot join the Ray cluster at {address} ({one_line(error, 200)})")
    return None


def _is_auth_text(text: str) -> bool:
    return "Unauthenticated" in text or "InvalidAuthToken" in text


def _version_error(text: str, address: str) -> ClusterError:
    found = re.findall(r"Ray: (\S+)\s+Python: (\S+)", text)
    if len(found) == 2:
        (cluster_ray, cluster_py), (own_ray, own_py) = found
        versions = (f"runs Ray {cluster_ray} on Python {cluster_py}, this process Ray {own_ray} on Python "
                    f"{own_py}")
    else:
        versions = f"runs other versions than this process ({one_line(text, 300)})"
    return ClusterError(
        f"the Ray cluster at {address} {versions}: a driver needs the cluster's Ray and Python versions "
        "(install them here, or run the job on the cluster with `ray job submit`); see "
        f"{README_SECTION} > {SUBSECTIONS['install']}")


def _auth_error(address: str) -> ClusterError:
    token, source = _token_source()
    if _auth_mode() != "token":
        what = ("refused the connection: this process sends no authentication token (RAY_AUTH_MODE is "
                "not 'token')")
    elif token is None:
        what = ("cannot be joined: RAY_AUTH_MODE is 'token' but this process has no authentication token "
                "(no RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
    else:
        what = (f"refused the connection: it does not accept this process's authentication token (from "
                f"{source})")
    return ClusterError(f"the Ray cluster at {address} {what}; {_TOKEN_FIX}")


def _auth_mode() -> str:
    return os.environ.get("RAY_AUTH_MODE", "").strip().lower()


def _token_source() -> tuple[str | None, str]:
    """This process's token and where it comes from, in Ray's order of precedence."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    # a RAY_AUTH_TOKEN_PATH is used alone: Ray does not fall back to the default file
    path, name = os.environ.get("RAY_AUTH_TOKEN_PATH"), "RAY_AUTH_TOKEN_PATH"
    if not path:
        path, name = str(Path.home() / ".ray" / "auth_token"), "~/.ray/auth_token"
    try:
        return Path(path).read_text().strip() or None, f"{name}, {path}"
    except OSError:
        return None, ""
