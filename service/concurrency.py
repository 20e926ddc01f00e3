"""A concurrency limit per encoder at the HTTP edge (Little's law), beside the batcher's
expected-wait check.

Why: the batcher's admission sees the encoder's queue. With the static student an encode
costs ~0.03 ms, so a request's time in the server is the event loop's (HTTP, validation,
the response) and the worker's index search, not that queue. Closed-loop wrk, one worker, 64
connections (issue #14): the queue stayed near empty, nearly every request was admitted,
and the accepted p99 was 50 ms. What the server can answer in time is bounded by how many
requests it carries at once: at a measured rate of ``mu`` requests a second, ``n`` requests in
flight take about ``n / mu`` each (Little's law), so the limit is ``mu x SLO_SHARE x SLO``
(0.35 x 15 ms: about 5 ms of mean time).

- In flight: requests for this encoder admitted at the edge and not yet answered.
- ``mu``: requests completed per second of busy time (time with at least one in flight),
  an EWMA over windows of ``WINDOW`` completions. Busy-time rate is the service's rate at the
  concurrency it is allowed: at a low limit it is lower than at the best one, so the limit
  grows until more concurrency stops adding rate (it settles, it does not creep).
- A request is refused (``concurrency``, 429) when its encoder already carries ``limit``
  requests and its own client has one of them: a client with nothing in flight is always
  admitted, so one heavy client cannot lock another out (the overshoot is at most one
  request per client). An idle encoder refuses nobody.
- Until the first window is measured there is no limit (the batcher's check still holds).

Requests, not queries, are counted: a 64-query request costs more, but counting queries
would make it wait for an empty encoder behind a stream of single queries; the batcher's
token-cost check and its fair queue already bound a big request's encoder time.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from service.errors import Refusal

# The share of the SLO the mean request may take. The loop's jitter (the worker thread and
# the loop share a core; refusals interleave) puts a closed loop's p99 at about twice its
# mean. Interleaved A/B, one worker, wrk 4-64 connections (docs/BENCHMARKS.md, session 6):
# 0.5 kept the accepted p99 <= 12.5-20 ms from 16 connections, 0.35 <= 10-12.5 ms at the
# same served rate up to 32 connections.
SLO_SHARE = 0.35
WINDOW = 64  # completions per rate measurement
SMOOTHING = 0.2  # EWMA weight of a new window
# The least derived limit. A rate measured at low concurrency is ~1 / (one request's time),
# below what the server does with a few in flight (the loop, the worker and the index
# overlap), so a limit from it alone would refuse small bursts on an idle server (a reload
# under 4 light clients got 429s with 2). At 4 connections the student's accepted p99 stayed
# <= 5-7.5 ms in every sweep; the teacher's expensive requests stay bounded by its batcher.
MIN_LIMIT = 4


class ConcurrencyLimit:
    def __init__(self, name: str, slo_s: float, *, fixed: Optional[int] = None, retry_after_s: int = 1,
                 clock: Callable[[], float] = time.perf_counter, metrics=None):
        """``fixed``: a limit of that many requests instead of the derived one; 0 = none."""
        self.name = name
        self.slo_s = slo_s
        self.fixed = fixed
        self.retry_after_s = retry_after_s
        self.clock = clock
        self.rate = 0.0  # measured requests per busy second; 0 until the first window
        self._lock = threading.Lock()  # the edge calls it from the loop; the lock keeps it safe from any thread
        self._in_flight = 0
        self._clients: dict[str, int] = {}
        self._busy_since = 0.0
        self._busy_s = 0.0
        self._window_busy = 0.0
        self._window_done = 0
        # Set, not set_function: under --workers N a scrape reads the values the workers wrote.
        self._m_in_flight = self._m_limit = self._m_refused = None
        if metrics is not None:
            self._m_in_flight = metrics.in_flight.labels(name)
            self._m_limit = metrics.in_flight_limit.labels(name)
            self._m_refused = metrics.rejected.labels(name, "concurrency")
            self._m_limit.set(self.limit() or 0)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def limit(self) -> Optional[float]:
        """Requests this encoder may carry at once now; None: no limit (yet)."""
        if self.fixed is not None:
            return self.fixed or None
        if not self.rate or not self.slo_s:
            return None
        return max(MIN_LIMIT, self.rate * self.slo_s * SLO_SHARE)

    def acquire(self, client: str) -> None:
        """Count a request in, or raise its ``concurrency`` refusal (nothing counted)."""
        with self._lock:
            limit = self.limit()
            if limit is not None and self._in_flight >= limit and self._clients.get(client):
                if self._m_refused is not None:
                    self._m_refused.inc()
                # queued: the requests in flight, which the refusal's message reports
                raise Refusal("concurrency", self.name, limit_s=self.slo_s * SLO_SHARE, queued=self._in_flight,
                              queries=1, retry_floor_s=self.retry_after_s)
            if self._in_flight == 0:
                self._busy_since = self.clock()
            self._in_flight += 1
            self._clients[client] = self._clients.get(client, 0) + 1
            if self._m_in_flight is not None:
                self._m_in_flight.set(self._in_flight)

    def release(self, client: str) -> None:
        """Count a request out (answered, failed or abandoned: its time was spent)."""
        with self._lock:
            now = self.clock()
            busy = self._busy_s + (now - self._busy_since)
            self._in_flight -= 1
            left = self._clients.get(client, 1) - 1
            if left:
                self._clients[client] = left
            else:
                self._clients.pop(client, None)
            if self._in_flight == 0:
                self._busy_s = busy
            self._window_done += 1
            if self._window_done >= WINDOW:
                spent = busy - self._window_busy
                if spent > 0:
                    rate = self._window_done / spent
                    self.rate = rate if not self.rate else self.rate + SMOOTHING * (rate - self.rate)
                self._window_busy, self._window_done = busy, 0
                if self._m_limit is not None:
                    self._m_limit.set(self.limit() or 0)
            if self._m_in_flight is not None:
                self._m_in_flight.set(self._in_flight)
