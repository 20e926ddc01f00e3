"""The edge's in-flight limit (service/concurrency.py): derived from the measured rate and
the SLO, fair to a client with nothing in flight, and released on every way a request ends.

The limit is driven with an injected clock; the edge with hand-made ASGI messages around an
app held at a gate, with a real idle batcher and real metrics.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from http_helpers import asgi_call, parse_metrics, request_chunk, value

from service.batcher import Batcher
from service.concurrency import MIN_LIMIT, SLO_SHARE, WINDOW, ConcurrencyLimit
from service.errors import Refusal, refusal_error
from service.metrics import Metrics
from service.middleware import EdgeMiddleware
from service.serving import AppState, Phase


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def serve_one_at_a_time(limit: ConcurrencyLimit, clock: Clock, count: int, each_s: float, gap_s: float = 0.0):
    for _ in range(count):
        limit.acquire("a")
        clock.now += each_s
        limit.release("a")
        clock.now += gap_s


def test_there_is_no_limit_until_the_rate_is_measured_then_it_is_rate_times_half_the_slo():
    clock, metrics = Clock(), Metrics()
    limit = ConcurrencyLimit("student", 0.015, clock=clock, metrics=metrics)
    for _ in range(WINDOW - 1):  # unmeasured: nothing is refused
        limit.acquire("a")
    assert limit.limit() is None and limit.in_flight == WINDOW - 1
    for _ in range(WINDOW - 1):
        clock.now += 0.001
        limit.release("a")
    assert limit.limit() is None and limit.in_flight == 0
    # 64 completions in 64 ms of busy time (the idle second between is not counted): 1,000/s.
    clock.now += 1.0
    serve_one_at_a_time(limit, clock, 1, each_s=0.001)
    assert limit.rate == pytest.approx(1000.0)
    assert limit.limit() == pytest.approx(1000.0 * 0.015 * SLO_SHARE)
    assert metrics.registry.get_sample_value("hlm_in_flight_limit", {"encoder": "student"}) == pytest.approx(15.0 * SLO_SHARE)


def test_a_client_with_requests_in_flight_is_refused_at_the_limit_a_client_with_none_is_not():
    clock, metrics = Clock(), Metrics()
    limit = ConcurrencyLimit("student", 0.008 / SLO_SHARE, clock=clock, metrics=metrics)
    serve_one_at_a_time(limit, clock, WINDOW, each_s=0.001)  # 1,000/s x 8 ms: limit 8
    assert limit.limit() == pytest.approx(8.0)
    for _ in range(8):
        limit.acquire("heavy")
    with pytest.raises(Refusal) as refused:
        limit.acquire("heavy")
    assert refused.value.reason == "concurrency" and refused.value.queued == 8
    limit.acquire("light")  # nothing of its own in flight: admitted past the limit
    with pytest.raises(Refusal):
        limit.acquire("light")
    assert limit.in_flight == 9
    limit.release("light")
    limit.release("heavy")
    limit.acquire("heavy")  # room again
    assert metrics.registry.get_sample_value("hlm_rejected_total", {"encoder": "student", "reason": "concurrency"}) == 2
    assert metrics.registry.get_sample_value("hlm_in_flight", {"encoder": "student"}) == 8
    error = refusal_error(refused.value)
    assert error.status == 429 and error.code == "concurrency" and "8 requests" in error.message


def test_a_slower_window_lowers_the_limit_and_a_fixed_limit_or_none_ignores_the_rate():
    clock = Clock()
    limit = ConcurrencyLimit("teacher", 0.1, clock=clock)
    serve_one_at_a_time(limit, clock, WINDOW, each_s=0.001)
    fast = limit.limit()
    serve_one_at_a_time(limit, clock, WINDOW, each_s=0.010)
    assert limit.limit() < fast
    serve_one_at_a_time(limit, clock, 20 * WINDOW, each_s=0.045)  # a 45 ms teacher: 22/s x 35 ms ~ 0.8
    assert limit.limit() == MIN_LIMIT

    fixed = ConcurrencyLimit("student", 0.015, fixed=3, clock=clock)
    for _ in range(3):
        fixed.acquire("a")
    with pytest.raises(Refusal):
        fixed.acquire("a")
    off = ConcurrencyLimit("student", 0.015, fixed=0, clock=clock)
    serve_one_at_a_time(off, clock, WINDOW, each_s=0.001)
    for _ in range(1000):
        off.acquire("a")
    assert off.limit() is None


class GatedApp:
    """Holds every request until ``gate`` opens; ``fail`` makes it raise instead of answering."""

    def __init__(self):
        self.gate = asyncio.Event()
        self.entered = 0
        self.fail = False

    async def __call__(self, scope, receive, send):
        await receive()
        self.entered += 1
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def post(app, body: bytes, peer: str):
    """A search from ``peer`` that stays connected after its body: (status, JSON answer)."""
    status, _, data = await asgi_call(app, "POST", "/v1/search", [(b"content-type", b"application/json")],
                                      [request_chunk(body), None], client=(peer, 5000))
    return status, json.loads(data or b"{}")


def test_the_edge_refuses_past_the_limit_and_releases_on_answer_failure_and_disconnect():
    async def main():
        metrics, state, inner = Metrics(), AppState(), GatedApp()
        batcher = Batcher("student", lambda jobs: [None for _ in jobs], max_batch=1, metrics=metrics)
        batcher.start(asyncio.get_running_loop())
        limit = ConcurrencyLimit("student", 0.015, fixed=1, metrics=metrics)
        state.runtime = SimpleNamespace(slots={"student": SimpleNamespace(batcher=batcher, limit=limit, inline=False)},
                                        manifest={"encoders": {"student": {"model": "s"}}})
        state.phase = Phase.READY
        edge = EdgeMiddleware(inner, metrics=metrics, state=state, max_body_bytes=1000, known_paths={"/v1/search"})
        body = b'{"query": "drill"}'

        first = asyncio.create_task(post(edge, body, "10.0.0.1"))
        while inner.entered < 1:
            await asyncio.sleep(0.001)
        refused = await post(edge, body, "10.0.0.1")  # same client, one in flight: the limit of 1 holds
        other = asyncio.create_task(post(edge, body, "10.0.0.2"))  # nothing of its own in flight: admitted
        while inner.entered < 2:
            await asyncio.sleep(0.001)
        in_flight_both = limit.in_flight
        inner.gate.set()
        answered = [await first, await other]
        after_answers = limit.in_flight

        inner.gate.clear()
        inner.fail = True
        failing = asyncio.create_task(post(edge, body, "10.0.0.1"))
        while inner.entered < 3:
            await asyncio.sleep(0.001)
        inner.gate.set()
        failed = await failing
        after_failure = limit.in_flight

        inner.gate.clear()
        leaving = asyncio.create_task(post(edge, body, "10.0.0.1"))
        while inner.entered < 4:
            await asyncio.sleep(0.001)
        leaving.cancel()  # the connection went away mid-request
        await asyncio.gather(leaving, return_exceptions=True)
        after_cancel = limit.in_flight
        await batcher.close()
        return refused, in_flight_both, answered, after_answers, failed, after_failure, after_cancel

    refused, in_flight_both, answered, after_answers, failed, after_failure, after_cancel = \
        asyncio.run(asyncio.wait_for(main(), 20))
    assert refused[0] == 429 and refused[1]["error"]["code"] == "concurrency"
    assert in_flight_both == 2 and [a[0] for a in answered] == [200, 200]
    assert failed[0] == 500 and "boom" not in json.dumps(failed[1])
    assert after_answers == after_failure == after_cancel == 0


MULTIPROCESS_SCRIPT = r'''
import asyncio, threading
from service.batcher import Batcher
from service.concurrency import ConcurrencyLimit
from service.metrics import Metrics

async def main():
    metrics, gate, entered = Metrics(), threading.Event(), threading.Event()
    def fn(jobs):
        entered.set()
        gate.wait(10)
        return [None for _ in jobs]
    batcher = Batcher("student", fn, max_batch=1, metrics=metrics)
    batcher.start(asyncio.get_running_loop())
    running = batcher.submit("running")
    await asyncio.to_thread(entered.wait, 10)
    queued = batcher.submit("queued")
    limit = ConcurrencyLimit("student", 0.015, fixed=5, metrics=metrics)
    limit.acquire("a"); limit.acquire("b")
    print(metrics.exposition()[0].decode())
    gate.set()
    await asyncio.gather(running, queued)
    await batcher.close()

asyncio.run(main())
'''


def test_queue_depth_and_in_flight_reach_a_scrape_under_workers(tmp_path):
    """Under --workers N a scrape reads what each worker wrote to PROMETHEUS_MULTIPROC_DIR: a
    gauge kept by set_function would read 0 there (nothing is ever written)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", MULTIPROCESS_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    scraped = parse_metrics(out.stdout)
    assert value(scraped, "hlm_queue_depth", encoder="student") == 1
    assert value(scraped, "hlm_in_flight", encoder="student") == 2
    assert value(scraped, "hlm_in_flight_limit", encoder="student") == 5
