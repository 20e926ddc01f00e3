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
import time
from typing import Callable, Optional

import uvicorn
from pydantic_core import from_json
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import Refusal, error_body, refusal_error
from service.loopgate import LoopGate
from service.main import create_app
from service.serving import Phase
from service.settings import Settings


def log_config(level: str) -> dict:
    config = copy.deepcopy(LOGGING_CONFIG)
    for name in ("service", "models"):
        config["loggers"][name] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


# Searches with bodies up to this size are judged by the loop gate here, before any task.
GATED_BODY_BYTES = 16384

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
    body_timeout_s = 20.0
    retry_after_s = 1
    gate: Optional[LoopGate] = None  # admission of the loop's own work (service/loopgate.py)
    client_header: Optional[bytes] = None  # HLM_CLIENT_ID_HEADER, lower case

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._cycles = []  # this connection's requests not yet answered (see connection_lost)
        peer = self.client
        self._client_key = peer[0] if peer else ""
        self._arrived = 0.0
        self._counted = 0  # this connection's requests counted in the gate's pending
        self._refused_at = 0.0  # when a refusal was last written here (0: the last answer was not one)
        self._streak = 0  # immediate re-sends held in a row
        self._held: Optional[bytearray] = None
        self._body_pending = False  # a request's head is in, its body not yet
        self._body_timer = None
        self._deferred = None  # (cycle, app) of a search whose body is still coming (the gate judges it whole)
        self._in_streak = False  # its last answer was a refusal (counted in the gate's streaks)
        self._read_at = 0.0
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
        self._cancel_body_timer()
        # uvicorn marks only its newest request disconnected. With pipelined requests the one
        # running is an older one: its answer was then written to the closed transport (uvloop:
        # RuntimeError "the handler is closed", a traceback and a 500 in the metrics for a
        # client that left). Every unanswered request of the connection is marked, so its
        # answer is dropped quietly, and its scope says why (counted 499 by the edge).
        unanswered = [cycle for cycle in getattr(self, "_cycles", ()) if not cycle.response_complete]
        for cycle in unanswered:
            cycle.disconnected = True
            cycle.scope["hlm.client_gone"] = True
            cycle.message_event.set()
        if getattr(self, "_in_streak", False):
            self._leave_streak()
        # The gate forgets this connection's unanswered requests (on_response_complete will not
        # run for them), the inline ones it admitted among them.
        inline = [bool(cycle.scope.get("hlm.inline_admitted")) for cycle in unanswered]
        while getattr(self, "_counted", 0) and self.gate is not None:
            self._counted -= 1
            self.gate.answered(self._client_key, inline.pop() if inline else False)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._held is not None:  # more of a held request (reading is paused: rare)
            self._held += data
            return
        if self._refused_at and self.gate is not None:
            # The first bytes after a refusal: held on a timer if they came at once (service/loopgate.py).
            again = self.gate.at_once(time.monotonic() - self._refused_at)
            self._refused_at = 0.0
            self._streak = self._streak + 1 if again else 0
            hold = self.gate.hold_s(self._streak) if again else 0.0
            if hold:
                self._held = bytearray(data)
                self.transport.pause_reading()
                self.loop.call_later(hold, self._release)
                if self.gate.on_hold is not None:
                    self.gate.on_hold()
                return
        self._parse(data)

    def _release(self) -> None:
        data, self._held = bytes(self._held or b""), None
        if self.transport.is_closing():
            return
        self.transport.resume_reading()
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        self._read_at = time.perf_counter()  # what a refusal of this request costs is measured from here
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: a chunk that completed its head (body bytes and all) passes;
        # an unfinished head past the bound is refused before it can grow (httptools keeps it).
        if self._in_head and self._head_bytes > self.max_header_bytes and not self._refused:
            self._too_large()
        # A body still to come after this chunk: its whole read is bounded from now (a timer
        # only then: the usual request arrives whole in one chunk and costs none).
        if self._body_pending and self._body_timer is None and not self._refused:
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arrived = time.monotonic()
        self._in_head = True
        if self._head_timer is None and not self._refused:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            super().on_header(name, value)
            if self.client_header is not None and name.lower() == self.client_header:
                self._client_key = value[:128].decode("latin-1")

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
        # What the edge judges an inline search by: when it was read (time.monotonic), and by whom.
        self.scope["hlm.arrived"] = self._arrived
        self.scope["hlm.client"] = self._client_key
        self.scope["hlm.body_deadline"] = True  # this protocol bounds the body's read time (the edge need not)
        self._body_pending = True
        if self.gate is not None:
            self.gate.arrived(self._client_key)
            self._counted += 1

    def on_response_complete(self) -> None:
        done = next((c for c in self._cycles if c.response_complete), None)
        inline = False
        if done is not None:
            self._cycles.remove(done)
            inline = bool(done.scope.get("hlm.inline_admitted"))
            # A refusal (ours, or the edge's 413 and 429 answers): the next request's first
            # bytes are timed against it; any other answer ends the connection's streak of holds.
            if done.scope.get("hlm.refused"):
                self._refused_at = time.monotonic()
                if not self._in_streak and self.gate is not None:
                    self._in_streak = True
                    self.gate.streaks += 1
            else:
                self._refused_at, self._streak = 0.0, 0
                self._leave_streak()
        if self._counted and self.gate is not None:
            self._counted -= 1
            self.gate.answered(self._client_key, inline)
        super().on_response_complete()

    # ---- the loop gate: searches on an inline encoder are admitted here (service/loopgate.py) ----

    def _leave_streak(self) -> None:
        if self._in_streak and self.gate is not None:
            self._in_streak = False
            self.gate.streaks -= 1

    def _start_asgi_task(self, cycle, app) -> None:
        scope = cycle.scope
        if self.gate is not None and scope.get("path") == "/v1/search" and scope.get("method") == "POST" \
                and self._gated_length(scope):
            if cycle.more_body:  # judged once its body is whole (on_message_complete)
                self._deferred = (cycle, app)
                return
            if self._refused_search(cycle):
                return
        super()._start_asgi_task(cycle, app)

    @staticmethod
    def _gated_length(scope) -> bool:
        """A body small enough to wait for here (uvicorn pauses reading past 64 KiB until the app
        reads; a larger or chunked one goes to the edge, which asks the same gate)."""
        for name, value in scope["headers"]:
            if name == b"content-length":
                return value.isdigit() and int(value) <= GATED_BODY_BYTES
        return False

    def _refused_search(self, cycle) -> bool:
        """Refuse the search now, answered by this protocol, if the gate says so (True)."""
        try:
            data = from_json(bytes(cycle.body))
        except ValueError:
            return False  # the edge and the route say what is wrong with it
        encoder = data.get("encoder", "student") if isinstance(data, dict) else None
        if not self.gate.is_inline(encoder):
            return False
        wait = self.gate.admit(self._client_key)
        cycle.scope["hlm.gate_asked"] = True
        if wait is None:
            cycle.scope["hlm.inline_admitted"] = True
            return False
        error = refusal_error(Refusal("budget", encoder, wait_s=wait, limit_s=self.gate.budget_s, queries=1,
                                      retry_floor_s=self.retry_after_s))
        body = error_body(error.code, error.message)
        close = not cycle.keep_alive
        self.transport.write(
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"retry-after: %s\r\n%s\r\n" % (len(body), error.headers["Retry-After"].encode(),
                                             b"connection: close\r\n" if close else b"") + body)
        cycle.response_complete = True
        cycle.scope["hlm.refused"] = True
        if self.gate.on_refused is not None:
            self.gate.on_refused(encoder, time.monotonic() - self._arrived)
        if close:
            self.transport.close()
        self.gate.refused_at_cost(time.perf_counter() - self._read_at)
        self.on_response_complete()
        return True

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._cancel_body_timer()
        if self._refused:
            return
        super().on_message_complete()
        deferred, self._deferred = self._deferred, None
        if deferred is not None and not self._refused_search(deferred[0]):
            super()._start_asgi_task(*deferred)

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self._body_pending and not self.transport.is_closing():
            self._refuse(408, "body_timeout",
                         f"The request body did not arrive within {self.body_timeout_s:g} s; the connection is closed.")

    def _cancel_body_timer(self) -> None:
        if getattr(self, "_body_timer", None) is not None:
            self._body_timer.cancel()
            self._body_timer = None

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


def protocol_for(settings: Settings, gate: Optional[LoopGate] = None) -> type:
    """The bounded protocol class with this server's limits (and its app's loop gate)."""
    return type("HlmHttpProtocol", (BoundedHttpToolsProtocol,), {
        "max_header_bytes": settings.max_header_bytes,
        "header_timeout_s": settings.header_timeout_s,
        "max_connections": settings.max_connections,
        "body_timeout_s": settings.body_timeout_s,
        "retry_after_s": settings.retry_after_s,
        "gate": gate,
        "client_header": settings.client_id_header.lower().encode() if settings.client_id_header else None,
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
        http=protocol_for(settings, app.state.hlm.gate),
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
