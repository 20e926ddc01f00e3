"""One load step against the service: open loop (default) or closed loop.

Open loop: send times are fixed before the step starts (see ``schedule``); one asyncio loop
launches each request as its own task at its time and never waits for an earlier answer.
Latency is completion time minus *scheduled* time, so when the server stalls, the requests
queued behind the stall are charged for the wait (no coordinated omission). A request that
the generator itself could not launch on time is counted as generator lag: if that number
is not small, the client, not the server, was the bottleneck and the step says so.

Closed loop (``mode="closed"``): N clients, each sends its next request when the previous
one answered. This is what most benchmark tools do; it hides queueing, and every result
from it is labelled "closed-loop" so nobody mistakes it for the open-loop numbers.

Warm-up runs first at the same rate and is excluded; the server's /metrics is scraped after
the warm-up has drained and again after the step has drained, so the server-side deltas
cover exactly the measured requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import aiohttp

from loadtest import latency
from loadtest.queries import cycle_take, load_queries
from loadtest.schedule import make_schedule
from loadtest.servermetrics import CounterReset, server_step_stats
from loadtest.targets import check_target, endpoint

# Bounds that hold whatever the caller asks: a step never runs away in count or time.
MAX_REQUESTS_PER_STEP = 500_000
MAX_DURATION_S = 900.0

JSON_HEADERS = {"Content-Type": "application/json"}


class HarnessError(RuntimeError):
    """The step could not be run meaningfully (server not ready, encoder unknown, ...)."""


@dataclass
class EncoderSpec:
    """How to ask the service for one encoder, and how its metrics label it.

    ``label`` names the encoder in reports; ``body`` is merged into every request body (at
    least ``{"encoder": ...}``); ``metric_encoder`` is the value of the ``encoder`` label in
    /metrics. ``EncoderSpec.of("teacher")`` covers the usual case.

    Variants that need their own server process (the service picks the student's precision
    at start-up, ``HLM_STUDENT_PRECISION``) carry ``env`` (compare() then starts one server
    per distinct env) or ``url`` (a server the user started).
    """

    label: str
    body: dict = field(default_factory=dict)
    metric_encoder: str | None = None
    url: str | None = None  # this variant's server, if not the run's URL
    env: dict = field(default_factory=dict)  # environment of this variant's server (compare starts it)

    @classmethod
    def of(cls, spec: "str | EncoderSpec") -> "EncoderSpec":
        """``"student"``, or ``"label=JSON"`` where JSON is the request body plus two optional
        keys that are not sent: ``"@url"`` and ``"@env"``. Example::

            student-int8={"encoder":"student","@env":{"HLM_STUDENT_PRECISION":"int8"}}
        """
        if isinstance(spec, EncoderSpec):
            return spec
        if "=" in spec:
            label, raw = spec.split("=", 1)
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError(f"encoder spec {spec!r}: JSON must be an object")
            url = body.pop("@url", None)
            env = {str(k): str(v) for k, v in (body.pop("@env", None) or {}).items()}
            body.setdefault("encoder", label)
            return cls(label, body, body["encoder"], url, env)
        return cls(spec, {"encoder": spec}, spec)

    @property
    def metric_label(self) -> str:
        return self.metric_encoder or self.body.get("encoder") or self.label


@dataclass
class StepResult:
    """Everything measured in one step. Latencies in ms, rates in requests/s."""

    encoder: str
    mode: str  # "open-constant", "open-poisson" or "closed-loop"
    offered_rps: float | None  # None in closed loop (the rate is whatever comes back)
    concurrency: int | None  # closed loop: number of clients
    duration_s: float
    warmup_s: float
    started_at: str
    scheduled: int
    sent: int
    ok: int
    errors: dict[str, int]  # by HTTP status or exception kind ("timeout", "unfinished", ...)
    sent_rps: float
    achieved_rps: float  # 2xx answers per second over the step (including its drain)
    generator_lag: int  # requests launched later than lag_tolerance_ms after their time
    generator_lag_max_ms: float
    lag_tolerance_ms: float
    latency: dict  # from scheduled start: count, p50, p90, p99, p99.9, max, mean
    response_time: dict  # from the actual send (what a closed-loop tool would report)
    hdr_latency: str | None  # HdrHistogram, base64, of `latency` in microseconds
    server: dict | None  # ServerStats.to_dict(), or None when /metrics was unreadable
    server_note: str | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def p99(self) -> float | None:
        return self.latency.get("p99")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StepResult":
        return cls(**d)


class _Tally:
    """Mutable counters shared by the request tasks of one phase."""

    def __init__(self, record: bool) -> None:
        self.record = record
        self.latency = latency.new_histogram()
        self.response = latency.new_histogram()
        self.errors: Counter[str] = Counter()
        self.ok = 0
        self.sent = 0
        self.lag = 0
        self.lag_max = 0.0
        self.first_send = None  # loop time
        self.last_send = None
        self.last_done = None


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_error"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    return type(exc).__name__


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, scheduled: float, tally: _Tally) -> None:
    loop = asyncio.get_running_loop()
    sent = loop.time()
    try:
        async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
            await resp.read()
            status = resp.status
    except Exception as exc:  # every failure is a counted outcome, never a crash
        done = loop.time()
        tally.errors[_error_kind(exc)] += 1
        tally.last_done = done
        return
    done = loop.time()
    tally.last_done = done
    if 200 <= status < 300:
        tally.ok += 1
        if tally.record:
            latency.record_seconds(tally.latency, done - scheduled)
            latency.record_seconds(tally.response, done - sent)
    else:
        tally.errors[str(status)] += 1


async def _drain(tasks: set[asyncio.Task], timeout_s: float, tally: _Tally) -> None:
    """Wait for in-flight requests; cancel (and count) what is still open after timeout_s."""
    if not tasks:
        return
    done, pending = await asyncio.wait(set(tasks), timeout=timeout_s)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)
        tally.errors["unfinished"] += len(pending)


async def _open_loop(
    session: aiohttp.ClientSession,
    url: str,
    bodies: Sequence[bytes],
    offsets: Sequence[float],
    tally: _Tally,
    *,
    lag_tolerance_s: float,
    drain_timeout_s: float,
) -> float:
    """Launch one task per scheduled offset; return the loop time the schedule started."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()
    t0 = loop.time() + 0.01
    for i, off in enumerate(offsets):
        when = t0 + off
        delay = when - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late = -delay
            if late > lag_tolerance_s:
                tally.lag += 1
                tally.lag_max = max(tally.lag_max, late)
        now = loop.time()
        if tally.first_send is None:
            tally.first_send = now
        tally.last_send = now
        tally.sent += 1
        task = loop.create_task(_one(session, url, bodies[i % len(bodies)], when, tally))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await _drain(tasks, drain_timeout_s, tally)
    return t0


