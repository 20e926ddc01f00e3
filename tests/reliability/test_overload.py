"""Overload (quick version): the teacher, which saturates at a few tens of requests/s here,
offered several times what it sustains for a few seconds, open loop.

The process stays up; accepted requests keep a bounded latency (HLM_MAX_QUEUE_WAIT_MS plus
one batch); the rest are refused at once with 429 and Retry-After; memory stays put; and
service is normal as soon as the load stops. The recorded figures (loadtest harness,
longer runs) are in docs/RELIABILITY.md.
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

QUERIES = ["cordless drill", "garden hose 50 ft", "led light bulbs", "wood screws", "paint roller", "ceiling fan",
           "vinyl flooring", "kitchen faucet", "door knob", "extension cord"]


def teacher_latency(client: httpx.Client, n: int = 7) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        assert client.post("/v1/search", json={"query": QUERIES[i % len(QUERIES)], "encoder": "teacher"}).status_code == 200
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def open_loop(url: str, rate: float, duration: float) -> list[tuple[float, object, float, str | None]]:
    """(sent offset, status, latency s, Retry-After) per request, sent on a fixed schedule (aiohttp, as loadtest/)."""
    import aiohttp

    out = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(base_url=url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def one(i, offset):
            t0 = time.perf_counter()
            try:
                async with session.post("/v1/search", json={"query": QUERIES[i % len(QUERIES)], "encoder": "teacher"}) as r:
                    await r.read()
                    out.append((offset, r.status, time.perf_counter() - t0, r.headers.get("Retry-After")))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                out.append((offset, type(exc).__name__, time.perf_counter() - t0, None))

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
    srv = start_server(teacher_max_batch=1)
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
    assert not other, other[:5]
    # An open loop keeps the queue fuller than the 4 closed-loop clients did, so the server
    # serves somewhat more here than the measured rate; twice what it serves is still overload.
    assert rate / served_rate >= 2.0, "the test did not overload the teacher"
    assert len(refused) >= len(results) // 3
    assert all(r[3] == "1" for r in refused)  # Retry-After on every refusal
    # Accepted requests, by the server's histogram (what the SLO alert reads): the queue-wait
    # bound plus about one batch, not seconds of backlog. Refusals: at once.
    assert server_ok <= 1.0, server_ok
    assert server_refused <= 0.03, server_refused
    # Seen from the client on the same 2 busy cores, with its own scheduling delays.
    assert p99_ok < 2.0 and p99_refused < 1.0, (p99_ok, p99_refused)
    assert rss_after - rss_before < 150, (rss_before, rss_after)
    counted = sum(value(after, "hlm_rejected_total", encoder="teacher", reason=reason)
                  - value(before, "hlm_rejected_total", encoder="teacher", reason=reason)
                  for reason in ("queue_full",))
    assert counted == sum(r[1] == 429 for r in refused)

    # Load gone: back to normal at once.
    deadline = time.monotonic() + 5
    while value(metrics(rserver), "hlm_queue_depth", encoder="teacher") and time.monotonic() < deadline:
        time.sleep(0.05)
    again = teacher_latency(client, 5)
    assert again < 3 * single + 0.05, (single, again)
    assert client.post("/v1/search", json={"query": "drill"}).status_code == 200
