"""POST /v1/embeddings, the OpenAI embeddings API (the `openai` client, LangChain, LlamaIndex)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from artifact.text import visible_pattern
from service.protocol import ERROR_RESPONSES, EmbeddingsRequest, EmbeddingsResponse, ErrorResponse
from service.serving import SearchService


def build_router(service: SearchService) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"])
    schema = EmbeddingsRequest.model_json_schema()
    # What is served, with this server's bounds: a text or a list of texts, none left empty by
    # the clean-up. (Token-id arrays parse only to get a sentence saying what to send instead.)
    text = {"type": "string", "maxLength": service.settings.max_query_chars, "pattern": visible_pattern()}
    schema["properties"]["input"]["anyOf"] = [
        text, {"type": "array", "items": text, "minItems": 1, "maxItems": service.settings.max_queries}]

    @router.post(
        "/embeddings",
        response_model=EmbeddingsResponse,
        responses=ERROR_RESPONSES | {404: {"model": ErrorResponse, "description": "Unknown model name."}},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}},
        summary="OpenAI-compatible embeddings (model = student or teacher)",
    )
    async def embeddings(request: Request) -> Response:
        """The same vectors as /v1/embed, in OpenAI's shape: `data[i].embedding` (floats or
        base64 float32), `index`, `usage`. Errors keep this service's JSON error shape."""
        return await service.embeddings(request)

    return router
