"""The port of ``hlm serve --workers N``: shared by its own workers, by nobody else.

Each worker listens on a socket of its own bound with ``SO_REUSEPORT`` (service/workers.py
says why). The kernel lets any process of the same user bind the port that way, so a second
``hlm serve --workers`` started on the same port would silently take a share of the
connections (issue #28, 10). Two checks make the supervisor refuse it before any worker starts:

- a claim: an abstract unix socket named after the port. Its namespace is the network
  namespace's, exactly the scope in which two listeners share a port (a pod's containers
  share one); the kernel frees it when the process dies, so no stale lock file can outlive a
  crash or block a restart. It sees another hlm supervisor at any stage, loading included.
- a probe: a connection to the port. Whatever already listens on it with ``SO_REUSEPORT``
  (another server of the same user, an hlm older than this check) answers it.

A single-process server (no ``SO_REUSEPORT``) already holding the port makes the
reservation's bind fail, as before.
"""

from __future__ import annotations

import errno
import socket
from typing import Optional

PROBE_TIMEOUT_S = 1.0  # a local listener accepts at once; a refused connection is immediate


class PortTaken(Exception):
    """Another server already has the port; the message is one sentence."""


def bind_shared(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT, not listening yet."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def claim(host: str, port: int) -> Optional[socket.socket]:
    """Claim ``port`` for this supervisor (keep the socket open while serving); PortTaken if
    another hlm supervisor holds it. None where abstract unix sockets do not exist (not Linux)."""
    if not hasattr(socket, "AF_UNIX"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0hlm-serve-port-{port}")  # by port: 0.0.0.0 and 127.0.0.1 overlap
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortTaken(f"another hlm serve --workers already serves port {port} on this host (its network "
                            f"namespace); stop it or choose another port") from None
        return None  # no abstract namespace here: the probe below still runs
    return sock


def probe(host: str, port: int) -> None:
    """PortTaken if something already accepts connections on host:port."""
    target = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(PROBE_TIMEOUT_S)
        try:
            sock.connect((target, port))
        except OSError:  # refused (nobody listens), or unreachable: nothing to share the port with
            return
    raise PortTaken(f"something already listens on {host}:{port} (a server sharing it through SO_REUSEPORT "
                    f"would split the traffic); stop it or choose another port")
