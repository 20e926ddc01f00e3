"""Server-side numbers from two real /metrics texts (prometheus_client), checked by hand.

Buckets (s): 0.005, 0.01, 0.025, 0.05, 0.1, +Inf.
Before the step: 10 student requests of 3 ms (status 200).
During the step (2.0 s): student 200s: 50 x 4 ms, 40 x 8 ms, 9 x 20 ms, 1 x 70 ms (100);
student 429s: 3 x 1 ms; teacher 200s: 5 x 30 ms; 2 rejections (queue_full) for student.

Delta of the student's status-200 buckets (cumulative):
    le 0.005: 50, 0.01: 90, 0.025: 99, 0.05: 99, 0.1: 100, +Inf: 100
p95: rank 95 falls in (0.01, 0.025] holding 9, 5 into it -> 0.01 + 0.015 * 5/9 = 18.333 ms
p75: rank 75 in (0.005, 0.01] holding 40, 25 into it -> 0.005 + 0.005 * 25/40 = 8.125 ms
p99: rank 99 = the top of (0.01, 0.025]                 -> 25 ms
p50: rank 50 = the top of the first bucket (from 0)      -> 5 ms
throughput: 100 ok / 2.0 s = 50 /s.
Teacher: 5 in (0.025, 0.05]; p99 rank 4.95 -> 0.025 + 0.025 * 4.95/5 = 49.75 ms.
"""

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from loadtest.servermetrics import (
    CounterReset, delta, histogram_quantile, parse_histograms, select_sum, server_step_stats,
)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1)


def _registry():
    r = CollectorRegistry()
    h = Histogram("hlm_request_duration_seconds", "d", ["route", "encoder", "status"], buckets=BUCKETS, registry=r)
    c = Counter("hlm_rejected_total", "r", ["encoder", "reason"], registry=r)
    return r, h, c


@pytest.fixture
def texts():
    r, h, c = _registry()
    student = h.labels("/v1/search", "student", "200")
    for _ in range(10):
        student.observe(0.003)
    c.labels("student", "queue_full")
    before = generate_latest(r).decode()
    for v, n in ((0.004, 50), (0.008, 40), (0.02, 9), (0.07, 1)):
        for _ in range(n):
            student.observe(v)
    for _ in range(3):
        h.labels("/v1/search", "student", "429").observe(0.001)
    for _ in range(5):
        h.labels("/v1/search", "teacher", "200").observe(0.03)
    c.labels("student", "queue_full").inc(2)
    after = generate_latest(r).decode()
    return before, after


def test_bucket_deltas(texts):
    before, after = texts
    sel = dict(route="/v1/search", encoder="student", status="200")
    d = delta(select_sum(parse_histograms(after, "hlm_request_duration_seconds"), **sel),
              select_sum(parse_histograms(before, "hlm_request_duration_seconds"), **sel))
    assert d.sorted_buckets() == [(0.005, 50), (0.01, 90), (0.025, 99), (0.05, 99), (0.1, 100), (math.inf, 100)]
    assert d.count == 100
    assert d.sum == pytest.approx(50 * 0.004 + 40 * 0.008 + 9 * 0.02 + 0.07)


def test_quantiles_by_hand(texts):
    before, after = texts
    sel = dict(route="/v1/search", encoder="student", status="200")
    d = delta(select_sum(parse_histograms(after, "hlm_request_duration_seconds"), **sel),
              select_sum(parse_histograms(before, "hlm_request_duration_seconds"), **sel))
    assert histogram_quantile(0.95, d) == pytest.approx(0.01 + 0.015 * 5 / 9)
    assert histogram_quantile(0.75, d) == pytest.approx(0.008125)
    assert histogram_quantile(0.99, d) == pytest.approx(0.025)
    assert histogram_quantile(0.50, d) == pytest.approx(0.005)


def test_server_step_stats_by_hand(texts):
    before, after = texts
    s = server_step_stats(before, after, 2.0, "student")
    assert s.ok_requests == 100 and s.requests == 103
    assert s.by_status == {"200": 100, "429": 3}
    assert s.rps == pytest.approx(50.0)
    assert s.p99 == pytest.approx(25.0)
    assert s.p50 == pytest.approx(5.0)
    assert s.mean == pytest.approx((50 * 4 + 40 * 8 + 9 * 20 + 70) / 100)
    assert s.rejected == {"queue_full": 2}
    t = server_step_stats(before, after, 2.0, "teacher")  # no teacher series in `before`: zeros
    assert t.ok_requests == 5 and t.p99 == pytest.approx(49.75)


def test_prometheus_edge_rules():
    inf = math.inf
    # rank in the +Inf bucket: the highest finite bound, as Prometheus answers
    assert histogram_quantile(0.99, [(0.1, 0), (1.0, 0), (inf, 1)]) == 1.0
    assert math.isnan(histogram_quantile(0.5, [(0.1, 1), (1.0, 2)]))  # no +Inf bucket
    assert math.isnan(histogram_quantile(0.5, [(0.1, 0), (inf, 0)]))  # no observations
    assert histogram_quantile(1.5, [(0.1, 1), (inf, 1)]) == inf
    assert histogram_quantile(-1, [(0.1, 1), (inf, 1)]) == -inf
    # a non-monotonic scrape is repaired, not trusted: (0.2 -> 9) is read as 10
    assert histogram_quantile(0.5, [(0.1, 10), (0.2, 9), (inf, 20)]) == 0.1


def test_counter_reset_is_refused(texts):
    before, after = texts
    with pytest.raises(CounterReset):
        server_step_stats(after, before, 2.0, "student")
