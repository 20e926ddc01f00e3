"""GET / (the relevance playground: static files from service/static) and GET /v1/stats."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.errors import ServiceError
from service.protocol import ErrorResponse, StatsResponse
from service.serving import JSON, SearchService, dumps

STATIC = Path(__file__).resolve().parent.parent / "static"
# A fixed set, read once: nothing a client sends picks a path on disk.
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
# Only this origin's files: no CDN, no inline script, no framing by other sites.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def build_router(service: SearchService) -> APIRouter:
    router = APIRouter()
    files = {name: (STATIC / name).read_bytes() for name in ("index.html", *ASSETS)}

    @router.get("/", include_in_schema=False)
    async def playground() -> Response:
        return Response(files["index.html"], media_type="text/html; charset=utf-8", headers=HEADERS)

    @router.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise ServiceError(f"There is no /static/{name} here.", code="not_found", status=404)
        return Response(files[name], media_type=ASSETS[name], headers=HEADERS)

    guarded = {401: {"model": ErrorResponse, "description": "HLM_ADMIN_TOKEN is set and the request did not carry it."}}

    @router.get("/v1/stats", tags=["operations"], response_model=StatsResponse, responses=guarded,
                summary="p50/p99 and served rate by encoder over the last minutes (from /metrics' histogram)")
    async def stats(request: Request) -> Response:
        """The request histogram's figures over a window of up to five minutes, and per interval
        between readings; guarded like /metrics, whose numbers these are."""
        service.check_admin(request)
        return Response(dumps(service.stats()), media_type=JSON)

    return router
