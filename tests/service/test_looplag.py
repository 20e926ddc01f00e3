"""The event-loop lag monitor: hand-worked decay, and a real blocked loop seen."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.looplag import LoopLagMonitor


def test_peak_halves_every_half_life_and_only_a_larger_lag_replaces_it():
    m = LoopLagMonitor(half_life_s=0.05)
    m.observe(0.040, now=10.0)
    assert m.value(now=10.0) == pytest.approx(0.040)
    assert m.value(now=10.05) == pytest.approx(0.020)
    assert m.value(now=10.10) == pytest.approx(0.010)
    m.observe(0.005, now=10.05)  # smaller than the decayed peak (0.020): the peak stays
    assert m.value(now=10.05) == pytest.approx(0.020)
    m.observe(0.030, now=10.05)
    assert m.value(now=10.10) == pytest.approx(0.015)


def test_a_blocked_loop_is_seen_then_forgotten():
    async def main():
        m = LoopLagMonitor(interval_s=0.005, half_life_s=0.05)
        m.start()
        await asyncio.sleep(0.05)
        quiet = m.value()
        time.sleep(0.1)  # a callback that holds the loop for 100 ms
        await asyncio.sleep(0.02)
        blocked = m.value()
        await asyncio.sleep(0.5)
        later = m.value()
        await m.stop()
        return quiet, blocked, later

    quiet, blocked, later = asyncio.run(main())
    assert blocked > 0.06, blocked
    assert later < blocked / 8, (blocked, later)
    assert quiet < 0.05, quiet
