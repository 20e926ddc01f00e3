import math

import pytest

from loadtest.runner import StepResult
from loadtest.search import RateSearch, is_monotonic, judge, ladder, max_sustained


def make_step(**kw) -> StepResult:
    base = dict(
        encoder="student", mode="open-constant", offered_rps=100.0, concurrency=None, duration_s=10.0,
        warmup_s=1.0, started_at="", scheduled=1000, sent=1000, ok=1000, errors={}, sent_rps=100.0,
        achieved_rps=100.0, generator_lag=0, generator_lag_max_ms=0.0, lag_tolerance_ms=5.0,
        latency={"count": 1000, "p50": 3.0, "p90": 5.0, "p99": 9.0, "p99.9": 12.0, "max": 20.0, "mean": 3.5},
        response_time={}, hdr_latency=None, server=None,
    )
    base.update(kw)
    return StepResult(**base)


def test_judge_passes_a_clean_step_and_names_each_failure():
    assert judge(make_step(), 15).sustained
    assert judge(make_step(), 5).reason == "p99 9.0 ms > 5 ms"
    v = judge(make_step(errors={"503": 3, "timeout": 1}), 15)
    assert not v.sustained and v.reason == "errors (503x3, timeoutx1)"
    assert "achieved" in judge(make_step(achieved_rps=90.0), 15).reason
    v = judge(make_step(generator_lag=50), 15)
    assert not v.sustained and v.generator_limited
    assert judge(make_step(generator_lag=2), 15).sustained  # a couple of late sends is not a trend
    assert judge(make_step(ok=0, latency={"count": 0, "p99": None}), 15).reason == "no successful requests"


def test_ladder():
    assert ladder(5, 2, 40) == [5, 10, 20, 40]
    assert ladder(10, 1.5, 30) == [10, 15, 22.5]
    with pytest.raises(ValueError):
        ladder(10, 1.0, 100)


def test_search_climbs_then_bisects_each_slo_boundary():
    # A synthetic server: p99 <= 15 ms up to 100/s, <= 100 ms up to 300/s.
    rs = RateSearch([100.0, 15.0], start=10, factor=2, max_rate=4000, refine=2)
    assert rs.slos_ms == [15.0, 100.0]  # strict first, whatever the order given
    tried = []
    while (rate := rs.next_rate()) is not None:
        tried.append(rate)
        rs.record(rate, [rate <= 100, rate <= 300])
        assert len(tried) < 20
    ladder_part = [10, 20, 40, 80, 160, 320]  # stops at the first loose failure
    assert tried[:6] == ladder_part
    strict_mid1 = round(math.sqrt(80 * 160), 3)  # 113.137 fails strict
    strict_mid2 = round(math.sqrt(80 * strict_mid1), 3)  # 95.137 passes
    loose_mid1 = round(math.sqrt(160 * 320), 3)  # 226.274 passes
    loose_mid2 = round(math.sqrt(loose_mid1 * 320), 3)  # 269.087 passes
    assert tried[6:] == [strict_mid1, strict_mid2, loose_mid1, loose_mid2]
    assert max_sustained(rs.results_for(0)) == strict_mid2
    assert max_sustained(rs.results_for(1)) == loose_mid2


def test_search_that_never_passes_stops_at_once():
    rs = RateSearch([15.0, 100.0], start=5)
    assert rs.next_rate() == 5
    rs.record(5, [False, False])
    assert rs.next_rate() is None
    assert max_sustained(rs.results_for(0)) is None


def test_search_respects_max_rate_and_max_steps():
    rs = RateSearch([15.0], start=100, factor=2, max_rate=400, max_steps=10)
    seen = []
    while (r := rs.next_rate()) is not None:
        seen.append(r)
        rs.record(r, [True])
    assert seen == [100, 200, 400]


def test_monotonic_flag():
    assert is_monotonic([(10, True), (20, True), (40, False)])
    assert not is_monotonic([(10, True), (20, False), (40, True)])
