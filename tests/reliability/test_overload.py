"""Overload (quick version): the teacher, which saturates at a few tens of requests/s here,
offered several times what it sustains for a few seconds, open loop.

The process stays up; every request is either answered 200 with a correct body or refused
with 429 and an integer Retry-After; the server counts exactly the refusals the client saw
(by reason); nothing is left queued afterwards and service is normal. Nothing here is a
stopwatch on the client: latencies and rates are printed for the record (docs/RELIABILITY.md
has the figures and the benchmark commands), and the only rate used, the sustainable one, is
measured first so that the offered load is an overload on any machine. Two bounds are
asserted with wide slack: the server's own p99 of accepted requests within 5x the teacher's
objective, and RSS flat within 64 MB.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import numpy as np
import pytest

from http_helpers import metrics, value

from .conftest import rss_mb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
# Every 429 reason of an overloaded encoder: the batcher's and the edge's in-flight limit.
OVERLOAD_REASONS = ("budget", "client_share", "queue_full", "concurrency")
TEACHER_SLO_S = 0.1  # HLM_TEACHER_SLO_MS of the server below (its default)

QUERIES = ["cordless drill", "garden hose 50 ft", "led light bulbs", "wood screws", "paint roller", "ceiling fan",
           "vinyl flooring", "kitchen faucet", "door knob", "extension cord"]


def teacher_latency(client: httpx.Client, n: int = 7) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        assert client.post("/v1/search", json={"query": QUERIES[i % len(QUERIES)], "encoder": "teacher"}).status_code == 200
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def open_loop(url: str, rate: float, duration: float) -> list[tuple[float, object, float, str | None, object]]:
    """(sent offset, status, latency s, Retry-After, (query sent, JSON body)) per request, sent
    on a fixed schedule (aiohttp, as loadtest/)."""
    import aiohttp

    out = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(base_url=url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def one(i, offset):
            t0 = time.perf_counter()
            try:
                query = QUERIES[i % len(QUERIES)]
                async with session.post("/v1/search", json={"query": query, "encoder": "teacher"}) as r:
                    body = await r.json(content_type=None)
                    out.append((offset, r.status, time.perf_counter() - t0, r.headers.get("Retry-After"), (query, body)))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                out.append((offset, type(exc).__name__, time.perf_counter() - t0, None, None))

        start = time.perf_counter()
        tasks, n = [], int(rate * duration)
        for i in range(n):
            offset = i / rate
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, offset)))
        await asyncio.gather(*tasks)
    return out


async def closed_loop_rate(url: str, clients: int = 4, duration: float = 2.0) -> float:
    """Requests/s the teacher serves with a few clients back to back: its sustainable rate.

    Measured, not derived from one request's latency: with concurrent clients the HTTP work
    overlaps the encoding, so the server sustains more than 1/latency (CI once saw 48/s
    against a 29 ms single request)."""
    import aiohttp

    done = 0
    async with aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=30)) as session:
        end = time.perf_counter() + duration

        async def worker(w):
            nonlocal done
            i = w
            while time.perf_counter() < end:
                async with session.post("/v1/search", json={"query": QUERIES[i % len(QUERIES)], "encoder": "teacher"}) as r:
                    await r.read()
                    done += r.status == 200
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        return done / (time.perf_counter() - t0)


def server_p99(before: dict, after: dict, status: str) -> float:
    """p99 upper bound from the server's own histogram (the SLO's figure), in seconds."""
    from service.metrics import LATENCY_BUCKETS

    labels = {"route": "/v1/search", "encoder": "teacher", "status": status}
    counts = [value(after, "hlm_request_duration_seconds_bucket", le=str(b), **labels)
              - value(before, "hlm_request_duration_seconds_bucket", le=str(b), **labels) for b in LATENCY_BUCKETS]
    total = value(after, "hlm_request_duration_seconds_count", **labels) - value(
        before, "hlm_request_duration_seconds_count", **labels)
    for bound, count in zip(LATENCY_BUCKETS, counts):
        if total and count >= 0.99 * total:
            return bound
    return float("inf")


@pytest.fixture(scope="module")
def tserver(start_server):
    """Teacher batches of one, so it saturates at a few tens of requests/s here; default bounds."""
    srv = start_server(teacher_max_batch=1, teacher_slo_ms=TEACHER_SLO_S * 1000)
    srv.wait_for("/readyz")
    return srv


def test_teacher_at_three_times_its_rate_sheds_load_and_recovers(tserver):
    rserver = tserver
    client = rserver.client
    single = teacher_latency(client)
    sustainable = asyncio.run(closed_loop_rate(rserver.url))
    rss_before = rss_mb(rserver.proc.pid)
    before = metrics(rserver)
    rate = 3.0 * sustainable
    duration = 4.0
    t0 = time.perf_counter()
    results = asyncio.run(open_loop(rserver.url, rate, duration))
    wall = time.perf_counter() - t0
    rss_after = rss_mb(rserver.proc.pid)
    after = metrics(rserver)
    server_ok, server_refused = server_p99(before, after, "200"), server_p99(before, after, "429")

    ok = [r for r in results if r[1] == 200]
    refused = [r for r in results if r[1] in (429, 503)]
    other = [r for r in results if r[1] not in (200, 429, 503)]
    served_rate = len(ok) / wall
    p99_ok = float(np.percentile([r[2] for r in ok], 99))
    p99_refused = float(np.percentile([r[2] for r in refused], 99)) if refused else 0.0
    print(f"\nteacher single {single * 1000:.1f} ms, sustains {sustainable:.1f}/s; offered {rate:.0f}/s for {duration:.0f} s ({len(results)} requests); "
          f"served {len(ok)} ({served_rate:.1f}/s, offered/served {rate / served_rate:.1f}x), refused {len(refused)}; "
          f"client p99 accepted {p99_ok * 1000:.0f} ms, refused {p99_refused * 1000:.1f} ms; "
          f"server p99 accepted <= {server_ok * 1000:.1f} ms, refused <= {server_refused * 1000:.2f} ms; "
          f"RSS {rss_before:.0f} -> {rss_after:.0f} MB")

    assert rserver.proc.poll() is None
    # What admission promises under overload, from the server's own histogram: an accepted
    # request waits no longer than the teacher's objective allows (HLM_TEACHER_SLO_MS, 100 ms;
    # ~100 ms seen on loaded machines), so its p99 stays in the 0.5 s bucket with 5x slack for
    # a noisy CI machine; without a time bound the backlog at 3x grows to seconds (the 256-deep
    # queue), which this fails. And the memory stays flat: nothing is kept per refused request.
    assert server_ok <= TEACHER_SLO_S * 5, f"accepted p99 {server_ok * 1000:.0f} ms under 3x overload"
    assert rss_after - rss_before < 64, f"RSS grew {rss_before:.0f} -> {rss_after:.0f} MB in 4 s of overload"
    assert not other, other[:5]  # no 5xx, no transport error: each request answered or refused
    assert refused, "nothing was refused at three times the measured sustainable rate"
    for _, _, _, retry_after, (_, body) in refused:
        assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, retry_after
        assert set(body) == {"error"} and body["error"]["code"] in OVERLOAD_REASONS
    for _, _, _, _, (query, body) in ok:  # what was accepted was answered in full and correctly
        (result,) = body["results"]
        assert body["encoder"] == "teacher" and result["query"] == query and len(result["keywords"]) == 10
    # The server counted exactly the refusals the client saw, under the reasons it gave.
    counted = {reason: value(after, "hlm_rejected_total", encoder="teacher", reason=reason)
               - value(before, "hlm_rejected_total", encoder="teacher", reason=reason)
               for reason in OVERLOAD_REASONS}
    given = {reason: sum(r[4][1]["error"]["code"] == reason for r in refused) for reason in counted}
    assert counted == given, (counted, given)
    assert value(after, "hlm_request_duration_seconds_count", route="/v1/search", encoder="teacher", status="429") \
        - value(before, "hlm_request_duration_seconds_count", route="/v1/search", encoder="teacher", status="429") \
        == len(refused)

    # Load gone: the queue drains to empty and a request of each encoder is answered.
    deadline = time.monotonic() + 30
    while value(metrics(rserver), "hlm_queue_depth", encoder="teacher") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value(metrics(rserver), "hlm_queue_depth", encoder="teacher") == 0
    # ... and every admitted request was counted out of the edge's in-flight limit again.
    assert value(metrics(rserver), "hlm_in_flight", encoder="teacher") == 0
    assert client.post("/v1/search", json={"query": "drill", "encoder": "teacher"}).status_code == 200
    assert client.post("/v1/search", json={"query": "drill"}).status_code == 200
    assert rserver.proc.poll() is None
