"""The generator keeps up with a few thousand requests per second on one core.

Against the cheapest possible server (its own process, its own core when there are two),
2000 requests/s for 2 s must all go out at that rate and all be answered. The bounds are
sanity bounds, not a benchmark: the client costs ~250 us of CPU per request here (about
4000 requests/s on an idle core). How *punctually* each send leaves depends on what else
the machine runs; the harness reports that itself (late sends) and a sweep step whose
generator fell behind fails as "generator lagged", so it is not asserted here.
"""

import resource

from loadtest.runner import run_step


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def test_generator_sends_2000_per_second(trivial_server):
    before = _cpu_s()
    step = run_step(trivial_server, "student", 2000, 2.0, warmup_s=0.3, queries=["q"], scrape_metrics=False)
    cpu_per_request = (_cpu_s() - before) / (step.sent + 600)  # warm-up sent 600 more
    seen = {k: v for k, v in step.to_dict().items() if k != "hdr_latency"}
    assert step.sent == step.scheduled == 4000, seen
    assert step.errors == {}, seen
    assert step.ok == 4000, seen
    assert step.sent_rps > 1500, seen
    assert cpu_per_request < 0.001, f"{cpu_per_request * 1e6:.0f} us of CPU per request"
