"""``POST /admin/keywords`` and ``GET /admin/keywords/{id}``: body bytes -> checked change -> ingest thread."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.errors import InvalidRequest, NotReady, Overloaded, ServiceError
from service.live.keywords import ChangeRefused, LiveUnavailable, NotVisible
from service.protocol import KeywordsRequest
from service.serving import JSON, SearchService, dumps, parse


class LiveOff(ServiceError):
    status = 409
    code = "live_keywords_off"


class KeywordNotFound(ServiceError):
    status = 404
    code = "keyword_not_found"


class TooManyItems(ServiceError):
    status = 413
    code = "too_many_items"


def _live(service: SearchService):
    live = service.runtime().live
    if live is None:
        raise LiveOff("Live keyword changes are off: the service has no state folder (set HLM_STATE_DIR), "
                      "so a change could not be made durable.")
    return live


async def change_keywords(service: SearchService, request: Request) -> Response:
    service.check_admin(request)
    body = await request.body()
    metrics = service.metrics
    try:
        req: KeywordsRequest = parse(KeywordsRequest, body, {"settings": service.settings})
    except Exception:
        metrics.keyword_changes.labels("upsert", "refused").inc()
        raise
    most = service.settings.max_keyword_items
    if len(req.upsert) + len(req.delete) > most:
        metrics.keyword_changes.labels("upsert", "refused").inc(len(req.upsert))
        metrics.keyword_changes.labels("delete", "refused").inc(len(req.delete))
        raise TooManyItems(f"At most {most} upserts and deletes in one request, got {len(req.upsert) + len(req.delete)}; "
                           "split the change (HLM_MAX_KEYWORD_ITEMS).")
    live = _live(service)
    try:
        future = live.submit([k.id for k in req.upsert], [k.text for k in req.upsert],
                             [k.attributes for k in req.upsert], list(req.delete))
    except LiveUnavailable as exc:
        raise Overloaded(str(exc), headers={"Retry-After": str(service.settings.retry_after_s)}) from None
    try:
        # Not tied to the client's connection: the change is applied whole even if the client
        # leaves, and its answer (or a retry's) says where it stands.
        result: dict[str, Any] = await future
    except LiveUnavailable as exc:  # not logged: nothing applied
        raise NotReady(str(exc), code="not_applied", headers={"Retry-After": str(service.settings.retry_after_s)}) from None
    except NotVisible as exc:  # logged and durable, the index takes it once it answers again
        raise NotReady(str(exc), code="not_visible", headers={"Retry-After": str(service.settings.retry_after_s)}) from None
    except ChangeRefused as exc:  # the index's own rules, checked before logging: nothing applied
        raise InvalidRequest(str(exc), code="change_refused") from None
    return Response(dumps(result), media_type=JSON)


async def get_keyword(service: SearchService, request: Request, keyword_id: str) -> Response:
    service.check_admin(request)
    runtime = service.runtime()
    found = runtime.live.get(keyword_id) if runtime.live is not None else None
    if found is None and runtime.live is None and hasattr(runtime.index, "get"):
        row = runtime.index.get(keyword_id)
        found = None if row is None else {"id": keyword_id, "text": row[0], "attributes": row[1]}
    if found is None:
        raise KeywordNotFound(f"There is no keyword {keyword_id[:200]!r}.")
    return Response(dumps(found), media_type=JSON)
