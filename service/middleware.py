"""The HTTP edge as one pure ASGI middleware (no per-request task or thread).

- Body limit: a Content-Length over ``max_body_bytes`` is answered 413 before the body is
  read; a body that turns out larger than announced (or chunked) is cut off at the limit.
- Request metrics: ``hlm_request_duration_seconds{route,encoder,status}`` for every
  request, errors included. The route label is the route's path template (or
  "unmatched"), the encoder label what the handler put in the scope (or "none").
- Load shedding at the door: a POST to /v1/search or /v1/embed whose encoder would refuse
  it now (queue full or over its time budget) is answered 429 here, from the body bytes,
  before FastAPI's routing and middleware stack. Profiled under 3x overload, that stack
  took most of the event loop's time, and most of the requests it carried were refusals;
  the loop's time belongs to the requests it can serve. Anything this cannot judge (not
  ready, not JSON, an unknown encoder) goes on to the route, which gives the full answer.
  The body is not validated here, so while its encoder is refusing work an invalid request
  gets the 429, not its 422.
- Hostile-client bounds: a POST body must say ``Content-Type: application/json`` (415
  otherwise: a cross-site form cannot fire searches without a CORS preflight) and carry no
  ``Content-Encoding`` but ``identity`` (415); the whole body must arrive within
  ``HLM_BODY_TIMEOUT_S`` (408 and the connection closed: slow-body sockets); a path with a
  trailing slash is answered 404 here (Starlette would redirect to a URL built from the
  ``Host`` header); ``/docs`` and ``/redoc`` are 404 (their scripts come from a CDN, blank
  offline: the schema is ``/openapi.json``, the playground ``/``). Header size and header
  read time are bounded in ``service/server.py`` (before any ASGI app runs).
- Fairness and admission: the client key (``HLM_CLIENT_ID_HEADER`` or the peer address)
  goes to the batcher in a ``Ticket`` context variable; the edge counts a body's tokens
  (``Batcher.estimate``) and asks ``Batcher.admit``, then the encoder's in-flight limit
  (``ConcurrencyLimit.acquire``, released when the request ends however it ends), before the
  framework runs; a served request reports its time beyond queue wait and own cost back to its
  batcher (``observe_service``), from which the budget is derived. A search on an encoder
  answered on the event loop (the static student) has no queue: it is judged by its wait in
  the loop instead (``service/loopgate.py``). Every refusal is answered at once; a connection
  that re-sends the moment it was refused is held by the protocol before its next request is
  read (``service/server.py``), marked here by ``scope["hlm.refused"]``.
- POST /v1/search is answered here (``SearchService.search_bytes``), not by the framework.
- Last line of defence: an exception nothing else handled is logged with its traceback
  here and answered with a JSON 500 that carries no details.
- Start-up refusals: the lifespan's one-sentence reason replaces the traceback Starlette
  would hand to the server's log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

from pydantic_core import from_json
from starlette.requests import ClientDisconnect

from service.batcher import REQUEST, Ticket
from service.errors import (CLIENT_CLOSED, INTERNAL_ERROR, BodyTooLarge, Refusal, ServiceError, error_body,
                            refusal_error, render)
from service.protocol import SearchRequest
from service.serving import Phase, encoder_for_model

log = logging.getLogger(__name__)

# The routes whose requests queue on an encoder, and the encoder a body that names none gets.
SHEDDABLE = frozenset({"/v1/search", "/v1/embed", "/v1/embeddings"})
DEFAULT_ENCODER = SearchRequest.model_fields["encoder"].default
# FastAPI's documentation pages load their scripts from a CDN (blank offline): not served.
DROPPED = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
JSON_TYPES = (b"application/json",)


class BodyTimeout(ServiceError):
    status = 408
    code = "body_timeout"


class EdgeMiddleware:
    def __init__(self, app, *, metrics, state, max_body_bytes: int, known_paths: set[str], settings=None,
                 service=None):
        self.app = app
        # POST /v1/search answered here (``SearchService.search_bytes``), not by the framework:
        # FastAPI's routing, request object and response classes cost more per search than the
        # static student's encode and a small index's search together (issue #29).
        self.service = service
        self.state = state
        self.max_body = max_body_bytes
        self.known_paths = known_paths
        self.histogram = metrics.request_duration
        self.rejected = metrics.rejected
        self._children: dict[tuple[str, str, str], object] = {}
        self._settings = settings  # None: the runtime's (the app factory passes none)
        self.gate = getattr(service, "gate", None)  # the loop's admission (service/loopgate.py)

    def _setting(self, name: str, default):
        settings = self._settings
        if settings is None:
            runtime = self.state.runtime
            settings = getattr(runtime, "settings", None)
        return getattr(settings, name, default) if settings is not None else default

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "http":
            return await self._http(scope, receive, send)
        if kind == "lifespan":
            return await self.app(scope, receive, self._lifespan_send(send))
        return await self.app(scope, receive, send)

    def _lifespan_send(self, send):
        async def lifespan_send(message):
            if message["type"] == "lifespan.startup.failed" and self.state.startup_error:
                message = {"type": message["type"], "message": self.state.startup_error}
            await send(message)

        return lifespan_send

    def _observe(self, scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path is None:
            path = scope["path"] if scope["path"] in self.known_paths else "unmatched"
        key = (path, scope.get("hlm.encoder", "none"), str(status))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.histogram.labels(*key)
        child.observe(seconds)

    async def _http(self, scope, receive, send):
        start = time.perf_counter()
        scope["hlm.start"] = start
        status = 500
        started = False

        async def tracking_send(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                if status in (413, 429):  # the protocol times this connection's next request against it
                    scope["hlm.refused"] = True
            await send(message)

        limit = self.max_body
        client_header = self._setting("client_id_header", None)
        client_header = client_header.lower().encode() if client_header else None
        announced, ctype, encoding, chunked, client = 0, None, None, False, None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    announced = -1
            elif name == b"content-type":
                ctype = value
            elif name == b"content-encoding":
                encoding = value
            elif name == b"transfer-encoding":
                chunked = True
            elif name == client_header:
                client = value[:128].decode("latin-1")
        if client is None:
            client = scope.get("hlm.client")  # the protocol's key (service/server.py): the same rule
        if client is None:
            peer = scope.get("client")
            client = peer[0] if peer else ""
        problem = self._head_problem(scope, announced, ctype, encoding, chunked, limit)
        if problem is not None:
            await _send_error(tracking_send, *problem)
            self._observe(scope, status, time.perf_counter() - start)
            return

        ticket = Ticket(client)
        REQUEST.set(ticket)  # this request's own task: no other request sees it
        # Our HTTP protocol bounds the body's read time itself (service/server.py); elsewhere (a
        # test client, another server) the edge does, with a timeout around each read.
        deadline = (None if scope.get("hlm.body_deadline")
                    else asyncio.get_running_loop().time() + self._setting("body_timeout_s", 20.0))
        if scope["method"] == "POST" and scope["path"] in SHEDDABLE:
            body, problem = await _read_body(receive, limit, deadline)
            if problem is None:
                problem = self._refusal(scope, body, client)
            if problem is not None:
                if problem.status != 499:  # 499: the client left; nobody to answer
                    await _send_error(tracking_send, problem.status, problem.code, problem.message, problem.headers)
                self._observe(scope, problem.status, time.perf_counter() - start)
                return
            app_receive = _replay(body, receive)
        else:
            app_receive = _limited(receive, limit, deadline)

        try:
            if self.service is not None and scope["path"] == "/v1/search" and scope["method"] == "POST":
                await self._search(scope, body, receive, tracking_send)
            else:
                await self.app(scope, app_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as exc:  # raised by our receive where no handler caught it
            if not started:
                await _send_error(tracking_send, exc.status, exc.code, exc.message, exc.headers)
        except Exception as exc:
            if isinstance(exc, ClientDisconnect) or scope.get("hlm.client_gone"):
                status = 499  # the client left mid-body: nobody to answer, and not a server error
            else:
                log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
                if not started:
                    await _send_error(tracking_send, *INTERNAL_ERROR)
                status = 500
        finally:
            if ticket.limit is not None:
                ticket.limit.release(client)
            if scope.get("hlm.client_gone"):  # left before its answer was written (server.py drops it)
                status = 499
            elapsed = time.perf_counter() - start
            self._observe(scope, status, elapsed)
            if status == 200 and ticket.batcher is not None and ticket.queue_s is not None:
                # Beyond its queue wait and its own cost: HTTP work, loop lag, batch-mates. (Counting
                # only HTTP work, the 3x open loop kept p99 27 ms; this, 19 ms: one run each.)
                ticket.batcher.observe_service(max(0.0, elapsed - ticket.queue_s - ticket.cost_s))

    async def _search(self, scope, body: bytes, receive, send) -> None:
        """POST /v1/search, answered without the framework: the same bytes the route gives."""
        started, waited = time.perf_counter(), time.monotonic() - scope.get("hlm.arrived", time.monotonic())
        try:
            answer = await self.service.search_bytes(scope, body, receive)
            if scope.get("hlm.inline_admitted") and self.gate is not None:  # what the next admissions expect
                self.gate.observe(time.perf_counter() - started, waited)
        except Exception as exc:  # noqa: BLE001 - rendered like the app's handlers render it
            error = render(exc)
            if error is None:
                raise  # a bug: the caller's last-resort 500, logged with its traceback
            await _send_error(send, *error)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    def _head_problem(self, scope, announced: int, ctype, encoding, chunked: bool, limit: int):
        """(status, code, sentence) for a request refused on its head alone, else None."""
        path = scope["path"]
        if announced > limit:
            return 413, "body_too_large", f"The request body has {announced} bytes, more than the limit of {limit}."
        if path in DROPPED or (path != "/" and path.endswith("/")):
            # No redirect to the slash-less path: Starlette builds its target from the Host header.
            return 404, "not_found", f"There is no {path} here; see /openapi.json."
        if scope["method"] == "POST" and (announced > 0 or chunked):
            if encoding is not None and encoding.strip().lower() != b"identity":
                return (415, "unsupported_media_type",
                        f"Content-Encoding {encoding.decode('latin-1')[:40]!r} is not supported; send the body uncompressed.")
            media = (ctype or b"").split(b";", 1)[0].strip().lower()
            if media not in JSON_TYPES:
                shown = media.decode("latin-1")[:60] if media else "none"
                return (415, "unsupported_media_type",
                        f"The body must be JSON with 'Content-Type: application/json' (got {shown}).")
        return None

    def _refusal(self, scope, body: bytes, client: str) -> Optional[ServiceError]:
        """The encoder's refusal if it would refuse this request now, else None; when it
        admits, the request is counted into the encoder's in-flight limit (the ticket
        carries the count to ``_http``'s release)."""
        runtime = self.state.runtime
        if runtime is None or self.state.phase is not Phase.READY:
            return None
        if scope.get("hlm.gate_asked"):
            # The HTTP protocol judged this search already (an inline encoder's, admitted): no
            # second parse of its body here (service/server.py ``_refused_search``).
            return None
        try:
            data = from_json(body)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        if scope["path"] == "/v1/embeddings":  # OpenAI's shape: `model` names the encoder, `input` the texts
            model = data.get("model", DEFAULT_ENCODER)
            encoder = encoder_for_model(runtime, model) if isinstance(model, str) else None
            texts = data.get("input")
            if isinstance(texts, str):
                texts = [texts]
        else:
            encoder = data.get("encoder", DEFAULT_ENCODER)
            texts = data.get("queries")
            if texts is None:
                texts = [data.get("query")]
        slot = runtime.slots.get(encoder) if isinstance(encoder, str) else None
        if slot is None or slot.batcher is None:
            return None
        if slot.inline and scope["path"] == "/v1/search":
            # Judged by the loop gate (service/loopgate.py): in the protocol, before any task, for
            # the usual small body; here for a large one the protocol did not wait for.
            if self.gate is None or "hlm.arrived" not in scope:
                return None
            scope["hlm.gate_asked"] = True
            wait = self.gate.admit(client)
            if wait is None:
                scope["hlm.inline_admitted"] = True
                return None
            scope["hlm.encoder"] = encoder
            self.rejected.labels(encoder, "budget").inc()
            return refusal_error(Refusal("budget", encoder, wait_s=wait, limit_s=self.gate.budget_s, queries=1,
                                         retry_floor_s=self._setting("retry_after_s", 1)))
        if not isinstance(texts, list) or not texts or len(texts) > self._setting("max_queries", 64) \
                or not all(isinstance(t, str) for t in texts):
            return None  # the route explains what is wrong with it
        counts = slot.batcher.estimate(texts)
        ticket = REQUEST.get()
        if ticket is not None:
            ticket.counts = counts  # submit reuses them (the texts differ only by clean-up)
        try:
            slot.batcher.admit(counts, client)
            if slot.limit is not None and ticket is not None:  # the ticket carries it to the release
                slot.limit.acquire(client)
                ticket.limit = slot.limit
        except Refusal as refusal:
            scope["hlm.encoder"] = encoder
            return refusal_error(refusal)
        except ServiceError as exc:
            scope["hlm.encoder"] = encoder
            return exc
        return None


