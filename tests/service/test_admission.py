"""Admission and scheduling of the batcher by cost (tokens), with an injected clock and
injected costs per token: nothing here depends on how fast the machine is.

Payloads are small dataclasses with ``texts`` (a text's token count is its length, through
the ``tokens`` hook), the batch function a recorder held at a gate, so the tests decide
what is running and what is queued when admission is asked.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from service.batcher import REQUEST, Batcher, Ticket, join_answers, split_texts, token_counter
from service.errors import Refusal, refusal_error
from service.metrics import Metrics


@dataclass
class Ask:
    texts: list[str]
    tag: str = ""


@dataclass
class Got:
    texts: list[str]
    vectors: np.ndarray
    encode_s: float = 0.0
    queue_s: float = 0.0
    batch: int = 1


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Held:
    """Batch function: records (tag, texts) per batch; held at a gate while the test looks."""

    def __init__(self):
        self.batches: list[list[tuple[str, list[str]]]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, parts):
        self.entered.set()
        self.gate.wait(10)
        self.batches.append([(p.payload.tag, list(p.payload.texts)) for p in parts])
        return [Got(list(p.payload.texts), np.full((p.size, 2), p.size, dtype=np.float32), 0.001, 0.0, p.size)
                for p in parts]


def lengths(texts):
    return [len(t) for t in texts]


def batcher(fn, clock, metrics=None, **kw) -> Batcher:
    options = dict(max_batch=4, queue_size=100, tokens=lengths, split=split_texts, join=join_answers,
                   clock=clock, metrics=metrics)
    options.update(kw)
    b = Batcher("student", fn, **options)
    b.cost_per_unit = 0.001  # injected: 1 ms per token-unit (calibrate is None: it stays until a batch ends)
    return b


def submit_as(b: Batcher, client: str, ask: Ask):
    REQUEST.set(Ticket(client))
    return b.submit(ask, len(ask.texts))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_a_job_is_cut_into_parts_within_max_batch_and_the_token_budget_and_joined_in_order():
    fn = Held()
    fn.gate.set()
    texts = [f"q{i}".ljust(3 + (i % 3), "x") for i in range(11)]  # 3 to 5 tokens each

    async def main():
        b = batcher(fn, Clock(), max_batch=4, max_batch_tokens=12)
        b.start(asyncio.get_running_loop())
        answer = await submit_as(b, "a", Ask(texts, "big"))
        await b.close()
        return answer

    answer = run(main())
    assert answer.texts == texts  # every part's rows, in the request's order
    assert answer.vectors.shape == (11, 2)
    assert answer.encode_s == pytest.approx(0.001 * len(fn.batches))  # summed over the parts
    for batch in fn.batches:
        rows = [t for _, part in batch for t in part]
        assert len(rows) <= 4 and len(rows) * max(map(len, rows)) <= 12  # padded tokens within budget
    assert len(fn.batches) > 2


def test_the_fair_queue_runs_a_light_client_before_a_heavy_clients_backlog():
    fn = Held()

    async def main():
        b = batcher(fn, Clock())
        b.start(asyncio.get_running_loop())
        first = submit_as(b, "heavy", Ask(["aaaa"] * 4, "A"))
        await asyncio.to_thread(fn.entered.wait, 10)
        backlog = [submit_as(b, "heavy", Ask(["aaaa"] * 4, tag)) for tag in "BCD"]
        light = submit_as(b, "light", Ask(["a"], "L"))
        fn.gate.set()
        await asyncio.gather(first, light, *backlog)
        await b.close()

    run(main())
    assert [[tag for tag, _ in batch] for batch in fn.batches] == [["A"], ["L"], ["B"], ["C"], ["D"]]


def test_one_client_alone_is_served_in_order():
    fn = Held()
    fn.gate.set()

    async def main():
        b = batcher(fn, Clock(), max_batch=1)
        b.start(asyncio.get_running_loop())
        await asyncio.gather(*[submit_as(b, "solo", Ask(["x"], str(i))) for i in range(6)])
        await b.close()

    run(main())
    assert [batch[0][0] for batch in fn.batches] == [str(i) for i in range(6)]


def test_refusal_reasons_and_retry_after_follow_the_expected_wait():
    fn, clock, metrics = Held(), Clock(), Metrics()
    seen = {}

    async def main():
        b = batcher(fn, clock, metrics, max_batch=8, max_queue_wait_s=0.05, max_request_s=1.0, queue_size=3)
        b.start(asyncio.get_running_loop())
        running = submit_as(b, "heavy", Ask(["x" * 92] * 4))  # 4 x 100 units: 400 ms
        await asyncio.to_thread(fn.entered.wait, 10)
        # A newcomer is not charged for another client's running batch (it goes next).
        b.admit([5], "light")
        # The heavy client is: its own batch has ~400 ms left, and it is alone -> budget.
        with pytest.raises(Refusal) as alone:
            b.admit([5], "heavy")
        seen["alone"] = alone.value
        light = submit_as(b, "light", Ask(["y" * 5]))
        # Now another client waits too: the heavy client's own work is the cause -> client_share.
        with pytest.raises(Refusal) as share:
            b.admit([5], "heavy")
        seen["share"] = share.value
        # A third client is a newcomer too: a one-query job's fair tag (8 units after the
        # running batch's) comes before the light client's queued 13 units: nothing ahead.
        assert b.expected_wait_s("third") == pytest.approx(0.0)
        b.admit([5], "third")
        with pytest.raises(Refusal) as large:  # 2 x 600 units: 1.2 s of encoder alone
            b.admit([592, 592], "third")
        seen["large"] = large.value
        clock.t = 0.39  # the running batch nearly done: the heavy client fits again
        b.admit([5], "heavy")
        more = [submit_as(b, f"c{i}", Ask(["z"])) for i in range(2)]
        with pytest.raises(Refusal) as full:  # 3 jobs queued: the queue_size bound
            b.admit([1], "c9")
        seen["full"] = full.value
        clock.t = 2.0
        fn.gate.set()
        await asyncio.gather(running, light, *more)
        await b.close()

    run(main())
    alone, share, large, full = (seen[k] for k in ("alone", "share", "large", "full"))
    assert alone.reason == "budget" and alone.wait_s == pytest.approx(0.4)
    assert share.reason == "client_share" and share.wait_s == pytest.approx(0.4 + 0.013)
    assert large.reason == "too_large" and large.cost_s == pytest.approx(1.2)
    assert full.reason == "queue_full"
    answers = {k: refusal_error(v) for k, v in seen.items()}
    assert answers["alone"].status == 429 and answers["alone"].code == "budget"
    assert answers["alone"].headers == {"Retry-After": "1"}
    assert answers["share"].status == 429 and answers["share"].code == "client_share"
    assert answers["large"].status == 413 and "fewer or shorter" in answers["large"].message
    assert answers["large"].headers == {}
    for reason, n in {"budget": 1, "client_share": 1, "too_large": 1, "queue_full": 1}.items():
        assert metrics.registry.get_sample_value("hlm_rejected_total", {"encoder": "student", "reason": reason}) == n


def test_retry_after_is_the_expected_wait_in_whole_seconds_at_least_the_floor():
    assert refusal_error(Refusal("budget", "teacher", wait_s=2.2)).headers == {"Retry-After": "3"}
    assert refusal_error(Refusal("budget", "teacher", wait_s=0.004)).headers == {"Retry-After": "1"}
    assert refusal_error(Refusal("queue_full", "teacher", wait_s=0.1, retry_floor_s=2)).headers == {"Retry-After": "2"}


def test_the_budget_is_the_slo_minus_the_measured_service_time():
    b = Batcher("student", lambda parts: [], max_batch=4, max_queue_wait_s=None, slo_s=0.015)
    assert b.budget_s() == pytest.approx(0.015)  # nothing measured yet
    for _ in range(200):
        b.observe_service(0.003)
    assert b.budget_s() == pytest.approx(0.012, abs=1e-4)
    for i in range(200):  # the loop saturated: service times spread to 3-11 ms
        b.observe_service(0.003 if i % 2 else 0.011)
    assert 0.005 <= b.budget_s() < 0.006
    for _ in range(500):
        b.observe_service(0.02)  # slower than the SLO itself: the floor, a third of the SLO
    assert b.budget_s() == pytest.approx(0.005)
    fixed = Batcher("student", lambda parts: [], max_batch=4, max_queue_wait_s=0.005, slo_s=0.015)
    fixed.observe_service(0.014)
    assert fixed.budget_s() == 0.005


def test_an_idle_encoder_admits_a_burst_that_fits_the_budget():
    fn, clock = Held(), Clock()

    async def main():
        b = batcher(fn, clock, max_batch=16, max_queue_wait_s=None, slo_s=0.015)
        b.cost_per_unit = 0.00001  # a cheap encoder: 50 one-token queries are ~4.5 ms
        b.start(asyncio.get_running_loop())
        futures = [submit_as(b, "burst", Ask(["q"], str(i))) for i in range(50)]
        fn.gate.set()
        return await asyncio.gather(*futures)

    assert len(run(main())) == 50  # none refused


def test_a_failing_part_fails_its_whole_job_once_and_the_worker_goes_on():
    calls = []

    def fn(parts):
        calls.append([p.payload.texts for p in parts])
        if any("boom" in t for p in parts for t in p.payload.texts):
            raise ValueError("boom")
        return [Got(list(p.payload.texts), np.zeros((p.size, 2), np.float32)) for p in parts]

    async def main():
        b = batcher(fn, Clock(), max_batch=2)
        b.start(asyncio.get_running_loop())
        with pytest.raises(ValueError):
            await submit_as(b, "a", Ask(["ok", "ok", "boom", "boom", "ok", "ok"]))
        fine = await submit_as(b, "a", Ask(["fine"]))
        await b.close()
        return fine

    assert run(main()).texts == ["fine"]
    assert ["ok", "ok"] not in calls[2:]  # the parts after the failed one were skipped


def test_the_token_counter_tokenises_only_short_texts():
    seen = []

    def count(texts):
        seen.extend(texts)
        return [len(t.split()) + 2 for t in texts]

    tokens = token_counter(count, max_length=128)
    assert tokens(["cordless drill", "x " * 2000, "paint"]) == [4, 128, 3]
    assert seen == ["cordless drill", "paint"]  # the 4,000-character text was never tokenised
