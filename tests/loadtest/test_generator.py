"""The generator keeps up with a few thousand requests per second on one core.

Against the cheapest possible server (its own process, its own core when there are two),
2000 requests/s for 2 s must all go out and all be answered, and what the harness reports
about its own punctuality must be consistent. Its speed is not asserted (it would fail on a
busy machine, not on a broken generator): the client costs ~250 us of CPU per request here
(about 4000 requests/s on an idle core), printed, and a sweep step whose generator fell
behind fails as "generator lagged" (tests/loadtest/test_schedule.py, loadtest/sweep.py).
"""

import resource

from loadtest.runner import run_step


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def test_generator_sends_2000_per_second(trivial_server):
    before = _cpu_s()
    # A client timeout far above any stall of a busy machine: "all answered" is about the
    # generator and the server, not about how fast a loaded machine answers (the default 5 s
    # timeout turned a stall into "errors").
    step = run_step(trivial_server, "student", 2000, 2.0, warmup_s=0.3, queries=["q"], scrape_metrics=False,
                    timeout_s=120)
    cpu_per_request = (_cpu_s() - before) / (step.sent + 600)  # warm-up sent 600 more
    seen = {k: v for k, v in step.to_dict().items() if k != "hdr_latency"}
    print(f"\n{cpu_per_request * 1e6:.0f} us of CPU per request, {step.sent_rps:.0f} sent/s, "
          f"{step.generator_lag} launched late (max {step.generator_lag_max_ms:.1f} ms)")
    assert step.sent == step.scheduled == 4000, seen
    assert step.errors == {}, seen
    assert step.ok == 4000 and step.latency["count"] == 4000, seen
    assert 0 <= step.generator_lag <= step.sent, seen
    assert (step.generator_lag == 0) == (step.generator_lag_max_ms <= step.lag_tolerance_ms), seen
