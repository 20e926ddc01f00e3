"""Raise the offered rate step by step and find the highest rate each encoder sustains.

Several encoders are searched in one run by *alternating*: each round runs one step per
encoder that is still searching, and the order flips every round (student, teacher, then
teacher, student, ...). On a shared, noisy machine a slow drift (another job starting,
thermal throttling) then lands on both encoders alike instead of on whichever ran second.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from loadtest.queries import load_queries
from loadtest.runner import EncoderSpec, StepResult, run_step
from loadtest.search import RateSearch, is_monotonic, judge, max_sustained

DEFAULT_SLO_MS = 15.0
# The teacher can never meet 15 ms on these CPUs (30-48 ms per query), so saturation is
# compared at a common looser SLO as well: "sustained without latency running away".
DEFAULT_LOOSE_SLO_MS = 100.0


@dataclass
class EncoderSweep:
    """One encoder's steps in run order, with the verdict of each at each SLO."""

    encoder: str
    steps: list[StepResult] = field(default_factory=list)
    verdicts: list[dict[str, dict]] = field(default_factory=list)  # per step: {"15": {...}, ...}
    seq: list[int] = field(default_factory=list)  # per step: its position in the whole run
    max_rps: dict[str, float | None] = field(default_factory=dict)  # SLO (str ms) -> highest sustained rate
    monotonic: dict[str, bool] = field(default_factory=dict)
    # True when nothing above the max sustained rate failed: the capacity is at least that
    # (the search hit max_rps or ran out of time), not measured.
    capped: dict[str, bool] = field(default_factory=dict)
    generator_limited: bool = False

    def to_dict(self) -> dict:
        return {
            "encoder": self.encoder,
            "max_rps": self.max_rps,
            "monotonic": self.monotonic,
            "capped": self.capped,
            "generator_limited": self.generator_limited,
            "steps": [s.to_dict() for s in self.steps],
            "verdicts": self.verdicts,
            "seq": self.seq,
        }


def slo_key(slo_ms: float) -> str:
    return f"{slo_ms:g}"


def sweep_many(
    url: str,
    encoders: Sequence["str | EncoderSpec"],
    *,
    slo_ms: float = DEFAULT_SLO_MS,
    loose_slo_ms: float | None = DEFAULT_LOOSE_SLO_MS,
    start_rps: float = 5.0,
    factor: float = 2.0,
    max_rps: float = 4000.0,
    refine: int = 2,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    max_total_s: float = 1800.0,
    queries: Sequence[str] | None = None,
    on_step: Callable[[StepResult, dict], None] | None = None,
    **step_kwargs,
) -> list[EncoderSweep]:
    """Search all ``encoders`` together, alternating steps; return one sweep per encoder.

    Stops each encoder once its search is over (the loose SLO failed and the boundaries are
    bisected ``refine`` times), and stops everything after ``max_total_s``.
    ``step_kwargs`` go to :func:`loadtest.runner.run_step` (arrivals, k, timeout_s, ...).
    """
    specs = [EncoderSpec.of(e) for e in encoders]
    slos = sorted({slo_ms} | ({loose_slo_ms} if loose_slo_ms else set()))
    queries = list(queries) if queries else load_queries()
    searches = {s.label: RateSearch(slos, start=start_rps, factor=factor, max_rate=max_rps, refine=refine)
                for s in specs}
    sweeps = {s.label: EncoderSweep(s.label) for s in specs}
    deadline = time.monotonic() + max_total_s
    round_no = 0
    seq = 0
    query_offset = 0
    while time.monotonic() < deadline:
        order = specs if round_no % 2 == 0 else list(reversed(specs))
        used = 0
        progressed = False
        for spec in order:
            if time.monotonic() >= deadline:
                break
            rate = searches[spec.label].next_rate()
            if rate is None:
                continue
            # Each round replays the next slice of the (shuffled) queries; both encoders get the
            # same slice in a round, so they are compared on the same queries.
            step = run_step(url, spec, rate, duration_s, warmup_s=warmup_s, queries=queries,
                            query_offset=query_offset, **step_kwargs)
            used = max(used, int(rate * (duration_s + warmup_s)) + 2)
            verdicts = {slo_key(s): asdict(judge(step, s)) for s in slos}
            searches[spec.label].record(rate, [verdicts[slo_key(s)]["sustained"] for s in slos])
            sw = sweeps[spec.label]
            sw.steps.append(step)
            sw.verdicts.append(verdicts)
            sw.seq.append(seq)
            seq += 1
            sw.generator_limited |= any(v["generator_limited"] for v in verdicts.values())
            progressed = True
            if on_step:
                on_step(step, verdicts)
        if not progressed:
            break
        round_no += 1
        query_offset += used
    for spec in specs:
        sw, rs = sweeps[spec.label], searches[spec.label]
        for i, s in enumerate(rs.slos_ms):
            res = rs.results_for(i)
            sw.max_rps[slo_key(s)] = max_sustained(res)
            sw.monotonic[slo_key(s)] = is_monotonic(res)
            best = sw.max_rps[slo_key(s)]
            sw.capped[slo_key(s)] = best is not None and not any(not ok and r > best for r, ok in res)
    return [sweeps[s.label] for s in specs]


def sweep(url: str, encoder: "str | EncoderSpec", **kwargs) -> EncoderSweep:
    """One encoder's sweep (same keywords as :func:`sweep_many`)."""
    return sweep_many(url, [encoder], **kwargs)[0]
