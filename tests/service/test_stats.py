"""The /v1/stats ring on the service's real metrics registry, with a hand-driven clock."""

from __future__ import annotations

import pytest

from service.metrics import Metrics
from service.stats import StatsRing, quantile, read


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def observe(metrics: Metrics, encoder: str, seconds: float, n: int, status: str = "200",
            route: str = "/v1/search") -> None:
    child = metrics.request_duration.labels(route, encoder, status)
    for _ in range(n):
        child.observe(seconds)


def test_counts_rates_and_quantiles_by_encoder():
    metrics, clock = Metrics(), Clock()
    ring = StatsRing(metrics.request_duration, window_s=300, every_s=5, clock=clock)
    observe(metrics, "student", 0.0018, 99)   # bucket (1.5 ms, 2 ms]
    observe(metrics, "student", 0.04, 1)      # bucket (30 ms, 50 ms]
    observe(metrics, "student", 0.001, 3, status="429")
    observe(metrics, "teacher", 0.025, 10, route="/v1/embeddings")
    observe(metrics, "teacher", 0.025, 2, status="422")
    observe(metrics, "none", 0.001, 50, route="/healthz")  # not an encoder's work: left out
    clock.t += 50
    s = ring.summary()
    assert s["window_s"] == 50
    student, teacher = s["encoders"]["student"], s["encoders"]["teacher"]
    assert (student["served"], student["refused"], student["errors"]) == (100, 3, 0)
    assert (teacher["served"], teacher["refused"], teacher["errors"]) == (10, 0, 2)
    assert student["served_rps"] == 2.0 and teacher["served_rps"] == 0.2
    # PromQL's interpolation: rank 50 of 99 in (1.5, 2] ms; rank 99 is the bucket's top.
    assert student["p50_ms"] == pytest.approx(1.5 + 0.5 * 50 / 99, abs=1e-3)
    assert student["p99_ms"] == pytest.approx(2.0, abs=1e-3)
    assert teacher["p50_ms"] == pytest.approx(20 + 10 * 0.5, abs=1e-3)


def test_the_window_forgets_what_is_older_than_its_length():
    metrics, clock = Metrics(), Clock()
    ring = StatsRing(metrics.request_duration, window_s=60, every_s=5, clock=clock)
    observe(metrics, "student", 0.002, 40)
    clock.t += 10
    assert ring.summary()["encoders"]["student"]["served"] == 40  # reading kept at t+10
    clock.t += 100  # the first 40 are now more than a window old
    observe(metrics, "student", 0.002, 7)
    s = ring.summary()
    assert s["encoders"]["student"]["served"] == 7
    assert s["window_s"] == 100  # back to the newest reading before the window: said, not hidden
    clock.t += 30
    observe(metrics, "teacher", 0.03, 2)
    s = ring.summary()
    assert s["encoders"]["student"]["served"] == 7 and s["encoders"]["teacher"]["served"] == 2
    assert len(s["series"]["student"]) == 2 and s["series"]["student"][-1]["ago_s"] == 0


def test_no_traffic_gives_no_percentiles():
    metrics, clock = Metrics(), Clock()
    ring = StatsRing(metrics.request_duration, clock=clock)
    clock.t += 1
    s = ring.summary()["encoders"]["student"]
    assert s["served"] == 0 and s["p50_ms"] is None and s["p99_ms"] is None
    assert read(metrics.request_duration) == {}
    assert quantile(0.99, []) is None
