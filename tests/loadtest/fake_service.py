"""A small real HTTP service that speaks the HLM API, for testing the harness.

It is not a mock of the harness: it is the *other side*, a real server on 127.0.0.1 with
the service's routes and the same metric names, labels and buckets (prometheus_client),
whose speed we control. Each encoder has a fixed service time; ``--serial`` makes requests
of one encoder wait for each other (one worker, like a saturated model), which is what
lets a test predict the queueing delay exactly.

Run: ``python -m tests.loadtest.fake_service --port 8123 --delay student=0.002 --serial``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# The service's own buckets (imported, not copied: a change there reaches the harness tests).
from service.metrics import LATENCY_BUCKETS  # noqa: E402


def create_app(delays: dict[str, float], serial: bool = False) -> Starlette:
    registry = CollectorRegistry()
    duration = Histogram(
        "hlm_request_duration_seconds", "request duration", ["route", "encoder", "status"],
        buckets=LATENCY_BUCKETS, registry=registry,
    )
    rejected = Counter("hlm_rejected_total", "rejected", ["encoder", "reason"], registry=registry)
    locks = {name: asyncio.Lock() for name in delays}
    arrivals: list[dict] = []  # arrival times (monotonic) so a test can see the send schedule

    async def search(request: Request) -> Response:
        t0 = time.perf_counter()
        body = await request.json()
        encoder = body.get("encoder", "student")
        arrivals.append({"t": time.monotonic(), "encoder": encoder})
        if encoder not in delays:
            resp = JSONResponse({"error": {"code": "unknown_encoder", "message": f"no encoder {encoder!r}"}}, 422)
        else:
            if serial:
                async with locks[encoder]:
                    await asyncio.sleep(delays[encoder])
            else:
                await asyncio.sleep(delays[encoder])
            q = body.get("query", "")
            resp = JSONResponse({"results": [{"query": q, "keywords": [{"id": 1, "text": q, "score": 1.0}]}],
                                 "encoder": encoder, "timings": {}})
        duration.labels("/v1/search", encoder, str(resp.status_code)).observe(time.perf_counter() - t0)
        if resp.status_code == 422:
            rejected.labels(encoder, "invalid").inc()
        return resp

    async def readyz(request: Request) -> Response:
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def debug_arrivals(request: Request) -> Response:
        return JSONResponse(arrivals)

    async def debug_reset(request: Request) -> Response:
        arrivals.clear()
        return JSONResponse({})

    return Starlette(routes=[
        Route("/v1/search", search, methods=["POST"]),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/debug/arrivals", debug_arrivals),
        Route("/debug/reset", debug_reset, methods=["POST"]),
    ])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", action="append", default=[], help="encoder=seconds")
    ap.add_argument("--serial", action="store_true")
    args = ap.parse_args()
    delays = {k: float(v) for k, v in (d.split("=") for d in args.delay)} or {"student": 0.0, "teacher": 0.0}
    # Lets one command start differently configured servers (the way HLM_* settings do).
    scale = float(os.environ.get("FAKE_DELAY_SCALE", "1"))
    delays = {k: v * scale for k, v in delays.items()}
    import uvicorn

    uvicorn.run(create_app(delays, args.serial), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
