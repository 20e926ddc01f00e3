"""Where load may be sent.

Load is only ever aimed at this machine unless the user explicitly names another host and
says so (``allow_remote=True``): a typo in a URL must not turn into a load test of someone
else's server.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

DEFAULT_URL = "http://127.0.0.1:8000"


class TargetError(ValueError):
    """The URL is not one we are allowed to send load to."""


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_target(url: str, *, allow_remote: bool = False) -> str:
    """Return the base URL (scheme://host:port, no trailing slash) or raise TargetError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError(f"not an http(s) URL: {url!r}")
    if not allow_remote and not is_loopback_host(parts.hostname):
        raise TargetError(
            f"{parts.hostname} is not a loopback address; load goes to 127.0.0.1 unless "
            "you pass allow_remote=True (--allow-remote) for a host you are responsible for"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def endpoint(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path.lstrip("/")