async def _closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    bodies: Sequence[bytes],
    concurrency: int,
    duration_s: float,
    max_requests: int,
    tally: _Tally,
) -> float:
    """N clients back to back until the duration or the request budget is spent."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    end = t0 + duration_s
    counter = iter(range(max_requests))

    async def client() -> None:
        for i in counter:
            now = loop.time()
            if now >= end:
                return
            if tally.first_send is None:
                tally.first_send = now
            tally.last_send = now
            tally.sent += 1
            # In a closed loop the "schedule" is the moment the client got around to sending.
            await _one(session, url, bodies[i % len(bodies)], now, tally)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return t0


def metrics_headers() -> dict[str, str]:
    """The service guards /metrics with a bearer token when HLM_ADMIN_TOKEN is set."""
    token = os.environ.get("HLM_ADMIN_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _scrape(session: aiohttp.ClientSession, metrics_url: str) -> str | None:
    try:
        async with session.get(metrics_url, headers=metrics_headers()) as resp:
            if resp.status != 200:
                return None
            return await resp.text()
    except Exception:
        return None


async def _preflight(session: aiohttp.ClientSession, url: str, body: bytes, attempts: int = 20) -> None:
    """One request must succeed before load starts: a wrong encoder name or a server that
    is not ready fails here with the server's own message instead of as 100% errors."""
    last = ""
    for _ in range(attempts):
        try:
            async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
                text = await resp.text()
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}: {text[:300]}"
                if resp.status not in (429, 503):  # only overload is worth waiting out
                    break
        except Exception as exc:
            last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.25)
    raise HarnessError(f"preflight request to {url} failed: {last}")


def _make_bodies(queries: Sequence[str], spec: EncoderSpec, k: int, n: int, start: int) -> list[bytes]:
    # Serialised once, before the clock starts, so JSON encoding never delays a send.
    base = {"k": k, **spec.body}
    return [json.dumps({"query": q, **base}).encode() for q in cycle_take(queries, max(1, n), start)]


