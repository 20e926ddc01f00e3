"""The micro-batcher with a stand-in batch function (no models)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.batcher import QUERY_TOKENS, Batcher
from service.errors import Refusal, refusal_error
from service.metrics import Metrics


class Recorder:
    """Batch function that records batches and can be held at a gate."""

    def __init__(self):
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, jobs):
        self.entered.set()
        self.gate.wait(10)
        self.batches.append([job.payload for job in jobs])
        return [f"r{job.payload}" for job in jobs]


def sample(metrics: Metrics, name: str, labels: dict) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_batches_form_while_the_worker_is_busy():
    async def main():
        fn, metrics = Recorder(), Metrics()
        b = Batcher("student", fn, max_batch=4, queue_size=100, metrics=metrics)
        b.start(asyncio.get_running_loop())
        fn.gate.clear()
        first = b.submit(0)
        await asyncio.to_thread(fn.entered.wait, 10)
        rest = [b.submit(i) for i in range(1, 7)]
        assert b.qsize() == 6 and sample(metrics, "hlm_queue_depth", {"encoder": "student"}) == 6
        fn.gate.set()
        results = await asyncio.gather(first, *rest)
        await b.close()
        return fn.batches, results, metrics

    batches, results, metrics = run(main())
    assert results == [f"r{i}" for i in range(7)]
    assert batches == [[0], [1, 2, 3, 4], [5, 6]]
    assert sample(metrics, "hlm_batch_size_count", {"encoder": "student"}) == 3
    assert sample(metrics, "hlm_batch_size_sum", {"encoder": "student"}) == 7
    assert sample(metrics, "hlm_queue_wait_seconds_count", {"encoder": "student"}) == 7


def test_a_job_larger_than_max_batch_runs_alone():
    async def main():
        fn = Recorder()
        b = Batcher("teacher", fn, max_batch=2, queue_size=10)
        b.start(asyncio.get_running_loop())
        fn.gate.clear()
        first = b.submit("a")
        await asyncio.to_thread(fn.entered.wait, 10)
        big, small = b.submit("big", size=5), b.submit("small")
        fn.gate.set()
        await asyncio.gather(first, big, small)
        await b.close()
        return fn.batches

    assert run(main()) == [["a"], ["big"], ["small"]]


def test_full_queue_refuses_at_once_and_cancelled_jobs_are_skipped():
    async def main():
        fn, metrics = Recorder(), Metrics()
        b = Batcher("teacher", fn, max_batch=1, queue_size=2, retry_after_s=3, metrics=metrics)
        b.start(asyncio.get_running_loop())
        fn.gate.clear()
        running = b.submit("running")
        await asyncio.to_thread(fn.entered.wait, 10)
        gone, kept = b.submit("gone"), b.submit("kept")
        with pytest.raises(Refusal) as info:
            b.submit("refused")
        gone.cancel()  # the client went away while queued
        fn.gate.set()
        assert await running == "rrunning" and await kept == "rkept"
        await b.close()
        return fn.batches, info.value, metrics

    batches, refusal, metrics = run(main())
    assert batches == [["running"], ["kept"]]
    error = refusal_error(refusal)
    assert error.status == 429 and error.code == "queue_full" and error.headers == {"Retry-After": "3"}
    assert sample(metrics, "hlm_rejected_total", {"encoder": "teacher", "reason": "queue_full"}) == 1
    assert sample(metrics, "hlm_rejected_total", {"encoder": "teacher", "reason": "client_gone"}) == 1


def test_close_drains_the_queue_then_refuses():
    async def main():
        fn = Recorder()
        b = Batcher("student", fn, max_batch=2, queue_size=10)
        b.start(asyncio.get_running_loop())
        fn.gate.clear()
        futures = [b.submit(i) for i in range(5)]
        seen = []
        assert b.submit_background(99, 1, seen.append, only_if_idle=False)
        assert not b.submit_background(98, 1, seen.append, only_if_idle=True)  # queue busy: dropped
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0.05)
        with pytest.raises(Refusal) as info:
            b.submit(100)
        assert info.value.reason == "shutting_down" and refusal_error(info.value).status == 503
        fn.gate.set()
        await closing
        return [f.result() for f in futures], seen

    results, seen = run(main())
    assert results == [f"r{i}" for i in range(5)] and seen == ["r99"]


def test_a_failing_batch_fails_its_requests_not_the_worker():
    calls = []

    def fn(jobs):
        calls.append(len(jobs))
        if jobs[0].payload == "boom":
            raise ValueError("boom")
        return ["ok" for _ in jobs]

    async def main():
        b = Batcher("student", fn, max_batch=1, queue_size=10)
        b.start(asyncio.get_running_loop())
        with pytest.raises(ValueError):
            await b.submit("boom")
        result = await b.submit("fine")
        await b.close()
        return result

    assert run(main()) == "ok"


def test_max_wait_collects_a_later_request():
    async def main():
        fn = Recorder()
        b = Batcher("student", fn, max_batch=2, max_wait_s=2.0, queue_size=10)
        b.start(asyncio.get_running_loop())
        first = b.submit("a")
        await asyncio.sleep(0.05)
        second = b.submit("b")
        await asyncio.gather(first, second)
        await b.close()
        return fn.batches

    assert run(main()) == [["a", "b"]]


def test_the_rest_of_the_running_batch_counts_against_the_queue_budget():
    """An empty queue behind a batch that will run longer than the budget is refused; the
    clock and the cost per query are injected, so the machine's speed cannot matter."""
    clock = FakeClock()
    fn = Recorder()

    async def main():
        metrics = Metrics()
        b = Batcher("student", fn, max_batch=4, max_queue_wait_s=0.05, clock=clock, metrics=metrics)
        b.cost_per_unit = 0.2 / QUERY_TOKENS  # 200 ms a query
        b.start(asyncio.get_running_loop())
        fn.gate.clear()
        running = b.submit("first")
        await asyncio.to_thread(fn.entered.wait, 10)
        assert b.qsize() == 0 and b.expected_wait_s() == pytest.approx(0.2)
        with pytest.raises(Refusal) as info:
            b.submit("behind a long batch")
        clock.t = 0.16  # 40 ms of the batch left: within the budget
        assert b.expected_wait_s() == pytest.approx(0.04)
        admitted = b.submit("near its end")
        b.cost_per_unit = 0.2 / QUERY_TOKENS
        fn.gate.set()
        assert await running == "rfirst" and await admitted == "rnear its end"
        await b.close()
        return info.value, metrics

    refusal, metrics = run(main())
    error = refusal_error(refusal)
    assert refusal.reason == "budget" and error.status == 429 and "200 ms of work ahead" in error.message
    assert error.headers == {"Retry-After": "1"}  # 0.2 s rounds up to HTTP's whole second
    assert sample(metrics, "hlm_rejected_total", {"encoder": "student", "reason": "budget"}) == 1


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t
