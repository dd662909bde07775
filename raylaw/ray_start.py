"""Ray start-up for a sweep: join a running cluster, or start an embedded Ray on loopback.

``prepare_ray`` runs before Ray is imported (it sets what Ray reads at import) and checks the
address; ``start_ray`` then joins or starts Ray. A sweep calls each once; ``init_ray`` does
both, for scripts.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from typing import Any

from raylaw.errors import RaylawError


def check_address(address: str) -> None:
    """Fail fast, in one line, when a Ray address cannot be reached (``ray.init`` waits long)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    if address in ("auto", "local") or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass
    except (OSError, ValueError) as e:
        raise RaylawError(f"--address {address}: cannot reach a Ray cluster there "
                          f"({e.strerror if isinstance(e, OSError) else e})") from None


def loopback_ray_env(address: str | None) -> None:
    """Keep an embedded (or 127.0.0.1) Ray on loopback; call before Ray is imported.

    Ray on Linux replaces 127.0.0.1 by the machine's address (and then listens on all
    interfaces) unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is 0, which it reads at import;
    the variable must not be set when joining a remote cluster.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    host = (address or "").split("://", 1)[-1].rsplit(":", 1)[0]
    if not address or host in ("127.0.0.1", "localhost"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def prepare_ray(address: str | None) -> str | None:
    """The cluster a sweep joins (``address``, else ``RAY_ADDRESS``, which ``ray job submit``
    sets; None: an embedded local Ray), checked to be reachable, with an embedded Ray kept on
    loopback. Call before Ray is imported."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    loopback_ray_env(address)
    if address:
        check_address(address)
    return address


def start_ray(address: str | None, dashboard: bool = False) -> None:
    """Join the cluster at ``address`` (as ``prepare_ray`` returned it), or else start an
    embedded local Ray that listens on 127.0.0.1 only; nothing when Ray is already up.

    ``dashboard``: the embedded Ray also serves its dashboard (on 127.0.0.1, when
    ``ray[default]`` is installed), whose state API Ray Train's placement-group cleaner polls
    (multi-worker trials); without it that cleaner logs a warning every second.
    """
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    extra: dict[str, Any] = {"include_dashboard": False}
    if dashboard and importlib.util.find_spec("aiohttp_cors") is not None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        extra = {"include_dashboard": True, "dashboard_host": "127.0.0.1",
                 "dashboard_port": port}
        # Ray's processes inherit it: their state-API calls go to this Ray, never to another
        # Ray instance on the machine
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(address="local", _node_ip_address="127.0.0.1", configure_logging=False, **extra)


def init_ray(address: str | None, dashboard: bool = False) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), or start an embedded local Ray on
    127.0.0.1: ``prepare_ray`` then ``start_ray``."""
    start_ray(prepare_ray(address), dashboard)
