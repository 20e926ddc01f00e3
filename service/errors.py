"""Typed errors and their mapping to HTTP answers, in one place.

Every error a client can see is JSON ``{"error": {"code": ..., "message": ...}}`` with a
human sentence; nothing a client sends yields a stack trace. Unexpected exceptions are
logged with their traceback here and answered with a bare 500.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
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
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone) -> Response:
        return error_response(*CLIENT_CLOSED)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(422, "invalid_request", describe_validation(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> Response:
        return error_response(422, "invalid_request", describe_validation(exc.errors(include_url=False)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else "The request could not be served."
        if exc.status_code == 404 and message == "Not Found":
            message = f"There is no {request.url.path} here; see /docs."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        return error_response(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(*INTERNAL_ERROR)
