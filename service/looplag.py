"""Event-loop lag: how late the loop runs what is ready, as seen by a timer.

Why: under overload the batch queue can be short while requests still wait, because the
one event loop that parses every request and hands back every answer is itself behind
(docs/RELIABILITY.md measured accepted p99 at ~200 ms with a 50 ms queue budget). The
queue's own estimate cannot see that; this monitor can. A task sleeps ``interval_s`` and
records how much later than asked it woke up.

The reading is the *smallest* lag of the last ``window_s`` (the CoDel idea): a loop that is
late on every tick for a while is overloaded and should shed; one long stall (a reload's
file reads, a GC pause) is over by the time anyone could be refused, and the next on-time
tick clears it, so it refuses nobody.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Optional


class LoopLagMonitor:
    def __init__(self, interval_s: float = 0.005, window_s: float = 0.1):
        self.interval_s = interval_s
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, float]] = collections.deque()  # (when, lag)
        self._task: Optional[asyncio.Task] = None

    def observe(self, lag_s: float, now: Optional[float] = None) -> None:
        now = time.perf_counter() if now is None else now
        self._samples.append((now, lag_s))
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()

    def value(self, now: Optional[float] = None) -> float:
        """The smallest lag seen in the last ``window_s`` seconds (0 with no recent sample)."""
        now = time.perf_counter() if now is None else now
        recent = [lag for when, lag in self._samples if when >= now - self.window_s]
        return min(recent) if recent else 0.0

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
