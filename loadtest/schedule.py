"""Send times for an open-loop step, computed before the first request goes out.

Precomputing the schedule is what makes the loop open: the time a request *should* start
never depends on when an earlier one answered, so latency measured from the scheduled time
includes any queueing a stalled server causes (no coordinated omission).
"""

from __future__ import annotations

import random

ARRIVALS = ("constant", "poisson")


def make_schedule(
    rate: float, duration_s: float, arrivals: str = "constant", *, seed: int = 0, max_requests: int | None = None
) -> list[float]:
    """Offsets in seconds from the step start, ascending, all ``< duration_s``.

    ``constant``: one request every 1/rate s. ``poisson``: exponential gaps with mean 1/rate
    (a seeded RNG, so a rerun replays the same arrivals).
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals must be one of {ARRIVALS}, not {arrivals!r}")
    # A hard cap keeps a mistyped rate from building an unbounded list.
    cap = max_requests if max_requests is not None else int(rate * duration_s * 3) + 100
    if arrivals == "constant":
        n = min(cap, int(round(rate * duration_s)))
        return [i / rate for i in range(n)]
    rng = random.Random(seed)
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < duration_s and len(out) < cap:
        out.append(t)
        t += rng.expovariate(rate)
    return out
