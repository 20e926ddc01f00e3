"""GET /healthz, /readyz, /v1/info, /metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from service.filters import catalogue
from service.model_ids import model_ids
from service.protocol import ErrorResponse
from service.serving import SearchService, dumps

VERSION = "0.1.0"
try:
    from importlib.metadata import version

    VERSION = version("hlm-retrieval")
except Exception:  # not installed as a package: keep the default
    pass


def build_router(service: SearchService) -> APIRouter:
    router = APIRouter(tags=["operations"])
    guarded = {401: {"model": ErrorResponse, "description": "HLM_ADMIN_TOKEN is set and the request did not carry it."}}

    @router.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok", "phase": service.state.phase.value}

    @router.get("/readyz", summary="Readiness: artifact verified, loaded and warm",
                responses={503: {"description": "Still loading or warming up, start-up failed, or shutting down."}})
    async def readyz() -> Response:
        status, body = service.readiness()
        return JSONResponse(body, status_code=status)

    @router.get("/v1/info", summary="Manifest summary: models, dims, index parameters, eval, artifact sha; the filterable attributes",
                responses=guarded | {503: {"description": "No artifact loaded (start-up refused)."}})
    async def info(request: Request) -> Response:
        service.check_admin(request)
        runtime = service.state.runtime
        if runtime is None:
            return JSONResponse({"version": VERSION, "status": service.state.phase.value}, status_code=503)
        # This process's own count beside the sums of /metrics (under --workers N, which worker did what).
        process = {"process": {"pid": os.getpid(), "workers": service.settings.workers,
                               "queries": service.metrics.own_queries()}}
        body = ({"version": VERSION, "status": service.state.phase.value} | runtime.info()
                | {"filters": catalogue(runtime.index)} | process)
        for encoder, model_id in model_ids(runtime.manifest).items():  # what GET /v1/models lists
            body["encoders"][encoder] = {"id": model_id} | body["encoders"][encoder]
        if service.settings.admin_token is None:
            body = _public(body)
        return Response(dumps(body), media_type="application/json")

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=True,
                responses=guarded | {200: {"description": "Prometheus text exposition.",
                                           "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics(request: Request) -> Response:
        service.check_admin(request)
        body, content_type = service.metrics.exposition()
        return Response(body, media_type=content_type)

    return router


def _public(info: dict) -> dict:
    """/v1/info for anyone (no HLM_ADMIN_TOKEN configured): without the file system paths and the
    pid, which tell an attacker where things live and which process to aim at. What is served
    (sha256, models, limits) stays: clients need it."""
    artifact = {k: v for k, v in info["artifact"].items() if k not in ("path", "resolved")}
    process = {k: v for k, v in info["process"].items() if k != "pid"}
    return info | {"artifact": artifact, "process": process}
