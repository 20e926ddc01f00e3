"""Which rate to try next, and whether a step was sustained.

A step is *sustained* at an SLO when: no errors, the answers came back at (nearly) the
offered rate, the generator kept its schedule (otherwise the step measured the client), and
the client-side p99 — measured from the scheduled start — is within the SLO.

The rate search climbs a geometric ladder until the loosest SLO fails, then bisects
(geometric mean) between the highest sustained and the lowest failed rate of each SLO a
few times. It is a small state machine so that several encoders can be searched at once,
one step each in turn (see ``sweep``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from loadtest.runner import StepResult

MIN_ACHIEVED_RATIO = 0.95  # answers per second must reach 95 % of the offered rate
MAX_LAG_FRACTION = 0.01  # at most 1 % of sends late beyond the tolerance ...
MAX_LAG_FREE = 2  # ... but a couple of late sends in a short step are not yet a trend


@dataclass
class Verdict:
    sustained: bool
    reason: str  # "ok" or why not
    generator_limited: bool = False


def judge(step: StepResult, slo_ms: float, *, min_achieved_ratio: float = MIN_ACHIEVED_RATIO,
          max_lag_fraction: float = MAX_LAG_FRACTION) -> Verdict:
    """Was ``step`` sustained with p99 <= ``slo_ms``?"""
    if step.error_count:
        kinds = ", ".join(f"{k}x{v}" for k, v in sorted(step.errors.items()))
        return Verdict(False, f"errors ({kinds})")
    if step.generator_lag > max(MAX_LAG_FREE, max_lag_fraction * step.sent):
        return Verdict(False, f"generator lagged on {step.generator_lag}/{step.sent} sends", True)
    if step.offered_rps and step.achieved_rps < min_achieved_ratio * step.offered_rps:
        return Verdict(False, f"achieved {step.achieved_rps:.1f}/s < {min_achieved_ratio:.0%} of offered")
    p99 = step.p99
    if p99 is None:
        return Verdict(False, "no successful requests")
    if p99 > slo_ms:
        return Verdict(False, f"p99 {p99:.1f} ms > {slo_ms:g} ms")
    return Verdict(True, "ok")


def ladder(start: float, factor: float, max_rate: float) -> list[float]:
    """start, start*factor, ... up to max_rate (inclusive when it lands on it)."""
    if start <= 0 or factor <= 1 or max_rate < start:
        raise ValueError("need 0 < start <= max_rate and factor > 1")
    out, r = [], float(start)
    while r <= max_rate * (1 + 1e-9):
        out.append(round(r, 3))
        r *= factor
    return out


def max_sustained(results: Sequence[tuple[float, bool]]) -> float | None:
    """Highest rate that passed (None if none did)."""
    passed = [r for r, ok in results if ok]
    return max(passed) if passed else None


def is_monotonic(results: Sequence[tuple[float, bool]]) -> bool:
    """False when some rate failed below a rate that passed: a noisy run worth a note."""
    best = max_sustained(results)
    return best is None or all(ok for r, ok in results if r <= best)


@dataclass
class RateSearch:
    """Ladder then bisection for one encoder over SLOs ordered strict -> loose."""

    slos_ms: Sequence[float]
    start: float = 5.0
    factor: float = 2.0
    max_rate: float = 4000.0
    refine: int = 2  # bisection steps per SLO boundary
    resolution: float = 0.1  # stop bisecting when fail/pass < 1 + resolution
    max_steps: int = 40
    history: list[tuple[float, tuple[bool, ...]]] = field(default_factory=list)
    _refined: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.slos_ms = sorted(self.slos_ms)
        self._ladder = ladder(self.start, self.factor, self.max_rate)

    def record(self, rate: float, passed: Sequence[bool]) -> None:
        """``passed[i]`` tells whether the step at ``rate`` was sustained at ``slos_ms[i]``."""
        self.history.append((rate, tuple(passed)))

    def results_for(self, i: int) -> list[tuple[float, bool]]:
        return [(r, p[i]) for r, p in self.history]

    def _tested(self, rate: float) -> bool:
        return any(math.isclose(rate, r, rel_tol=1e-6) for r, _ in self.history)

    def next_rate(self) -> float | None:
        """The next rate to run, or None when the search is over."""
        if len(self.history) >= self.max_steps:
            return None
        loose = len(self.slos_ms) - 1
        loose_failed = any(not p[loose] for _, p in self.history)
        if not loose_failed:
            for r in self._ladder:
                if not self._tested(r):
                    return r
        for i in range(len(self.slos_ms)):
            if self._refined.get(i, 0) >= self.refine:
                continue
            res = self.results_for(i)
            best = max_sustained(res)
            if best is None:
                continue  # never sustained at this SLO: nothing to bisect
            above = [r for r, ok in res if not ok and r > best]
            if not above:
                continue
            worst = min(above)
            if worst / best <= 1 + self.resolution:
                continue
            mid = round(math.sqrt(best * worst), 3)
            if self._tested(mid):
                continue
            self._refined[i] = self._refined.get(i, 0) + 1
            return mid
        return None
