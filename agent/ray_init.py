"""Ray, started or joined once by the search driver (and nowhere else).

Ray 2.60's core servers (GCS, raylet, workers) listen on every interface whatever node IP they
are given; its token authentication (on by default, never turned off here) is what keeps others
out, so a warning is logged when a user has turned it off.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import Any

from agent.config import SearchConfig

logger = logging.getLogger(__name__)


def needs_ray(config: SearchConfig) -> bool:
    """Whether a search with ``config`` uses Ray: RLlib (ppo), Ray Tune (tpe), or the Ray
    executor."""
    return config.agent in ("ppo", "tpe") or config.executor == "ray" or bool(config.address)


def init_ray(config: SearchConfig) -> None:
    """Join ``config.address``, or start the embedded local instance (no dashboard).

    Does nothing when Ray is already initialised in this process.
    """
    import ray

    if ray.is_initialized():
        return
    if config.address:
        host = config.address.removeprefix("ray://").rsplit(":", 1)[0]
        local: dict[str, Any] = {}
        if not config.address.startswith("ray://") and _is_loopback(host):
            # a cluster on this machine's loopback (its node IP): the driver joins it there
            local["_node_ip_address"] = host
        ray.init(address=config.address, log_to_driver=False, **local)
    else:
        ray.init(
            num_cpus=max(2, os.cpu_count() or 1),
            include_dashboard=False,
            log_to_driver=False,
        )
    warn_if_unauthenticated()


CONNECT_TIMEOUT_S = 10.0
"""How long `check_reachable` waits for a cluster's head to answer."""


def check_reachable(address: str | None) -> None:
    """Fail at once, naming the address, when nothing answers at a ``host:port`` cluster
    address (``ray.init`` would retry for minutes and ignore Ctrl-C). ``auto`` and addresses
    without a port are left to Ray.

    Raises:
        agent.config.ConfigError: Nothing accepts a TCP connection there within
            `CONNECT_TIMEOUT_S`.
    """
    import socket

    from agent.config import ConfigError

    if not address or address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError, OverflowError) as exc:
        raise ConfigError(
            f"--address {address}: nothing answers there ({exc}); start the cluster's head "
            "(`ray start --head`) or fix the address"
        ) from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def warn_if_unauthenticated() -> None:
    """Ray's servers listen beyond loopback; its token authentication is what guards them."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    if not is_token_auth_enabled():
        logger.warning(
            "Ray token authentication is OFF (RAY_AUTH_MODE=disabled?): anyone who can reach "
            "this machine's Ray ports can run code on it. Unset RAY_AUTH_MODE to turn it on."
        )
