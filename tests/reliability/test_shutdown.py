"""Graceful shutdown under load: SIGTERM finishes the requests already accepted and refuses new ones."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_sigterm_under_load_finishes_accepted_requests_and_refuses_new_ones(start_server):
    import aiohttp

    srv = start_server(teacher_max_batch=1)
    srv.wait_for("/readyz")
    rate, duration, stop_at = 15.0, 3.0, 1.5  # about half what the teacher sustains, one query a batch
    results = []

    async def main():
        async with aiohttp.ClientSession(base_url=srv.url, timeout=aiohttp.ClientTimeout(total=60)) as session:
            async def one(i, offset):
                try:
                    async with session.post("/v1/search", json={"queries": [f"cordless drill {i}"] * 3,
                                                                "encoder": "teacher"}) as r:
                        body = await r.json()
                        results.append((offset, r.status, len(body.get("results", []))))
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    results.append((offset, type(exc).__name__, 0))

            start = time.perf_counter()
            tasks, stopped = [], False
            for i in range(int(rate * duration)):
                offset = i / rate
                if not stopped and offset >= stop_at:
                    srv.proc.send_signal(signal.SIGTERM)
                    stopped = True
                delay = start + offset - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i, offset)))
            await asyncio.gather(*tasks)

    asyncio.run(main())
    before = [r for r in results if r[0] < stop_at - 0.1]
    after = [r for r in results if r[0] >= stop_at]
    from collections import Counter

    print(f"\nbefore SIGTERM: {Counter(s for _, s, _ in before)}; after: {Counter(s for _, s, _ in after)}")
    assert before and all(status == 200 and n == 3 for _, status, n in before), before
    # After SIGTERM: a complete answer or a refusal (connection refused/closed, or 503) - nothing half-done.
    assert all(status == 200 and n == 3 or status == 503 or isinstance(status, str) for _, status, n in after), after
    assert any(status != 200 for _, status, _ in after), "nothing was refused after SIGTERM"
    assert srv.proc.wait(60) in (0, -signal.SIGTERM)
    log = srv.log()
    assert "shut down: queues drained" in log and "Traceback" not in log
