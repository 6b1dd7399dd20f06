"""Is the model hub reachable? Asked once per process and quickly, so that a machine without
network gets one clear line instead of a minute of silent download retries."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 2.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _switched_off() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_VARIABLES)


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """True when a TCP connection to the hub opens within ``CONNECT_TIMEOUT_S`` (asked once)."""
    if _switched_off():
        return False
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError):
        return False
    return True


def use_hub_offline() -> None:
    """Make huggingface_hub serve only its local cache: a cached model still loads, a missing one
    fails at once (huggingface_hub reads this flag at call time)."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
