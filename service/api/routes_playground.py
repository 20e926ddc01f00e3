"""GET / (the relevance playground: static files from service/static), GET /v1/stats and
GET /v1/judgments (the artifact's judged dev queries, for the playground's labels)."""

from __future__ import annotations

from pathlib import Path

from typing import Optional

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from artifact.text import normalise_text, visible_pattern
from service import judgments
from service.errors import InvalidRequest, ServiceError
from service.protocol import ErrorResponse, JudgmentsResponse, StatsResponse
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

    # The schema says what the checks below refuse (documentation: the sentences are ours).
    query_bounds = {"maxLength": service.settings.max_query_chars, "pattern": visible_pattern()}

    @router.get("/v1/judgments", tags=["operations"], response_model=JudgmentsResponse,
                responses={422: {"model": ErrorResponse, "description": "The query is empty or too long."},
                           503: {"model": ErrorResponse, "description": "Not ready yet, or shutting down."}},
                summary="Relevance labels of a judged dev query (the artifact's own), or the list of them")
    async def judged(query: Optional[str] = Query(None, description="A query, cleaned up as a search's is.",
                                                  json_schema_extra=query_bounds)) -> Response:
        """`query` is cleaned up as a search's query is, then looked up among the dev split's
        judged queries that the build wrote into the artifact: the labels (1 to 3) of the judged
        products this artifact indexes, by keyword id. Without `query`: every judged query."""
        runtime = service.runtime()
        if query is not None:
            if len(query) > service.settings.max_query_chars:
                raise InvalidRequest(f"Invalid request: query has {len(query)} characters, more than the limit of "
                                     f"{service.settings.max_query_chars}.")
            query = normalise_text(query)
            if not query:
                raise InvalidRequest("Invalid request: query is empty or whitespace only.")
        return Response(dumps(judgments.answer(runtime, query)), media_type=JSON)

    return router
