"""The OpenAI API's embeddings and models routes (the `openai` client, LangChain, LlamaIndex):
POST /v1/embeddings, GET /v1/models, GET /v1/models/{model}."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from artifact.text import visible_pattern
from service.model_ids import model_objects
from service.protocol import (ERROR_RESPONSES, EmbeddingsRequest, EmbeddingsResponse, ErrorResponse, ModelList,
                              ModelObject)
from service.serving import JSON, SearchService, dumps

NOT_READY = {503: {"model": ErrorResponse, "description": "Not ready yet (loading, warming up) or shutting down."}}


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
        summary="OpenAI-compatible embeddings (model = an id of GET /v1/models, student or teacher)",
    )
    async def embeddings(request: Request) -> Response:
        """The same vectors as /v1/embed, in OpenAI's shape: `data[i].embedding` (floats or
        base64 float32), `index`, `usage`. Errors keep this service's JSON error shape."""
        return await service.embeddings(request)

    @router.get("/models", response_model=ModelList, responses=NOT_READY,
                summary="The two encoders as OpenAI models (`client.models.list()`)")
    async def models() -> Response:
        """Their ids are what `model` of /v1/embeddings takes (`student` and `teacher` too)."""
        objects = model_objects(service.runtime().manifest)
        return Response(dumps({"object": "list", "data": [objects["student"], objects["teacher"]]}), media_type=JSON)

    @router.get("/models/{model}", response_model=ModelObject,
                responses=NOT_READY | {404: {"model": ErrorResponse, "description": "Unknown model."}},
                summary="One encoder as an OpenAI model (`client.models.retrieve(id)`)")
    async def model(model: str = Path(pattern=r"^[^/]{1,256}$", description="A model id from GET /v1/models, "
                                      "`student` or `teacher` (never a file system path).")) -> Response:
        runtime = service.runtime()
        encoder = service.encoder_for_model(model)  # 404 model_not_found, as /v1/embeddings says it
        return Response(dumps(model_objects(runtime.manifest)[encoder]), media_type=JSON)

    return router
