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
- Last line of defence: an exception nothing else handled is logged with its traceback
  here and answered with a JSON 500 that carries no details.
- Start-up refusals: the lifespan's one-sentence reason replaces the traceback Starlette
  would hand to the server's log.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from pydantic_core import from_json

from service.errors import CLIENT_CLOSED, INTERNAL_ERROR, BodyTooLarge, ServiceError, error_body
from service.protocol import SearchRequest
from service.serving import Phase

log = logging.getLogger(__name__)

# The routes whose requests queue on an encoder, and the encoder a body that names none gets.
SHEDDABLE = frozenset({"/v1/search", "/v1/embed"})
DEFAULT_ENCODER = SearchRequest.model_fields["encoder"].default


class EdgeMiddleware:
    def __init__(self, app, *, metrics, state, max_body_bytes: int, known_paths: set[str]):
        self.app = app
        self.state = state
        self.max_body = max_body_bytes
        self.known_paths = known_paths
        self.histogram = metrics.request_duration
        self._children: dict[tuple[str, str, str], object] = {}

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
            await send(message)

        limit = self.max_body
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    announced = -1
                if announced > limit:
                    await _send_error(tracking_send, 413, "body_too_large",
                                      f"The request body has {announced} bytes, more than the limit of {limit}.")
                    self._observe(scope, status, time.perf_counter() - start)
                    return
                break

        if scope["method"] == "POST" and scope["path"] in SHEDDABLE:
            body, problem = await _read_body(receive, limit)
            if problem is None:
                problem = self._refusal(scope, body)
            if problem is not None:
                if problem.status != 499:  # 499: the client left; nobody to answer
                    await _send_error(tracking_send, problem.status, problem.code, problem.message, problem.headers)
                self._observe(scope, problem.status, time.perf_counter() - start)
                return
            app_receive = _replay(body, receive)
        else:
            app_receive = _limited(receive, limit)

        try:
            await self.app(scope, app_receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _send_error(tracking_send, *INTERNAL_ERROR)
            status = 500
        finally:
            self._observe(scope, status, time.perf_counter() - start)

    def _refusal(self, scope, body: bytes) -> Optional[ServiceError]:
        """The encoder's refusal if it would refuse this request now, else None."""
        runtime = self.state.runtime
        if runtime is None or self.state.phase is not Phase.READY:
            return None
        try:
            data = from_json(body)
        except ValueError:
            return None
        encoder = data.get("encoder", DEFAULT_ENCODER) if isinstance(data, dict) else None
        slot = runtime.slots.get(encoder) if isinstance(encoder, str) else None
        if slot is None or slot.batcher is None:
            return None
        try:
            slot.batcher.admit()
        except ServiceError as exc:
            scope["hlm.encoder"] = encoder
            return exc
        return None


class _ClientLeft(ServiceError):
    status = CLIENT_CLOSED[0]
    code = CLIENT_CLOSED[1]


async def _read_body(receive, limit: int) -> tuple[bytes, Optional[ServiceError]]:
    """The whole body (at most ``limit`` bytes), or the reason there is none."""
    receive = _limited(receive, limit)
    chunks = []
    while True:
        try:
            message = await receive()
        except BodyTooLarge as exc:
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


def _limited(receive, limit: int):
    """A receive that cuts a body off at ``limit`` bytes (chunked, or longer than announced)."""
    received = 0

    async def limited_receive():
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.")
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