class _ClientLeft(ServiceError):
    status = CLIENT_CLOSED[0]
    code = CLIENT_CLOSED[1]


async def _read_body(receive, limit: int, deadline: Optional[float] = None) -> tuple[bytes, Optional[ServiceError]]:
    """The whole body (at most ``limit`` bytes, before ``deadline``), or the reason there is none."""
    receive = _limited(receive, limit, deadline)
    chunks = []
    while True:
        try:
            message = await receive()
        except (BodyTooLarge, BodyTimeout) as exc:
            return b"", exc
        if message["type"] == "http.disconnect":
            return b"", _ClientLeft("The client closed the connection before sending its body.")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _replay(body: bytes, receive):
    """A receive that hands the app the body already read, then listens on (disconnects)."""
    sent = False

    async def replay_receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay_receive


def _limited(receive, limit: int, deadline: Optional[float] = None):
    """A receive that cuts a body off at ``limit`` bytes (chunked, or longer than announced)
    and, until the body is complete, at ``deadline`` (loop time): a slow-body socket gets
    408 and is closed. After the body it is a plain receive (disconnect watching)."""
    received = 0
    complete = deadline is None

    async def limited_receive():
        nonlocal received, complete
        if complete:
            message = await receive()
        else:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout("The request body did not arrive in time; the connection is closed.",
                                  headers={"Connection": "close"}) from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.")
            if not message.get("more_body", False):
                complete = True
        else:
            complete = True
        return message

    return limited_receive


async def _send_error(send, status: int, code: str, message: str, headers: Optional[dict] = None) -> None:
    body = error_body(code, message)
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        + [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()],
    })
    await send({"type": "http.response.body", "body": body})
