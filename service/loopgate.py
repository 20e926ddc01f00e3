"""Admission for the searches answered on the event loop (issue #29), and the hold of re-sends.

An inline encoder (the static student: ``EncoderSlot.inline``) has no queue of its own: its
requests wait in the event loop, as tasks uvicorn has created and not yet run. Neither the
batcher's expected-wait check nor the in-flight limit sees that wait (a task counts only once
it runs, and then it runs to its answer without yielding). What does see it is the HTTP
protocol, which reads every request before any task exists for it; ``service/server.py``
stamps each request with the time its first byte was read, and counts the requests each
client has read and not yet answered.

The rule, at the edge, for a search on an inline encoder: refused (429 ``budget``) when it
has already waited longer than its budget in the loop *and* its client has another request
read and not answered. So every answered search waited at most the budget (plus its own
work), a client with one request at a time is never refused (it cannot be the cause of the
wait), and a refusal is answered the moment its turn comes: no hold, no queue (a caller with
a 20-50 ms deadline can act on it). Under overload the loop's backlog is cut to the budget,
oldest first, like CoDel's sojourn time.

The hold: a connection that sends its next request the moment it was refused (a closed loop
retrying at once) would fill the loop with refusals instead of searches. The protocol holds
such a request on a timer (no CPU) before parsing it: 1 ms, doubling with each hold in a row
on that connection, up to ``HLM_REFUSAL_HOLD_MS``; an answered request ends the streak.
A caller that does not re-send at once, or a pooled caller's other connections, never waits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

FIRST_HOLD_S = 0.001


@dataclass
class LoopGate:
    """Per process: which encoders answer on the loop, each client's unanswered requests, and the budget."""

    budget_s: float  # the longest an inline search may wait in the loop
    hold_max_s: float  # the longest hold of an immediate re-send (0: never hold)
    # A request read this soon after a refusal was written on its connection did not wait for
    # anything: a loopback round trip and a client's re-send take ~0.1 ms, and the loop may
    # read it up to one search later (~1 ms on the full index). HLM_RETRY_GAP_MS.
    retry_gap_s: float = 0.002
    pending: dict = field(default_factory=dict)  # client -> requests read and not yet answered
    on_hold: Optional[Callable[[], None]] = None  # counts a held re-send (hlm_refusals_held_total)

    # ---- the protocol's side (service/server.py) ----

    def arrived(self, client: str) -> None:
        self.pending[client] = self.pending.get(client, 0) + 1

    def answered(self, client: str) -> None:
        left = self.pending.get(client, 1) - 1
        if left > 0:
            self.pending[client] = left
        else:
            self.pending.pop(client, None)

    def hold_s(self, streak: int) -> float:
        """How long the ``streak``-th immediate re-send in a row on a connection waits."""
        if not self.hold_max_s:
            return 0.0
        return min(self.hold_max_s, FIRST_HOLD_S * 2 ** (streak - 1))

    # ---- the edge's side (service/middleware.py) ----

    def refuse(self, client: str, arrived: Optional[float], now: float) -> Optional[float]:
        """The time this request waited, if it must be refused; else None (admitted). Times
        are ``time.monotonic()``, the protocol's clock."""
        if arrived is None:  # not read by our protocol (a test client): nothing to judge by
            return None
        waited = now - arrived
        if waited > self.budget_s and self.pending.get(client, 0) > 1:
            return waited
        return None
