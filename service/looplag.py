"""Event-loop lag: how late the loop runs what is ready, as seen by a timer.

Why: under overload the batch queue can be short while requests still wait, because the
one event loop that parses every request and hands back every answer is itself behind
(docs/RELIABILITY.md measured accepted p99 at ~200 ms with a 50 ms queue budget). The
queue's own estimate cannot see that; this monitor can. A task sleeps ``interval_s`` and
records how much later than asked it woke up. The reading is a decaying maximum (half-life
``half_life_s``), so a backlog is seen at once and forgotten soon after it clears.
"""

from __future__ import annotations

import asyncio
import time
from typing import Optional


class LoopLagMonitor:
    def __init__(self, interval_s: float = 0.005, half_life_s: float = 0.05):
        self.interval_s = interval_s
        self.half_life_s = half_life_s
        self._peak = 0.0
        self._at = time.perf_counter()
        self._task: Optional[asyncio.Task] = None

    def observe(self, lag_s: float, now: Optional[float] = None) -> None:
        now = time.perf_counter() if now is None else now
        self._peak = max(lag_s, self.value(now))
        self._at = now

    def value(self, now: Optional[float] = None) -> float:
        """The current lag estimate in seconds (the decayed peak)."""
        now = time.perf_counter() if now is None else now
        return self._peak * 0.5 ** (max(0.0, now - self._at) / self.half_life_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hlm-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            woke = time.perf_counter()
            self.observe(max(0.0, woke - asked - self.interval_s), woke)
