"""Run the app under uvicorn in this process (what ``hlm serve`` does).

One process: the encoders' threads and the index live in it. With ``--workers N`` (N > 1)
``service.workers`` runs N of these on one port (it imports this module, never the
reverse: the import contract in pyproject.toml keeps the layers one way). uvicorn finishes
in-flight requests on SIGTERM/SIGINT before the lifespan drains the batch queues.
Returns the process exit code: 0 after a clean shut-down, 2 when start-up was refused.
(After a shut-down on SIGTERM uvicorn re-raises the signal, so the process then ends
the way the signal says, as without a handler.)
"""

from __future__ import annotations

import copy
import json
import logging
import socket
from typing import Callable, Optional

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.main import create_app
from service.serving import Phase
from service.settings import Settings


def log_config(level: str) -> dict:
    config = copy.deepcopy(LOGGING_CONFIG)
    for name in ("service", "models"):
        config["loggers"][name] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds it lacks: the request head (request line
    + headers) at most ``max_header_bytes`` (431), read within ``header_timeout_s`` from the
    connection's or the request's first byte (408: slowloris), and at most
    ``max_connections`` open connections (503 to the next one). Each refusal is a JSON error
    written before the connection is closed; the ASGI app never sees the request. Idle
    keep-alive is uvicorn's ``timeout_keep_alive``; the body's read time is bounded in the
    edge middleware (``HLM_BODY_TIMEOUT_S``). Subclassed with the settings by ``protocol_for``.
    """

    max_header_bytes = 16384
    header_timeout_s = 10.0
    max_connections = 1024

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._cycles = []  # this connection's requests not yet answered (see connection_lost)
        self._head_bytes = 0
        self._in_head = True
        self._refused = False
        self._head_timer = None
        if len(self.connections) > self.max_connections:
            self._refuse(503, "too_many_connections", "The server has too many open connections; retry shortly.")
            return
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        # uvicorn marks only its newest request disconnected. With pipelined requests the one
        # running is an older one: its answer was then written to the closed transport (uvloop:
        # RuntimeError "the handler is closed", a traceback and a 500 in the metrics for a
        # client that left). Every unanswered request of the connection is marked, so its
        # answer is dropped quietly, and its scope says why (counted 499 by the edge).
        for cycle in getattr(self, "_cycles", ()):
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.scope["hlm.client_gone"] = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: a chunk that completed its head (body bytes and all) passes;
        # an unfinished head past the bound is refused before it can grow (httptools keeps it).
        if self._in_head and self._head_bytes > self.max_header_bytes and not self._refused:
            self._too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._head_timer is None and not self._refused:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._cancel_head_timer()
        self._in_head = False
        size, self._head_bytes = sum(len(n) + len(v) + 4 for n, v in self.headers) + len(self.url), 0
        if size > self.max_header_bytes:  # a whole oversized head in one chunk
            self._too_large()
            return
        super().on_headers_complete()
        self._cycles = [c for c in self._cycles if not c.response_complete] + [self.cycle]

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _too_large(self) -> None:
        self._refuse(431, "headers_too_large",
                     f"The request line and headers are larger than the limit of {self.max_header_bytes} bytes.")

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, "header_timeout",
                         f"The request headers did not arrive within {self.header_timeout_s:g} s; the connection is closed.")

    def _cancel_head_timer(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._refused = True
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body)) + body)
        self.transport.close()


def protocol_for(settings: Settings) -> type:
    """The bounded protocol class with this server's limits."""
    return type("HlmHttpProtocol", (BoundedHttpToolsProtocol,), {
        "max_header_bytes": settings.max_header_bytes,
        "header_timeout_s": settings.header_timeout_s,
        "max_connections": settings.max_connections,
    })


def serve(settings: Settings, *, sockets: Optional[list[socket.socket]] = None,
          on_ready: Optional[Callable[[dict], None]] = None, supervisor_pid: Optional[int] = None) -> int:
    """Serve until SIGTERM/SIGINT. A worker of ``service.workers`` passes ``sockets`` (listen
    there instead of binding host:port), ``on_ready`` (called with what is served once the
    artifact is loaded and warm) and its ``supervisor_pid`` (a reload asks it to roll)."""
    server: uvicorn.Server | None = None

    def on_fatal(reason: str) -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal, on_ready=on_ready, supervisor_pid=supervisor_pid)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level.lower(),
        log_config=log_config(settings.log_level),
        timeout_graceful_shutdown=30,
        server_header=False,
        http=protocol_for(settings),
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,  # if h11 were ever used
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=sockets)
    except SystemExit:  # uvicorn's own exit on a refused start-up; the reason is logged
        pass
    state = app.state.hlm.state
    if not server.started or state.phase is Phase.FAILED:
        logging.getLogger("service").error("hlm serve: not serving (%s).", state.detail or "start-up failed")
        return 2
    return 0
