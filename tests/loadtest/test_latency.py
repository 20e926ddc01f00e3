"""Percentiles against a hand-worked case.

Latencies 1, 2, ..., 100 ms, one each. Nearest rank: p50 is the 50th value (50 ms), p90
the 90th (90 ms), p99 the 99th (99 ms), p99.9 rounds up to the 100th (100 ms); max 100 ms,
mean 50.5 ms. HdrHistogram keeps 3 significant digits, so each value may read up to 0.1 %
high (it reports the top of its sub-bucket).
"""

import pytest

from loadtest import latency


def _hist_1_to_100_ms():
    h = latency.new_histogram()
    for ms in range(1, 101):
        latency.record_seconds(h, ms / 1000)
    return h


def test_percentiles_of_1_to_100_ms():
    s = latency.summarize(_hist_1_to_100_ms())
    assert s["count"] == 100
    for key, want in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 100), ("max", 100), ("mean", 50.5)):
        assert s[key] == pytest.approx(want, rel=1e-3), key
        assert s[key] >= want * (1 - 1e-9), key  # never below the true value


def test_tail_is_not_averaged_away():
    # 990 requests of 2 ms and 10 stalls of 2 s: p99 is the 990th value (2 ms), p99.9 the
    # 999th (a stall), and the mean (~22 ms) hides what the tail shows.
    h = latency.new_histogram()
    for _ in range(990):
        latency.record_seconds(h, 0.002)
    for _ in range(10):
        latency.record_seconds(h, 2.0)
    s = latency.summarize(h)
    assert s["p99"] == pytest.approx(2.0, rel=1e-3)
    assert s["p99.9"] == pytest.approx(2000, rel=1e-3)
    assert s["max"] == pytest.approx(2000, rel=1e-3)
    assert s["mean"] == pytest.approx((990 * 2 + 10 * 2000) / 1000, rel=1e-3)


def test_encode_decode_round_trip_and_empty():
    h = _hist_1_to_100_ms()
    back = latency.decode(latency.encode(h))
    assert latency.summarize(back) == latency.summarize(h)
    values, counts = latency.recorded_values_ms(back)
    assert sum(counts) == 100 and len(values) == 100
    assert latency.encode(latency.new_histogram()) is None
    assert latency.summarize(latency.new_histogram())["p99"] is None
