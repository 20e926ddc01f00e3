"""Typed errors and their mapping to HTTP answers, in one place.

Every error a client can see is JSON ``{"error": {"code": ..., "message": ...}}`` with a
human sentence; nothing a client sends yields a stack trace. Unexpected exceptions are
logged with their traceback here and answered with a bare 500.
"""

from __future__ import annotations

import json
import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with an HTTP status, a stable machine code and a one-sentence message."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.headers = headers or {}


class InvalidRequest(ServiceError):
    status = 422
    code = "invalid_request"


class BodyTooLarge(ServiceError):
    status = 413
    code = "body_too_large"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class Overloaded(ServiceError):
    """The encoder's queue is full: shed load at once rather than queue without bound."""

    status = 429
    code = "overloaded"


class NotReady(ServiceError):
    status = 503
    code = "not_ready"


class ClientGone(Exception):
    """The client disconnected before its answer was computed."""


class Refusal(Exception):
    """Why an encoder's batcher will not take a job now: typed, with no HTTP in it.

    ``reason`` is also the ``hlm_rejected_total`` label: ``budget`` (the work ahead of the
    job would keep it past its encoder's waiting budget), ``client_share`` (that work is
    mostly the same client's own), ``queue_full`` (the queue holds ``queue_size`` requests),
    ``too_large`` (the job alone would hold the encoder longer than one request may),
    ``shutting_down``; and, from the edge's limit (``service/concurrency.py``), ``concurrency``
    (the encoder already carries as many requests as it answers in 0.35 of its SLO at its
    measured rate). ``refusal_error`` below turns it into the HTTP answer, in one place.
    """

    def __init__(self, reason: str, encoder: str, *, wait_s: float = 0.0, limit_s: float = 0.0,
                 cost_s: float = 0.0, queued: int = 0, tokens: int = 0, queries: int = 0,
                 retry_floor_s: int = 1):
        super().__init__(reason)
        self.reason = reason
        self.encoder = encoder
        self.wait_s = wait_s  # expected wait before the job would start (s)
        self.limit_s = limit_s  # the bound it broke (s)
        self.cost_s = cost_s  # the job's own estimated encoder time (s)
        self.queued = queued
        self.tokens = tokens
        self.queries = queries
        self.retry_floor_s = retry_floor_s


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def refusal_error(refusal: Refusal) -> ServiceError:
    """The HTTP answer to a refusal: status, code (= reason), one sentence, Retry-After.

    Retry-After is the expected wait rounded up to whole seconds (HTTP's unit), at least
    ``retry_floor_s`` (HLM_RETRY_AFTER_S, 1 by default).
    """
    r, name = refusal, refusal.encoder
    retry = {"Retry-After": str(max(r.retry_floor_s, math.ceil(r.wait_s)))}
    if r.reason == "too_large":
        return ServiceError(
            f"This request would hold the {name} encoder for about {_ms(r.cost_s)} ({r.queries} queries, "
            f"{r.tokens} tokens after truncation), more than the {_ms(r.limit_s)} one request may take; "
            "send fewer or shorter queries per request.", code="too_large", status=413)
    if r.reason == "shutting_down":
        return NotReady(f"The {name} encoder is shutting down.", code="shutting_down", headers=retry)
    if r.reason == "queue_full":
        return Overloaded(f"The {name} encoder's queue is full ({r.queued} requests); retry shortly.",
                          code="queue_full", headers=retry)
    if r.reason == "concurrency":
        return Overloaded(
            f"The {name} encoder is already answering {r.queued} requests, as many as it can answer within "
            f"{_ms(r.limit_s)} at its measured rate; retry shortly.", code="concurrency", headers=retry)
    if r.reason == "client_share":
        return Overloaded(
            f"Your own requests already queued on the {name} encoder would keep this one waiting about "
            f"{_ms(r.wait_s)}, more than its {_ms(r.limit_s)} budget; wait for their answers before sending more.",
            code="client_share", headers=retry)
    return Overloaded(
        f"The {name} encoder is overloaded (about {_ms(r.wait_s)} of work ahead of this request, more than "
        f"its {_ms(r.limit_s)} budget); retry shortly.", code="budget", headers=retry)


# The two answers rendered both by the app's handlers and by the edge middleware (which runs
# outside FastAPI): one definition each, so both places say the same thing.
INTERNAL_ERROR = (500, "internal_error", "The server hit an internal error; it has been logged.")
# Nobody reads this answer; 499 (nginx's "client closed request") marks it in the metrics.
CLIENT_CLOSED = (499, "client_closed_request", "The client closed the connection before the answer.")


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False).encode()


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status, headers=headers, media_type="application/json")


def describe_validation(errors: list[dict]) -> str:
    """One sentence from pydantic's error list: where and what, for the first few errors."""
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "body"
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") in ("json_invalid", "json_type"):
            return f"The request body is not valid JSON ({err.get('ctx', {}).get('error', msg)})."
        parts.append(f"{loc}: {msg}" if loc != "body" else msg)
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "Invalid request: " + "; ".join(parts) + more + "."


def render(exc: BaseException) -> tuple[int, str, str, dict[str, str]] | None:
    """(status, code, sentence, headers) of an error a request handler raised, or None for an
    unexpected one (a bug: the caller logs it and answers ``INTERNAL_ERROR``). The one mapping
    behind both the app's handlers and the edge, which answers most searches itself."""
    if isinstance(exc, ServiceError):
        return exc.status, exc.code, exc.message, exc.headers
    if isinstance(exc, Refusal):
        error = refusal_error(exc)
        return error.status, error.code, error.message, error.headers
    if isinstance(exc, (ClientGone, ClientDisconnect)):  # the client left (mid-body: Starlette's): not our error
        return (*CLIENT_CLOSED, {})
    if isinstance(exc, RequestValidationError):
        return 422, "invalid_request", describe_validation(list(exc.errors())), {}
    if isinstance(exc, ValidationError):
        return 422, "invalid_request", describe_validation(exc.errors(include_url=False)), {}
    return None


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    503: "unavailable",
}


def install_handlers(app: FastAPI) -> None:
    async def _rendered(request: Request, exc: Exception) -> Response:
        return error_response(*render(exc))

    for kind in (ServiceError, Refusal, ClientGone, ClientDisconnect, RequestValidationError, ValidationError):
        app.add_exception_handler(kind, _rendered)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else "The request could not be served."
        if exc.status_code == 404 and message == "Not Found":
            message = f"There is no {request.url.path} here; see /openapi.json."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        return error_response(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(*INTERNAL_ERROR)
