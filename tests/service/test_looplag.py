"""The event-loop lag monitor: hand-worked windows, and a real loop, stalled once and kept busy."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.looplag import LoopLagMonitor


def test_reading_is_the_smallest_lag_of_the_window():
    m = LoopLagMonitor(window_s=0.1)
    assert m.value(now=10.0) == 0.0  # nothing seen yet
    m.observe(0.040, now=10.00)
    m.observe(0.030, now=10.05)
    assert m.value(now=10.05) == pytest.approx(0.030)  # late on every tick: overloaded
    m.observe(0.001, now=10.06)
    assert m.value(now=10.06) == pytest.approx(0.001)  # one on-time tick clears it
    assert m.value(now=10.12) == pytest.approx(0.001)  # 10.00 and 10.05 have left the window
    assert m.value(now=10.5) == 0.0  # no recent sample: no evidence of lag


def test_a_single_stall_is_forgotten_but_a_busy_loop_is_seen():
    async def main():
        m = LoopLagMonitor(interval_s=0.005, window_s=0.1)
        m.start()
        await asyncio.sleep(0.05)
        time.sleep(0.1)  # one callback holds the loop for 100 ms (a stall, not overload)
        await asyncio.sleep(0.03)
        after_stall = m.value()
        busy_until = time.perf_counter() + 0.3
        while time.perf_counter() < busy_until:  # the loop busy for 300 ms in 20 ms slices
            time.sleep(0.02)
            await asyncio.sleep(0)
        busy = m.value()
        await m.stop()
        return after_stall, busy

    after_stall, busy = asyncio.run(main())
    assert after_stall < 0.01, after_stall
    assert busy > 0.01, busy
