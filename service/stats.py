"""A small JSON summary of the service's own request histogram, for the playground.

``GET /v1/stats`` answers p50/p99 and the served rate by encoder over the last few
minutes. It reads ``hlm_request_duration_seconds`` (the same series Prometheus scrapes),
not a second set of counters, so the page and a Prometheus dashboard cannot disagree.

The window needs an earlier reading to subtract. Readings are taken when the summary is
asked for (at most one kept per ``every_s``; no background task, nothing to start or
stop), into a ring that keeps ``window_s`` of them plus the newest one before the window
(the baseline). The first reading is the empty histogram at construction. When nobody
asked for a while the window therefore stretches back to the last reading; the answer
says how many seconds it covers rather than pretend.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any, Optional, Sequence

from service.metrics import ENCODERS, LATENCY_BUCKETS

# Requests by status, per encoder: served (200), refused (shed: 429, 503) and other errors.
REFUSED = frozenset({"429", "503"})
BOUNDS = tuple(LATENCY_BUCKETS) + (math.inf,)

Reading = dict[str, dict[str, list[float]]]  # encoder -> status -> cumulative bucket counts (le order)


def read(histogram) -> Reading:
    """Cumulative bucket counts of ``histogram`` per encoder and status, summed over routes."""
    out: Reading = {}
    index = {b: i for i, b in enumerate(BOUNDS)}
    for family in histogram.collect():
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            encoder = sample.labels.get("encoder")
            if encoder not in ENCODERS:  # "none": health checks, the page itself, unparsed bodies
                continue
            i = index.get(float(sample.labels["le"]))
            if i is None:
                continue
            row = out.setdefault(encoder, {}).setdefault(sample.labels["status"], [0.0] * len(BOUNDS))
            row[i] += sample.value
    return out


def quantile(q: float, counts: Sequence[float]) -> Optional[float]:
    """PromQL's histogram_quantile on cumulative ``counts`` over BOUNDS (linear in a bucket), seconds."""
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(BOUNDS, counts):
        if count >= rank:
            if math.isinf(bound):  # past the last finite bucket: its bound is all we know
                return BOUNDS[-2]
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return BOUNDS[-2]


def _minus(a: Optional[list[float]], b: Optional[list[float]]) -> list[float]:
    a = a or [0.0] * len(BOUNDS)
    b = b or [0.0] * len(BOUNDS)
    # A counter never goes down within one process; max() only guards rounding.
    return [max(x - y, 0.0) for x, y in zip(a, b)]


def _summary(new: Reading, old: Reading, seconds: float) -> dict[str, dict[str, Any]]:
    out = {}
    for encoder in ENCODERS:
        now, then = new.get(encoder, {}), old.get(encoder, {})
        served = _minus(now.get("200"), then.get("200"))
        refused = errors = 0.0
        for status in set(now) | set(then):
            if status == "200":
                continue
            n = _minus(now.get(status), then.get(status))[-1]
            if status in REFUSED:
                refused += n
            else:
                errors += n
        p50, p99 = quantile(0.5, served), quantile(0.99, served)
        out[encoder] = {
            "served": int(served[-1]),
            "refused": int(refused),
            "errors": int(errors),
            "served_rps": round(served[-1] / seconds, 3) if seconds > 0 else 0.0,
            "p50_ms": None if p50 is None else round(p50 * 1000.0, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000.0, 3),
        }
    return out


class StatsRing:
    """Readings of the request histogram over the last ``window_s`` seconds."""

    def __init__(self, histogram, *, window_s: float = 300.0, every_s: float = 4.0,
                 clock=time.monotonic):
        self.histogram = histogram
        self.window_s = window_s
        self.every_s = every_s
        self.clock = clock
        self._lock = threading.Lock()
        # (monotonic time, reading); bounded: one per every_s over the window, plus the baseline
        self._ring: collections.deque[tuple[float, Reading]] = collections.deque(
            [(clock(), {})], maxlen=int(window_s / every_s) + 2)

    def summary(self) -> dict[str, Any]:
        now = self.clock()
        current = read(self.histogram)
        with self._lock:
            ring = self._ring
            if now - ring[-1][0] >= self.every_s:
                ring.append((now, current))
            # Drop readings while the next one is still old enough to serve as the baseline.
            while len(ring) > 1 and ring[1][0] <= now - self.window_s:
                ring.popleft()
            points = list(ring)
        base_t, base = points[0]
        seconds = now - base_t
        series = {name: [] for name in ENCODERS}
        for (t0, r0), (t1, r1) in zip(points, points[1:]):
            step = _summary(r1, r0, t1 - t0)
            for name in ENCODERS:
                s = step[name]
                series[name].append({"ago_s": round(now - t1, 1), "served_rps": s["served_rps"],
                                     "p99_ms": s["p99_ms"]})
        return {
            "window_s": round(seconds, 1),
            "target_window_s": self.window_s,
            "encoders": _summary(current, base, seconds),
            "series": series,
        }
