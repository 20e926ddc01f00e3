"""The HTTP edge as one pure ASGI middleware (no per-request task or thread).

- Body limit: a Content-Length over ``max_body_bytes`` is answered 413 before the body is
  read; a body that turns out larger than announced (or chunked) is cut off at the limit.
- Request metrics: ``hlm_request_duration_seconds{route,encoder,status}`` for every
  request, errors included. The route label is the route's path template (or
  "unmatched"), the encoder label what the handler put in the scope (or "none").
- Last line of defence: an exception nothing else handled is logged with its traceback
  here and answered with a JSON 500 that carries no details.
- Start-up refusals: the lifespan's one-sentence reason replaces the traceback Starlette
  would hand to the server's log.
"""

from __future__ import annotations

import logging
import time

from service.errors import BodyTooLarge, error_body

log = logging.getLogger(__name__)


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

        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.")
            return message

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _send_error(tracking_send, 500, "internal_error",
                                  "The server hit an internal error; it has been logged.")
            status = 500
        finally:
            self._observe(scope, status, time.perf_counter() - start)


async def _send_error(send, status: int, code: str, message: str) -> None:
    body = error_body(code, message)
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
