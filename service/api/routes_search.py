"""POST /v1/search and POST /v1/embed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from artifact.text import visible_pattern
from service.protocol import ERROR_RESPONSES, attributes_schema, EmbedRequest, EmbedResponse, SearchRequest, SearchResponse
from service.serving import SearchService


def _body(model, settings) -> dict:
    # The body is parsed by pydantic straight from the bytes (one pass, strict types);
    # this only documents it, with this server's configured bounds filled in.
    schema = model.model_json_schema()
    props = schema["properties"]
    bounds = {
        # pattern: a query left empty by the clean-up (artifact/text.py) is refused
        "query": {"maxLength": settings.max_query_chars, "pattern": visible_pattern()},
        "queries": {"maxItems": settings.max_queries},
        "k": {"minimum": 1, "maximum": settings.max_k},
        "ef": {"minimum": 1, "maximum": settings.max_ef},
    }
    if "filter" in props:  # a filter names 1 to max_attributes attributes, each as check_attributes accepts
        props["filter"]["anyOf"] = [attributes_schema(settings.max_attributes, lists=True) | {"minProperties": 1},
                                    {"type": "null"}]
    for name, extra in bounds.items():
        if name not in props:
            continue
        for option in props[name].get("anyOf", [props[name]]):
            if option.get("type") in ("string", "integer", "array"):
                option.update(extra)
                if option["type"] == "array":
                    option["items"].update(maxLength=settings.max_query_chars, pattern=visible_pattern())
    # The oneOf branches (`query` or `queries`, not null) carry the same bounds: a generator
    # that takes a branch's property schema alone would otherwise drop them.
    for branch in schema.get("oneOf", []):
        for name, prop in branch.get("properties", {}).items():
            option = next(o for o in props[name].get("anyOf", [props[name]]) if o.get("type") == prop.get("type"))
            branch["properties"][name] = dict(option)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def build_router(service: SearchService) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["search"])

    @router.post(
        "/search",
        response_model=SearchResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=_body(SearchRequest, service.settings),
        summary="Keywords for one query or a batch of queries",
    )
    async def search(request: Request) -> Response:
        """Encode the queries with the student (default) or the teacher and return the
        k best keywords of each, best first, with the time spent in queue, encoder and index."""
        return await service.search(request)

    @router.post(
        "/embed",
        response_model=EmbedResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=_body(EmbedRequest, service.settings),
        summary="Query vectors in the teacher's space",
    )
    async def embed(request: Request) -> Response:
        """The L2-normalised vectors the chosen encoder gives the queries."""
        return await service.embed(request)

    return router
