"""Admission for the searches answered on the event loop (issue #29), and the hold of re-sends.

An inline encoder (the static student: ``EncoderSlot.inline``) has no queue of its own: its
requests wait in the event loop, as requests read and not yet run. Neither the batcher's
expected-wait check nor the in-flight limit sees that wait (a request counts there only once
its task runs, and then it runs to its answer without yielding). The HTTP protocol sees it:
``service/server.py`` reads every request before any task exists for it, so this gate is
asked there, when a search's body is complete, before the framework or the edge spends
anything on it.

The rule: a search for an inline encoder is refused (429 ``budget``, answered at once by the
protocol itself: a refusal costs a fraction of a search) when the inline searches already
admitted and not answered would keep it waiting longer than the budget (their count times the
measured time a search takes on the loop, an EWMA the edge reports) *and* its client has
another request read and not answered. So every admitted search waits about the budget at
most (plus its own work), and a client with one request at a time is never refused: it
cannot be the cause of the wait.

The hold: a connection that sends its next request the moment it was refused (a closed loop
retrying at once) would fill the loop with refusals instead of searches. The protocol holds
such a request on a timer (no CPU) before reading it: 1 ms, doubling with each hold in a row
on that connection, up to ``HLM_REFUSAL_HOLD_MS``; any other answer ends the streak. A caller
that does not re-send at once, and a pooled caller's other connections, never wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

FIRST_HOLD_S = 0.001
COST_SMOOTHING = 0.05  # EWMA weight of one measurement (a search's time on the loop, its wait, a refusal's cost)
# Never refused while fewer inline searches than this are admitted: a rate measured at low
# concurrency is below what the loop does with a few in flight (the old in-flight limit's floor).
MIN_ADMITTED = 4
# The share of the loop refusals may take: past it, holds of immediate re-sends lengthen (a
# closed loop of N connections re-sending at once makes N refusals per hold; the hold that keeps
# their cost at this share is N x a refusal's cost / share).
REFUSAL_SHARE = 0.1
LONGEST_HOLD_S = 1.0  # never past the Retry-After a refusal states


@dataclass
class LoopGate:
    """Per process: the loop's admitted inline searches, each client's unanswered requests, the budget."""

    budget_s: float  # the longest an inline search should wait in the loop
    hold_max_s: float  # the longest hold of an immediate re-send (0: never hold)
    # A request read this soon after a refusal was written on its connection did not wait for
    # anything: a loopback round trip and a client's re-send take ~0.1 ms, and the loop may
    # read it up to one search later (~1 ms on the full index). HLM_RETRY_GAP_MS.
    retry_gap_s: float = 0.002
    state: Any = None  # the app's AppState: which encoders answer on the loop now (reloads change it)
    pending: dict = field(default_factory=dict)  # client -> requests read and not yet answered
    inline_pending: int = 0  # inline searches admitted and not yet answered
    cost_s: float = 0.0  # an inline search's time on the loop (EWMA; 0 until measured)
    wait_s: float = 0.0  # an admitted search's wait in the loop before the edge saw it (EWMA)
    refusal_cost_s: float = 0.0  # the protocol's time to read and refuse one search (EWMA)
    streaks: int = 0  # connections whose last answer was a refusal
    on_hold: Optional[Callable[[], None]] = None  # counts a held re-send (hlm_refusals_held_total)
    on_refused: Optional[Callable[[str], None]] = None  # counts a refusal (encoder name)

    # ---- the protocol's side (service/server.py) ----

    def arrived(self, client: str) -> None:
        self.pending[client] = self.pending.get(client, 0) + 1

    def answered(self, client: str, inline: bool) -> None:
        left = self.pending.get(client, 1) - 1
        if left > 0:
            self.pending[client] = left
        else:
            self.pending.pop(client, None)
        if inline:
            self.inline_pending -= 1

    def is_inline(self, encoder: Any) -> bool:
        runtime = getattr(self.state, "runtime", None)
        slot = runtime.slots.get(encoder) if runtime is not None and isinstance(encoder, str) else None
        return bool(slot is not None and slot.inline)

    def admit(self, client: str) -> Optional[float]:
        """None when an inline search of ``client`` is admitted now (counted in); else the wait
        it would have had, and nothing is counted."""
        wait = self.inline_pending * self.cost_s
        if self.inline_pending >= MIN_ADMITTED and wait > self.budget_s and self.pending.get(client, 0) > 1:
            return wait
        self.inline_pending += 1
        return None

    def at_once(self, gap_s: float) -> bool:
        """Whether a request read ``gap_s`` after a refusal on its connection was re-sent at once.
        Behind a busy loop a re-sent request is read only after the searches ahead of it, so
        the window grows with the loop's measured wait."""
        return gap_s < max(self.retry_gap_s, 3.0 * self.wait_s)

    def hold_s(self, streak: int) -> float:
        """How long the ``streak``-th immediate re-send in a row on a connection waits: 1 ms,
        doubling, up to HLM_REFUSAL_HOLD_MS, or longer while the connections being refused
        would otherwise make refusals take more than REFUSAL_SHARE of the loop."""
        if not self.hold_max_s:
            return 0.0
        cap = min(LONGEST_HOLD_S, max(self.hold_max_s, self.streaks * self.refusal_cost_s / REFUSAL_SHARE))
        return min(cap, FIRST_HOLD_S * 2 ** (streak - 1))

    def refused_at_cost(self, seconds: float) -> None:
        """The protocol's measured cost of one refusal (reading the request and writing the 429)."""
        self.refusal_cost_s += COST_SMOOTHING * (seconds - self.refusal_cost_s) if self.refusal_cost_s else seconds

    # ---- the edge's side (service/middleware.py) ----

    def observe(self, seconds: float, waited_s: float) -> None:
        """An admitted inline search's time on the loop (from the edge's first look to its
        answer) and its wait in the loop before that."""
        self.cost_s = seconds if not self.cost_s else self.cost_s + COST_SMOOTHING * (seconds - self.cost_s)
        self.wait_s += COST_SMOOTHING * (waited_s - self.wait_s)
