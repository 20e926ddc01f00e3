"""Admin routes: exist only when HLM_ADMIN_TOKEN is set, and then need it.

``POST /admin/reload`` takes no body and no parameters: it reloads the configured
HLM_ARTIFACT_DIR (the API never reads a path from a request). Under ``--workers N`` it asks
the supervisor to roll every worker (SIGHUP, service/workers.py) and answers 202 at once.
"""

from __future__ import annotations

import os
import signal

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from service.errors import InvalidRequest
from service.live.admin import change_keywords, get_keyword
from service.protocol import KEYWORD_ID, ErrorResponse, KeywordOut, KeywordsResponse
from service.reload import Reloader
from service.serving import SearchService, dumps


def build_router(service: SearchService, reloader: Reloader) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])

    @router.post(
        "/reload",
        summary="Load, verify and warm HLM_ARTIFACT_DIR again, then swap it in (no downtime)",
        responses={
            200: {"description": "The new artifact is served.", "content": {"application/json": {"schema": {"type": "object"}}}},
            202: {"description": "Several workers: the supervisor rolls them one at a time onto the folder (its log "
                                 "says how it went).", "content": {"application/json": {"schema": {"type": "object"}}}},
            401: {"model": ErrorResponse, "description": "Missing or wrong 'Authorization: Bearer <HLM_ADMIN_TOKEN>'."},
            409: {"model": ErrorResponse, "description": "Refused (bad artifact: the old one keeps serving), "
                                                         "already reloading, or not serving."},
            422: {"model": ErrorResponse, "description": "A body was sent; this route takes none."},
        },
    )
    async def reload(request: Request) -> Response:
        """Re-read the configured artifact folder (replace the folder or re-point its symlink
        first). Answers when the swap is done or refused; requests keep being served from
        the old artifact meanwhile."""
        service.check_admin(request)
        if await request.body():
            raise InvalidRequest("POST /admin/reload takes no body: it reloads the configured HLM_ARTIFACT_DIR.")
        parent = reloader.supervisor_pid
        if parent is not None:  # one worker must not swap alone: the supervisor replaces them all
            os.kill(parent, signal.SIGHUP)
            return Response(dumps({"status": "rolling", "workers": service.settings.workers, "supervisor_pid": parent,
                                   "artifact_dir": str(service.settings.artifact_dir)}),
                            status_code=202, media_type="application/json")
        return Response(dumps(await reloader.reload("POST /admin/reload")), media_type="application/json")

    @router.get("/reload", summary="Outcome of the last reload", responses={
        401: {"model": ErrorResponse, "description": "Missing or wrong 'Authorization: Bearer <HLM_ADMIN_TOKEN>'."}})
    async def last_reload(request: Request) -> Response:
        service.check_admin(request)
        return Response(dumps({"running": reloader.lock.locked(), "last": reloader.last}), media_type="application/json")

    @router.post(
        "/keywords",
        summary="Upsert and delete keywords while serving: applied whole, answered once durable and visible",
        responses={
            200: {"model": KeywordsResponse, "description": "Logged (fsync) and searchable."},
            401: {"model": ErrorResponse, "description": "Missing or wrong 'Authorization: Bearer <HLM_ADMIN_TOKEN>'."},
            409: {"model": ErrorResponse, "description": "Live keywords are off (no HLM_STATE_DIR)."},
            413: {"model": ErrorResponse, "description": "More than HLM_MAX_KEYWORD_ITEMS upserts + deletes."},
            422: {"model": ErrorResponse, "description": "Invalid: empty or over-long text, repeated id, bad id, "
                                                         "attribute of an unknown type, or refused by the index's "
                                                         "own rules (`change_refused`); nothing applied."},
            429: {"model": ErrorResponse, "description": "The ingest queue is full; retry after Retry-After."},
            503: {"model": ErrorResponse, "description": "Not ready; `not_applied`: the change could not be logged "
                                                         "(nothing applied); `not_visible`: logged and durable, applied "
                                                         "to the index once it answers again (resending is safe)."},
        },
    )
    async def keywords(request: Request) -> Response:
        """Body: `{"upsert": [{"id", "text", "attributes"}], "delete": [ids]}`. New texts are encoded by the
        artifact's teacher off the query path; the answer comes once the change is in the write-ahead log
        (fsync) and visible to searches."""
        return await change_keywords(service, request)

    @router.get("/keywords/{keyword_id}", summary="A keyword's stored text and attributes", responses={
        200: {"model": KeywordOut},
        401: {"model": ErrorResponse, "description": "Missing or wrong 'Authorization: Bearer <HLM_ADMIN_TOKEN>'."},
        404: {"model": ErrorResponse, "description": "No such keyword (never added, or deleted)."}})
    async def keyword(request: Request, keyword_id: str = Path(pattern=KEYWORD_ID, description="A keyword id "
                                                               "(never a file system path: ids cannot hold '/').")
                      ) -> Response:
        return await get_keyword(service, request, keyword_id)

    return router
