"""The work behind the routes: parse, queue on the encoder's batcher, answer.

The routes in ``service/api`` stay thin; everything between the body bytes and the
response bytes happens here, on the event loop, except the encoder and index work,
which the batch workers do off the loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Callable, Optional

from pydantic import ValidationError
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response

from retrieval.length_prior import rerank as rerank_by_length
from service.errors import ClientGone, InvalidRequest, NotReady, ServiceError, Unauthorized
from service.filters import check_filter, with_attributes
from service.loopgate import LoopGate
from service.metrics import Metrics
from service.model_ids import model_ids
from service.protocol import EmbeddingsRequest, EmbedRequest, SearchRequest
from service.runtime import Answer, Query, Runtime
from service.result_cache import ResultCache
from service.settings import Settings
from service.stats import StatsRing

log = logging.getLogger(__name__)

JSON = "application/json"


class Phase(str, Enum):
    """Where the service stands; a str enum, so it reads as its value in JSON and logs."""

    STARTING = "starting"
    VERIFYING = "verifying"
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"

    def __str__(self) -> str:
        return self.value


@dataclass
class AppState:
    """Where start-up stands (``Phase``), and what serves once it is ready."""

    phase: Phase = Phase.STARTING
    detail: str = ""
    runtime: Optional[Runtime] = None
    startup_error: Optional[str] = None  # set when start-up is refused (shown instead of a traceback)
    ready_at: float = 0.0


def dumps(payload: Any) -> bytes:
    """Compact UTF-8 JSON, serialised in Rust by pydantic-core (about 5x the stdlib's speed)."""
    return to_json(payload)


async def _disconnected(receive: Callable) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def wait_answer(future: asyncio.Future, receive: Callable) -> Any:
    """The job's result, or ClientGone (and the job cancelled) if the client leaves first."""
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((future, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        future.cancel()
        raise
    finally:
        if not watcher.done():
            watcher.cancel()
    if future.done():
        return future.result()
    future.cancel()  # the batch worker skips cancelled jobs
    raise ClientGone()


def parse(model, body: bytes, context: dict):
    """Validate the body bytes in one pass (pydantic's JSON parser, strict types).

    pydantic's parser refuses escaped lone surrogates ("\\ud800"), which are valid JSON
    syntax; the standard library parser takes them and the query clean-up replaces them.
    """
    try:
        return model.model_validate_json(body, context=context)
    except ValidationError as exc:
        if exc.errors()[0]["type"] != "json_invalid":
            raise
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise exc from None
        return model.model_validate(data, context=context, strict=True)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class SearchService:
    def __init__(self, settings: Settings, metrics: Metrics, state: AppState):
        self.settings = settings
        self.metrics = metrics
        self.state = state
        self._context = {"settings": settings}
        self._shadow_dropped = metrics.rejected.labels("teacher", "shadow_dropped")
        token = settings.admin_token.get_secret_value() if settings.admin_token else ""
        self._admin = f"Bearer {token}".encode() if token else None
        self.stats_ring = StatsRing(metrics.request_duration_all)  # GET /v1/stats
        # Admission of the searches answered on the event loop, shared with the HTTP protocol.
        self.gate = LoopGate(budget_s=(settings.loop_budget_ms if settings.loop_budget_ms is not None
                                       else settings.slo_ms / 3.0) / 1000.0,
                             hold_max_s=settings.refusal_hold_ms / 1000.0, retry_gap_s=settings.retry_gap_ms / 1000.0,
                             state=state, on_hold=metrics.refusals_held.inc, on_refused=self._loop_refused)
        self.result_cache = ResultCache(settings.result_cache_bytes)
        self._cache_hit = {e: metrics.result_cache.labels(e, "hit") for e in ("student", "teacher")}
        self._cache_miss = {e: metrics.result_cache.labels(e, "miss") for e in ("student", "teacher")}

    def _loop_refused(self, encoder: str, seconds: float) -> None:
        """A search the loop gate refused in the protocol (it never reached the edge): counted as the edge counts."""
        self.metrics.rejected.labels(encoder, "budget").inc()
        self.metrics.request_duration.labels("/v1/search", encoder, "429").observe(seconds)

    # ---- guards ----

    def runtime(self) -> Runtime:
        runtime = self.state.runtime
        if runtime is None or self.state.phase is not Phase.READY:
            phase = self.state.phase
            if phase is Phase.DRAINING:
                raise NotReady("The service is shutting down.", code="shutting_down",
                               headers={"Retry-After": str(self.settings.retry_after_s)})
            raise NotReady(f"The service is not ready yet ({phase}); poll /readyz.",
                           headers={"Retry-After": str(self.settings.retry_after_s)})
        return runtime

    def check_admin(self, request: Request) -> None:
        if self._admin is None:
            return
        for name, value in request.scope["headers"]:
            if name == b"authorization" and secrets.compare_digest(value, self._admin):
                return
        raise Unauthorized("This endpoint needs 'Authorization: Bearer <HLM_ADMIN_TOKEN>'.",
                           headers={"WWW-Authenticate": "Bearer"})

    # ---- /v1/search ----

    async def search(self, request: Request) -> Response:
        """The route's entry (the edge answers most searches itself, through ``search_bytes``)."""
        return Response(await self.search_bytes(request.scope, await request.body(), request.receive),
                        media_type=JSON)

    async def search_bytes(self, scope: dict, body: bytes, receive: Callable) -> bytes:
        """Body bytes -> answer bytes: parsed once, the encoder's work on the loop (an inline
        encoder) or in its batch worker, the response serialised once. Errors are raised as
        ServiceError / ValidationError, rendered by ``service.errors.render`` wherever called."""
        req = parse(SearchRequest, body, self._context)
        scope["hlm.encoder"] = req.encoder
        runtime = self.runtime()
        warnings = check_filter(runtime.index, req.filter)  # 422: an attribute no keyword carries (service/filters.py)
        slot = runtime.slots[req.encoder]
        texts = req.texts
        k = req.k or self.settings.default_k
        if req.fusion:
            check_fusion(runtime, req)
        prior = self.settings.length_prior if req.length_prior is None else req.length_prior
        # With fusion the dense side gives its top FUSION_DEPTH to fuse, not k; with a length
        # prior, every candidate of its ef list to re-rank.
        depth = max(k, FUSION_DEPTH) if req.fusion else k
        ef_asked = req.ef or runtime.default_ef
        query = Query(texts, k=max(depth, ef_asked) if prior else depth, ef=ef_asked, filter=req.filter)
        ef = max(query.ef, query.k)
        cache = self.result_cache
        found: list = [None] * len(texts)
        if cache.enabled:  # (query, k, ef, encoder, filter); invalidated by generation, see result_cache.py
            generation = (runtime.generation, runtime.live.version if runtime.live is not None else 0)
            flt = dumps(req.filter) if req.filter else None
            keys = [(text, query.k, ef, req.encoder, flt) for text in texts]
            found = [cache.get(generation, key) for key in keys]
            hits = sum(f is not None for f in found)
            self._cache_hit[req.encoder].inc(hits)
            self._cache_miss[req.encoder].inc(len(texts) - hits)
        missing = [i for i, f in enumerate(found) if f is None]
        answer = Answer(truncated=[])
        if missing:
            ask = query if len(missing) == len(texts) else replace(query, texts=[texts[i] for i in missing])
            if slot.inline:
                arrived = scope.get("hlm.arrived")  # read by the protocol (time.monotonic); its wait in the loop
                answer = runtime.run_inline(slot, ask, waited_s=time.monotonic() - arrived if arrived else 0.0)
            else:
                answer = await wait_answer(slot.batcher.submit(ask, len(ask.texts)), receive)
            for i, truncated, row in zip(missing, answer.truncated, answer.hits):
                found[i] = (truncated, [{"id": h.id, "text": h.text, "score": h.score} for h in row])
                if cache.enabled:
                    cache.put(generation, keys[i], found[i])
            if cache.enabled:
                self.metrics.result_cache_bytes.set(cache.bytes)
        if prior:  # retrieval/length_prior.py; after the cache, which holds the plain candidates
            found = [(truncated, rerank_by_length(keywords, prior, depth)) for truncated, keywords in found]
        lexical_s = 0.0
        if req.fusion:
            t0 = time.perf_counter()
            found = fuse(runtime, texts, found, k, req.filter)
            lexical_s = time.perf_counter() - t0
        results = [{"query": text, "truncated": truncated, "keywords": keywords}
                   for text, (truncated, keywords) in zip(texts, found)]
        if req.attributes:
            warnings += with_attributes(runtime.index, results)
        payload = {
            "encoder": req.encoder,
            "precision": slot.precision,
            "k": k,
            "ef": ef,
            "results": results,
            "timings": self._timings(scope, answer),
        }
        if prior:
            payload["length_prior"] = prior
        if req.fusion:
            payload["fusion"] = req.fusion
            payload["timings"]["lexical_ms"] = _ms(lexical_s)
        if warnings:
            payload["warnings"] = warnings
        rate = self.settings.shadow_rate
        if missing and rate and req.encoder == "student" and random.random() < rate:
            self._shadow(runtime, ask, answer)
        return dumps(payload)

    def _timings(self, scope: dict, answer: Answer) -> dict[str, float]:
        start = scope.get("hlm.start") or time.perf_counter()
        return {
            "queue_ms": _ms(answer.queue_s),
            "encode_ms": _ms(answer.encode_s),
            "index_ms": _ms(answer.index_s),
            "total_ms": _ms(time.perf_counter() - start),
        }

    def _shadow(self, runtime: Runtime, query: Query, answer: Answer) -> None:
        """Re-run a student query through the teacher off the hot path; export overlap@k."""
        student = [{hit.id for hit in row} for row in answer.hits]
        histogram = self.metrics.shadow_overlap

        def compare(teacher: Answer) -> None:
            for mine, row in zip(student, teacher.hits):
                if row:
                    histogram.observe(len(mine & {hit.id for hit in row}) / len(row))

        batcher = runtime.slots["teacher"].batcher
        if not batcher.submit_background(query, len(query.texts), compare, only_if_idle=True):
            self._shadow_dropped.inc()

    # ---- /v1/embed ----

    async def embed(self, request: Request) -> Response:
        body = await request.body()
        req = parse(EmbedRequest, body, self._context)
        request.scope["hlm.encoder"] = req.encoder
        runtime = self.runtime()
        slot = runtime.slots[req.encoder]
        query = Query(req.texts, want_vectors=True)
        answer: Answer = await wait_answer(slot.batcher.submit(query, len(req.texts)), request.receive)
        payload = {
            "encoder": req.encoder,
            "precision": slot.precision,
            "dim": int(answer.vectors.shape[1]),
            "results": [
                {"query": text, "truncated": truncated, "embedding": vector}
                for text, truncated, vector in zip(req.texts, answer.truncated, answer.vectors.tolist())
            ],
            "timings": self._timings(request.scope, answer),
        }
        return Response(dumps(payload), media_type=JSON)

    # ---- /v1/embeddings (OpenAI-compatible) ----

    async def embeddings(self, request: Request) -> Response:
        """OpenAI's embeddings answer, through the same batcher and Query as /v1/embed."""
        body = await request.body()
        req = parse(EmbeddingsRequest, body, self._context)
        encoder = self.encoder_for_model(req.model)
        request.scope["hlm.encoder"] = encoder
        runtime = self.runtime()
        slot = runtime.slots[encoder]
        dim = int(runtime.manifest["index"]["dim"])
        if req.dimensions is not None and req.dimensions != dim:
            raise InvalidRequest(f"Invalid request: dimensions: the {encoder} encoder gives {dim}-d vectors "
                                 f"and cannot shorten them; leave dimensions out or give {dim}.")
        texts = req.texts
        answer: Answer = await wait_answer(slot.batcher.submit(Query(texts, want_vectors=True), len(texts)),
                                           request.receive)
        if req.encoding_format == "base64":
            # OpenAI's base64 is the raw little-endian float32 bytes of the vector.
            vectors = answer.vectors.astype("<f4", copy=False)
            embeddings = [base64.b64encode(row.tobytes()).decode("ascii") for row in vectors]
        else:
            embeddings = answer.vectors.tolist()
        tokens = sum(slot.encoder.token_counts(texts))
        payload = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)],
            "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(dumps(payload), media_type=JSON)

    def encoder_for_model(self, model: str) -> str:
        """`student`/`teacher`, a model id of GET /v1/models, or the model name /v1/info lists for one of them."""
        encoder = encoder_for_model(self.state.runtime, model)
        if encoder is not None:
            return encoder
        # Only the two roles: the artifact's model names are for those who hold the admin
        # token (/v1/info), not for anyone who sends a wrong name.
        raise ServiceError(f"There is no model {model!r} here; use 'student', 'teacher' or an id that GET /v1/models "
                           "lists.", code="model_not_found", status=404)

    # ---- /v1/stats ----

    def stats(self) -> dict[str, Any]:
        return {"status": self.state.phase.value} | self.stats_ring.summary()

    # ---- meta ----

    def readiness(self) -> tuple[int, dict[str, Any]]:
        ready = self.state.phase is Phase.READY
        body = {"ready": ready, "status": self.state.phase.value}
        runtime = self.state.runtime
        if ready and runtime is not None and not runtime.index_ready:
            # A remote index (Milvus) that stopped answering: out of the load balancer's
            # rotation until the runtime's probe sees it answer again.
            ready = False
            body = {"ready": False, "status": "index_unavailable",
                    "detail": f"The {runtime.index.backend} index does not answer; retrying."}
        elif self.state.detail:
            body["detail"] = self.state.detail
        return (200 if ready else 503), body


FUSION_DEPTH = 50  # each side's top list fused by "fusion": "rrf"


def check_fusion(runtime, req) -> None:
    """422 for a fusion this service cannot do (the one place that says why)."""
    if runtime.lexical is None:
        raise InvalidRequest("Invalid request: fusion: this artifact holds no lexical index (built before it, or the "
                             "keywords are served from Milvus); leave fusion out.")


def fuse(runtime, texts: list[str], found: list, k: int, flt: Optional[dict] = None) -> list:
    """Each text's dense hits (its top FUSION_DEPTH, filtered in the search) fused with BM25's
    top FUSION_DEPTH (those passing the filter) by reciprocal rank; a BM25 hit deleted since the
    build is left out (checked against the live index), one the dense side also found keeps
    its text from there."""
    from retrieval.keyword_table import matches_filter
    from retrieval.lexical import rrf

    out = []
    for (truncated, dense), rows in zip(found, runtime.lexical.search(texts, FUSION_DEPTH)):
        text_of = {hit["id"]: hit["text"] for hit in dense}
        lexical = [runtime.lexical.ids[row] for row, _ in rows]
        if flt:
            lexical = [kid for kid, attrs in zip(lexical, runtime.index.attributes_of(lexical))
                       if matches_filter(attrs, flt)]
        keywords = []
        for keyword_id, score in rrf([hit["id"] for hit in dense], lexical, k=len(text_of) + len(lexical)):
            text = text_of.get(keyword_id)
            if text is None:
                live = runtime.index.get(keyword_id)
                if live is None:
                    continue
                text = live[0]
            keywords.append({"id": keyword_id, "text": text, "score": score})
            if len(keywords) == k:
                break
        out.append((truncated, keywords))
    return out


def model_names(runtime) -> dict[str, str]:
    """Model id (GET /v1/models, service/model_ids.py) or model name (as /v1/info lists it) -> its
    encoder; the first listed wins a shared name."""
    names: dict[str, str] = {}
    if runtime is not None:
        names = {model_id: encoder for encoder, model_id in model_ids(runtime.manifest).items()}
        for name, spec in runtime.manifest["encoders"].items():
            if spec.get("model"):
                names.setdefault(spec["model"], name)
    return names


def encoder_for_model(runtime, model: str) -> Optional[str]:
    """The encoder a /v1/embeddings `model` names (`student`, `teacher`, or a model name of
    ``model_names``), else None. The edge uses it too."""
    if model in ("student", "teacher"):
        return model
    return model_names(runtime).get(model)
