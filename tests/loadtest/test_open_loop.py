"""The schedule really is open, against a real loopback server that stalls.

The server has one worker and takes 100 ms per request; we offer 20 requests/s (one every
50 ms) for 1.5 s, i.e. 30 requests, twice what it can serve. An open loop must still send
all 30 on schedule, within ~1.45 s, although answering them takes ~3 s. Request i (from 0)
is scheduled at 0.05*i and answered at about 0.1*(i+1), so its latency from the scheduled
start is 0.1 + 0.05*i s: 0.1 s for the first, 1.55 s for the last, median ~0.8 s. A closed
loop against the same server hides that queue: it only ever sees the 100 ms service time.

Every bound below holds however slow the machine is: the server's 100 ms are a floor
(asyncio.sleep never returns early), so queueing can only make latencies larger and the
answer rate lower; the generator's own punctuality is the harness's to report
(``generator_lag``), not asserted.
"""

import httpx
import pytest

from loadtest.runner import HarnessError, run_step

QUERIES = ["cordless drill", "what is paula deen's brother", "garden hose"]


def test_open_loop_keeps_sending_while_the_server_stalls(slow_serial_service):
    url = slow_serial_service
    httpx.post(url + "/debug/reset")
    step = run_step(url, "student", 20, 1.5, warmup_s=0, queries=QUERIES, timeout_s=10, preflight=False)

    # every request was sent, not at the server's pace: answering 30 takes >= 3 s, and a
    # closed loop would need >= 2.9 s between the first and the last arrival
    assert step.scheduled == step.sent == 30
    assert step.ok == 30 and step.errors == {}
    arrivals = sorted(a["t"] for a in httpx.get(url + "/debug/arrivals").json())
    assert len(arrivals) == 30
    spread = arrivals[-1] - arrivals[0]
    # (~1.45 s when on time; only a generator that fell behind, and says so, may take longer)
    assert spread < 2.9 or step.generator_lag > 0, (spread, step.generator_lag_max_ms)
    assert step.achieved_rps <= 10.5  # answers came back at <= 10/s, one worker of 100 ms

    # latency from the scheduled start grows with the queue: request i waits >= 0.1 + 0.05*i s
    # (0.1 s for the first, 1.55 s for the last): floors, whatever the machine
    lat = step.latency
    assert lat["count"] == 30
    assert lat["p50"] > 700  # requests 12..29, more than half, each wait >= 0.7 s
    assert lat["max"] > 1500

    # the server's own histogram saw the same queue (its lock is inside the handler)
    assert step.server is not None
    assert step.server["ok_requests"] == 30
    assert step.server["p99"] > 500


def test_closed_loop_hides_the_queue_and_is_labelled(slow_serial_service):
    step = run_step(slow_serial_service, "student", None, 1.0, warmup_s=0, queries=QUERIES,
                    mode="closed", concurrency=1)
    assert step.mode == "closed-loop" and step.offered_rps is None and step.concurrency == 1
    assert 1 <= step.ok <= 11  # one at a time, >= 100 ms each: at most ~10 in 1 s
    # A closed loop times from the actual send, so it only ever sees the service time, never
    # a queue: its latency is its response time, and the open loop's floors above do not apply.
    assert step.latency["count"] == step.response_time["count"] == step.ok
    assert step.latency["p99"] == pytest.approx(step.response_time["p99"], rel=0.01)
    assert step.latency["p50"] >= 99  # the 100 ms service time is a floor


def test_warmup_is_excluded_from_client_and_server_numbers(slow_serial_service):
    step = run_step(slow_serial_service, "student", 5, 1.0, warmup_s=0.6, queries=QUERIES, timeout_s=10)
    assert step.sent == 5 and step.latency["count"] == 5
    assert step.server["ok_requests"] == 5  # warm-up drained before the first scrape


def test_unknown_encoder_fails_before_any_load(slow_serial_service):
    with pytest.raises(HarnessError, match="422"):
        run_step(slow_serial_service, "nope", 10, 0.5, warmup_s=0, queries=QUERIES)


def test_errors_are_counted_by_status(quick_service):
    step = run_step(quick_service, "nope", 40, 0.5, warmup_s=0, queries=QUERIES, preflight=False)
    assert step.errors == {"422": 20} and step.ok == 0
    assert step.latency["count"] == 0 and step.latency["p99"] is None


def test_refused_connections_are_errors_not_crashes():
    from loadtest.cpus import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    step = run_step(url, "student", 20, 0.3, warmup_s=0, queries=QUERIES, preflight=False,
                    scrape_metrics=True)
    assert step.errors == {"connect_error": 6}
    assert step.server is None and "metrics" in step.server_note