async def run_step_async(
    url: str,
    encoder: "str | EncoderSpec",
    rate: float | None,
    duration_s: float,
    *,
    queries: Sequence[str] | None = None,
    warmup_s: float = 1.0,
    arrivals: str = "constant",
    mode: str = "open",
    concurrency: int = 8,
    k: int = 10,
    timeout_s: float = 5.0,
    max_connections: int = 512,
    lag_tolerance_ms: float = 5.0,
    seed: int = 0,
    query_offset: int = 0,
    allow_remote: bool = False,
    scrape_metrics: bool = True,
    preflight: bool = True,
) -> StepResult:
    """Async form of :func:`run_step` (for callers already inside an event loop)."""
    spec = EncoderSpec.of(encoder)
    base = check_target(spec.url or url, allow_remote=allow_remote)
    if duration_s <= 0 or duration_s > MAX_DURATION_S:
        raise ValueError(f"duration_s must be in (0, {MAX_DURATION_S}]")
    if mode not in ("open", "closed"):
        raise ValueError("mode is 'open' or 'closed'")
    if mode == "open":
        if not rate or rate <= 0:
            raise ValueError("open loop needs a positive rate")
        if rate * (duration_s + warmup_s) > MAX_REQUESTS_PER_STEP:
            raise ValueError(f"rate x duration exceeds {MAX_REQUESTS_PER_STEP} requests per step")
    queries = list(queries) if queries else load_queries(seed=seed)
    search_url = endpoint(base, "/v1/search")
    metrics_url = endpoint(base, "/metrics")

    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    # No cookie jar and no decompression: neither is needed, and per-request client CPU
    # (~250 us with uvloop here, i.e. ~4000 requests/s on one idle core) is the generator's limit.
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
                                     auto_decompress=False) as session:
        n_bodies = min(int(rate * duration_s) + 1 if mode == "open" else 10_000, len(queries))
        bodies = _make_bodies(queries, spec, k, n_bodies, query_offset)
        # The warm-up replays other queries than the measured phase, so a server-side cache
        # (none today) could not flatter the measurement.
        n_warm = min(int(rate * warmup_s) + 1 if mode == "open" else 10_000, len(queries))
        warm_bodies = _make_bodies(queries, spec, k, n_warm, query_offset + n_bodies)
        if preflight:
            await _preflight(session, search_url, warm_bodies[0])

        # Warm-up: same load, not recorded; drained before the "before" scrape.
        if warmup_s > 0:
            warm = _Tally(record=False)
            if mode == "open":
                await _open_loop(session, search_url, warm_bodies,
                                 make_schedule(rate, warmup_s, arrivals, seed=seed + 1), warm,
                                 lag_tolerance_s=lag_tolerance_ms / 1000, drain_timeout_s=timeout_s + 1)
            else:
                await _closed_loop(session, search_url, warm_bodies, concurrency, warmup_s, MAX_REQUESTS_PER_STEP,
                                   warm)

        before = await _scrape(session, metrics_url) if scrape_metrics else None
        t_before = time.monotonic()
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        tally = _Tally(record=True)
        if mode == "open":
            offsets = make_schedule(rate, duration_s, arrivals, seed=seed)
            t0 = await _open_loop(session, search_url, bodies, offsets, tally,
                                  lag_tolerance_s=lag_tolerance_ms / 1000, drain_timeout_s=timeout_s + 1)
            scheduled = len(offsets)
        else:
            t0 = await _closed_loop(session, search_url, bodies, concurrency, duration_s, MAX_REQUESTS_PER_STEP, tally)
            scheduled = tally.sent
        after = await _scrape(session, metrics_url) if scrape_metrics else None
        window = time.monotonic() - t_before

    # Rates: over the nominal duration, or longer if sending/answering ran past it.
    send_span = max(duration_s, (tally.last_send - t0) if tally.last_send else 0.0)
    done_span = max(duration_s, (tally.last_done - t0) if tally.last_done else 0.0)
    server, note = None, None
    if scrape_metrics:
        if before is None or after is None:
            note = f"could not read {metrics_url}"
        else:
            try:
                server = server_step_stats(before, after, window, spec.metric_label).to_dict()
            except CounterReset as exc:
                note = str(exc)
    return StepResult(
        encoder=spec.label,
        mode=f"open-{arrivals}" if mode == "open" else "closed-loop",
        offered_rps=float(rate) if mode == "open" else None,
        concurrency=concurrency if mode == "closed" else None,
        duration_s=duration_s,
        warmup_s=warmup_s,
        started_at=started_at,
        scheduled=scheduled,
        sent=tally.sent,
        ok=tally.ok,
        errors=dict(tally.errors),
        sent_rps=tally.sent / send_span,
        achieved_rps=tally.ok / done_span,
        generator_lag=tally.lag,
        generator_lag_max_ms=tally.lag_max * 1000,
        lag_tolerance_ms=lag_tolerance_ms,
        latency=latency.summarize(tally.latency),
        response_time=latency.summarize(tally.response),
        hdr_latency=latency.encode(tally.latency),
        server=server,
        server_note=note,
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it ships with uvicorn[standard]): a cheaper loop means the
    generator keeps its schedule at higher rates on one core."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - plain asyncio is fine, only slower
        return asyncio.new_event_loop()


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion on a fresh (uv)loop."""
    if hasattr(asyncio, "Runner"):  # Python 3.11+
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(coro)
    loop = new_event_loop()  # pragma: no cover - Python 3.10
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def run_step(url: str, encoder: "str | EncoderSpec", rate: float | None, duration_s: float, **kwargs: Any) -> StepResult:
    """Run one load step and return its measurements.

    ``url`` is the service base URL (loopback unless ``allow_remote=True``); ``encoder`` a
    name or an :class:`EncoderSpec`; ``rate`` the offered requests/s (open loop) — ignored
    in closed loop (``mode="closed", concurrency=N``). Other keywords: see
    :func:`run_step_async`.
    """
    return run_sync(run_step_async(url, encoder, rate, duration_s, **kwargs))
