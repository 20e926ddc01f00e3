"""Micro-batching: a fair, bounded queue per encoder and one worker thread that drains it.

Requests are ``Job``s. ``submit`` admits a job from the event loop (or refuses it at once
with a typed ``Refusal``) and returns an asyncio future. Admission and scheduling count
**cost**, not queries:

- A job's cost is its tokens after truncation (``tokens(payload)``, per query) plus a fixed
  per-query share (``QUERY_TOKENS``), times the measured seconds per token of its encoder
  (an EWMA over recent batches, seeded by ``calibrate`` in the worker before any job).
- A job is cut into parts of at most ``max_batch`` queries and ``max_batch_tokens`` padded
  tokens (queries x the longest; TEI's max-batch-tokens), and batches are formed within the
  same bounds, so no batch larger than that ever reaches the model, and the parts of a big
  job interleave with other clients' work.
- Parts wait in one self-clocked fair queue (SCFQ) keyed by client (HLM_CLIENT_ID_HEADER or
  the peer address): each part gets a virtual finish tag ``max(v, client's last tag) +
  cost`` and the worker takes the smallest tags. One client alone gets the whole encoder
  (work-conserving, unlike a token bucket); under contention each active client gets an
  equal share of encoder time, and a light client's query goes ahead of a heavy client's
  backlog.
- Refusals (``admit``): ``too_large`` when the job alone costs more than ``max_request_s``;
  ``queue_full`` past ``queue_size`` queued requests; ``client_share`` / ``budget`` when the
  work the fair queue would run before the job's last part, plus the job's own cost, is
  longer than the budget — mostly the client's own backlog while others wait, or everyone's.
  The budget is the SLO minus the measured time a served request spends in the server
  beyond its wait in the queue and its own estimated cost (``observe_service``, a mean + 3 ×
  mean-absolute-deviation EWMA): HTTP work, loop lag and the batch-mates it waited for, so it
  shrinks when the event loop is saturated or batches grow, and grows back when they do not. A
  client with nothing queued or running is not charged for another client's batch already
  running (it cannot be pre-empted; the fair queue puts the newcomer next).

The worker takes parts by tag up to the batch limits (waiting at most ``max_wait_s`` for
more), skips jobs whose requester has gone (cancelled futures), runs the batch function
off the event loop, joins a job's parts, and resolves every future of the batch with one
call back into the loop. Background jobs (shadow traffic) carry a callback instead of a
future and are never awaited by a request.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from service.errors import Refusal

log = logging.getLogger(__name__)

# A query's fixed cost in token-equivalents (session set-up, pooling, the index search).
# Measured on the demo int8 student (docs/RELIABILITY.md): a 4-token query 1.6 ms, a
# 128-token one 25 ms, i.e. ~0.19 ms a token and ~0.85 ms (~4.5 tokens) fixed; the teacher's
# fixed share is larger. 8 keeps short queries from looking free.
QUERY_TOKENS = 8

# Who is asking (the fairness key) and what the edge already knows about the request.
REQUEST: contextvars.ContextVar[Optional["Ticket"]] = contextvars.ContextVar("hlm_request", default=None)


@dataclass(eq=False)
class Ticket:
    """Per-request context set by the HTTP edge and read by ``submit`` (same task)."""

    client: str = ""
    queue_s: Optional[float] = None  # set by the worker when the job's first part starts
    counts: Optional[list[int]] = None  # tokens per query, as the edge counted them for admission
    cost_s: float = 0.0  # the job's own estimated encoder time when admitted
    batcher: Optional["Batcher"] = None  # the batcher the job went to (for observe_service)
    limit: Any = None  # the ConcurrencyLimit the edge counted it in (released when answered)


@dataclass(eq=False)
class Job:
    payload: Any
    size: int = 1  # queries in this job
    future: Optional[asyncio.Future] = None
    callback: Optional[Callable[[Any], None]] = None  # background jobs: called in the worker
    enqueued: float = 0.0
    started: float = 0.0  # when its first part's batch began
    client: str = ""
    ticket: Optional[Ticket] = None
    parts_left: int = 0
    results: list = field(default_factory=list)
    failed: Optional[BaseException] = None

    def gone(self) -> bool:
        return self.future is not None and self.future.cancelled()


@dataclass(eq=False)
class Part:
    """A slice of a job's queries, the unit of scheduling; what the batch function sees."""

    job: Job
    index: int
    payload: Any
    size: int
    tokens: int
    units: int  # tokens + QUERY_TOKENS per query
    longest: int = 0  # tokens of its longest query: a batch is padded to it
    tag: float = 0.0

    @property
    def enqueued(self) -> float:
        return self.job.enqueued

    @property
    def started(self) -> float:
        return self.job.started


BatchFn = Callable[[Sequence[Part]], Sequence[Any]]


class Batcher:
    def __init__(
        self,
        name: str,
        fn: BatchFn,
        *,
        max_batch: int,
        max_batch_tokens: int = 0,
        max_wait_s: float = 0.0,
        queue_size: int = 256,
        retry_after_s: int = 1,
        max_queue_wait_s: Optional[float] = 0.0,
        slo_s: float = 0.0,
        max_request_s: float = 0.0,
        tokens: Optional[Callable[[Sequence[str]], list[int]]] = None,
        split: Optional[Callable[[Any, int, int], Any]] = None,
        join: Optional[Callable[[list], Any]] = None,
        calibrate: Optional[Callable[[], tuple[float, int]]] = None,
        clock: Callable[[], float] = time.perf_counter,
        metrics=None,
    ):
        """``max_queue_wait_s``: a fixed waiting budget (0: none, only ``queue_size``); None:
        derived from ``slo_s``. ``tokens(texts)``: tokens per query of a payload's ``texts``
        (None: 0 each, cost by queries; see ``token_counter``). ``split(payload, a, b)`` / ``join(results)``: cut a job into parts and put
        their answers together (None: a job is never cut and runs alone when larger than a
        batch). ``calibrate()``: run in the worker before any job, returns (seconds, token-units)
        of a measured encode, to seed the cost per token. ``clock``: injectable for tests."""
        self.name = name
        self.fn = fn
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        self.fixed_budget_s = max_queue_wait_s
        self.slo_s = slo_s
        self.max_request_s = max_request_s
        self.tokens = tokens
        self.split = split
        self.join = join
        self.calibrate = calibrate
        self.clock = clock
        self.metrics = metrics
        # Measured seconds per token-unit of recent batches (EWMA); 0 until measured.
        self.cost_per_unit = 0.0
        # Time a served request spends outside the queue (EWMA mean and mean |deviation|).
        self._service_mean = 0.0
        self._service_dev = 0.0
        self._heap: list[tuple[float, int, Part]] = []
        self._seq = itertools.count()
        self._jobs_queued = 0  # jobs with a part still queued (the queue_size bound)
        self._vtime = 0.0  # SCFQ virtual time: the tag of the last part taken
        self._flows: dict[str, list] = {}  # client -> [last tag, parts queued, units queued]
        self._m_depth = None
        self._running_clients: frozenset[str] = frozenset()
        self._busy_until = 0.0  # when the batch now running should end; 0 when idle
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        if metrics is not None:
            # Set where it changes, not set_function: under --workers N a scrape sums what the
            # workers wrote to their files, and a function's value is never written.
            self._m_depth = metrics.queue_depth.labels(name)
            self._m_wait = metrics.queue_wait.labels(name)
            self._m_batch = metrics.batch_size.labels(name)
            self._m_gone = metrics.rejected.labels(name, "client_gone")
            self._m_reason = {reason: metrics.rejected.labels(name, reason)
                              for reason in ("budget", "client_share", "queue_full", "too_large", "shutting_down")}

    # ---- event-loop side ----

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=f"hlm-{self.name}", daemon=True)
        self._thread.start()

    def qsize(self) -> int:
        return self._jobs_queued

    @property
    def stopped(self) -> bool:
        """The worker has ended (after ``close``): nothing calls ``fn`` or ``calibrate`` again."""
        return self._thread is not None and not self._thread.is_alive()

    @property
    def cost_per_query(self) -> float:
        """Seconds one short query costs (what the per-query model used to measure)."""
        return self.cost_per_unit * QUERY_TOKENS

    def budget_s(self) -> float:
        """How long a job may wait: fixed; or, derived, the SLO minus the measured time a
        request spends in the server beyond its queue wait and own cost (``observe_service``):
        then the job's own cost counts against it too."""
        if self.fixed_budget_s is not None:
            return self.fixed_budget_s
        if not self.slo_s:
            return 0.0
        # Floor: a third of the SLO (5 ms at 15), the fixed budget that kept the 3x open-loop
        # p99 at ~15 ms in session 3; without it, a budget shrunk to nothing admits one job at
        # a time, batches never form, and the served rate under overload fell (229 vs 350/s).
        return max(self.slo_s / 3.0, self.slo_s - (self._service_mean + 3.0 * self._service_dev))

    def observe_service(self, seconds: float) -> None:
        """A served request's time in the server beyond its queue wait and its own estimated
        cost (the edge reports it: HTTP work, hand-overs, loop lag, its batch-mates' encoding)."""
        if self._service_mean == 0.0:
            self._service_mean = seconds
            return
        self._service_dev += 0.05 * (abs(seconds - self._service_mean) - self._service_dev)
        self._service_mean += 0.05 * (seconds - self._service_mean)

    def cost_units(self, counts: Sequence[int]) -> int:
        return sum(counts) + QUERY_TOKENS * len(counts)

    def submit(self, payload: Any, size: int = 1) -> asyncio.Future:
        """Queue a job; its future resolves with the batch function's result for it."""
        ticket = REQUEST.get()
        future = self._loop.create_future()
        job = Job(payload, size, future=future, client=ticket.client if ticket else "", ticket=ticket)
        self._put(job, count=True)
        if ticket is not None:
            ticket.batcher = self
        return future

    def submit_background(self, payload: Any, size: int, callback: Callable[[Any], None], *, only_if_idle: bool) -> bool:
        """Queue a job nobody waits for; False (and nothing queued) if refused."""
        if only_if_idle and self._jobs_queued:
            return False
        try:
            self._put(Job(payload, size, callback=callback, client="\0background"), count=False)
        except Refusal:
            return False
        return True

    def expected_wait_s(self, client: str = "") -> float:
        """How long a one-query job queued now by ``client`` should wait for its batch."""
        with self._cond:
            return self._wait(client, self.clock(), QUERY_TOKENS)[0]

    def admit(self, counts: Optional[Sequence[int]] = None, client: str = "") -> None:
        """Raise the refusal a job of these per-query token counts would get now (counted
        in the metrics), queue nothing. The HTTP edge calls this before the body reaches
        the framework, so a refused request costs a few microseconds."""
        counts = list(counts) if counts is not None else [0]
        with self._cond:
            refusal = self._refusal(client, counts, count=True)
        if refusal is not None:
            raise refusal

    def _counts(self, job: Job) -> list[int]:
        ticket = job.ticket
        if ticket is not None and ticket.counts is not None and len(ticket.counts) == job.size:
            return ticket.counts  # counted once, at the edge (profiled: a quarter of the loop's work when twice)
        texts = getattr(job.payload, "texts", None)
        if self.tokens is None or texts is None:
            return [0] * job.size
        return list(self.tokens(texts))

    def estimate(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as admission counts them (the edge asks before parsing fully)."""
        return list(self.tokens(texts)) if self.tokens is not None else [0] * len(texts)

    def _wait(self, client: str, now: float, units: int) -> tuple[float, float]:
        """(expected wait before the last part of a new job of ``units`` starts, the share of
        it that is the client's own work while other clients wait too — 0 when it is alone);
        caller holds the lock."""
        flow = self._flows.get(client)
        own_units = flow[2] if flow else 0
        mine = client in self._running_clients
        rest = max(0.0, self._busy_until - now) if self._busy_until else 0.0
        # A client with nothing queued or running is not charged for another client's batch
        # now running: it cannot be pre-empted, and the fair queue puts the newcomer next.
        running = rest if (mine or flow is not None) else 0.0
        last_tag = max(self._vtime, flow[0] if flow else 0.0) + units
        ahead = 0
        for tag, _, part in self._heap:
            if tag <= last_tag and part.job.client != client:  # ties go by arrival: theirs first
                ahead += part.units
        cpu = self.cost_per_unit
        own = own_units * cpu + (rest if mine else 0.0)
        others = ahead or len(self._flows) > (flow is not None) or not self._running_clients <= {client}
        return running + (own_units + ahead) * cpu, (own if others else 0.0)

    def _refusal(self, client: str, counts: list[int], count: bool) -> Optional[Refusal]:
        """The refusal a new job gets now, or None; caller holds the lock."""
        reason, wait, limit, cost = None, 0.0, 0.0, 0.0
        units = self.cost_units(counts)
        if self._closed or self._thread is None:
            reason = "shutting_down"
        else:
            cost = units * self.cost_per_unit
            if self.max_request_s and cost > self.max_request_s:
                reason, limit = "too_large", self.max_request_s
            elif self._jobs_queued >= self.queue_size:
                reason = "queue_full"
                wait = self._wait(client, self.clock(), units)[0]
            else:
                budget = self.budget_s()
                if self.fixed_budget_s != 0 and (self.fixed_budget_s is not None or self.slo_s):
                    # An idle encoder refuses nobody, so one request always runs.
                    wait, own = self._wait(client, self.clock(), units)
                    if self.fixed_budget_s is None:  # derived: the job's own run counts too
                        budget = max(0.0, budget - cost)
                    if wait > budget:
                        reason, limit = ("client_share" if own > budget else "budget"), budget
        if reason is None:
            return None
        if count and self.metrics is not None:
            self._m_reason[reason].inc()
        return Refusal(reason, self.name, wait_s=wait, limit_s=limit, cost_s=cost, queued=self._jobs_queued,
                       tokens=sum(counts), queries=len(counts), retry_floor_s=self.retry_after_s)

    def _parts(self, job: Job, counts: list[int]) -> list[Part]:
        """Cut a job into parts within ``max_batch`` queries and ``max_batch_tokens``."""
        if self.split is None or (job.size <= self.max_batch and
                                  (not self.max_batch_tokens or job.size * max(counts, default=0) <= self.max_batch_tokens)):
            return [Part(job, 0, job.payload, job.size, sum(counts), self.cost_units(counts), max(counts, default=0))]
        parts, start = [], 0
        while start < job.size:
            end, longest = start, 0
            while end < job.size and end - start < self.max_batch and (
                    end == start or not self.max_batch_tokens
                    or (end - start + 1) * max(longest, counts[end]) <= self.max_batch_tokens):
                longest = max(longest, counts[end])
                end += 1
            chunk = counts[start:end]
            parts.append(Part(job, len(parts), self.split(job.payload, start, end), end - start, sum(chunk),
                              self.cost_units(chunk), longest))
            start = end
        return parts

    def _put(self, job: Job, count: bool = True) -> None:
        counts = self._counts(job)
        if len(counts) != job.size:
            counts = (counts + [0] * job.size)[:job.size]
        with self._cond:
            refusal = self._refusal(job.client, counts, count)
            if refusal is not None:
                raise refusal
            job.enqueued = self.clock()
            if job.ticket is not None:
                job.ticket.cost_s = self.cost_units(counts) * self.cost_per_unit
            parts = self._parts(job, counts)
            job.parts_left = len(parts)
            job.results = [None] * len(parts)
            flow = self._flows.setdefault(job.client, [0.0, 0, 0])
            tag = max(self._vtime, flow[0])
            for part in parts:
                tag += part.units
                part.tag = tag
                heapq.heappush(self._heap, (tag, next(self._seq), part))
            flow[0], flow[1], flow[2] = tag, flow[1] + len(parts), flow[2] + sum(p.units for p in parts)
            self._jobs_queued += 1
            if self._m_depth is not None:
                self._m_depth.set(self._jobs_queued)
            self._cond.notify()

    async def close(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, finish the queued ones, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)
            if self._thread.is_alive():
                log.warning("the %s worker did not finish its queue within %.0f s", self.name, timeout)

    # ---- worker side ----

    def _pop(self) -> Part:
        tag, _, part = heapq.heappop(self._heap)
        self._vtime = max(self._vtime, tag)
        flow = self._flows[part.job.client]
        flow[1] -= 1
        flow[2] -= part.units
        if flow[1] == 0:
            del self._flows[part.job.client]
        if part.index == 0:
            self._jobs_queued -= 1
            if self._m_depth is not None:
                self._m_depth.set(self._jobs_queued)
        return part

    def _take(self) -> Optional[list[Part]]:
        with self._cond:
            while not self._heap:
                if self._closed:
                    return None
                self._cond.wait()
            batch = [self._pop()]
            size, longest = batch[0].size, batch[0].longest
            deadline = time.perf_counter() + self.max_wait_s
            while size < self.max_batch:
                if self._heap:
                    nxt = self._heap[0][2]
                    if size + nxt.size > self.max_batch or (
                            self.max_batch_tokens and (size + nxt.size) * max(longest, nxt.longest) > self.max_batch_tokens):
                        break
                    part = self._pop()
                    batch.append(part)
                    size += part.size
                    longest = max(longest, part.longest)
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            units = sum(p.units for p in batch)
            self._running_clients = frozenset(p.job.client for p in batch)
            self._busy_until = self.clock() + units * self.cost_per_unit
            return batch

    def _seed(self) -> None:
        if self.calibrate is None:
            return
        try:
            seconds, units = self.calibrate()
            if units:
                self.cost_per_unit = seconds / units
        except Exception:  # noqa: BLE001 - no seed: the first batch measures the cost
            log.warning("the %s encoder's cost calibration failed", self.name, exc_info=True)

    def _run(self) -> None:
        self._seed()
        while True:
            batch = self._take()
            if batch is None:
                return
            now = self.clock()
            live = []
            for part in batch:
                job = part.job
                if job.gone() or job.failed is not None:
                    if part.index == 0 and job.gone() and self.metrics is not None:
                        self._m_gone.inc()
                    continue
                if part.index == 0:
                    job.started = now
                    if job.ticket is not None:
                        job.ticket.queue_s = now - job.enqueued
                    if self.metrics is not None and job.future is not None:
                        self._m_wait.observe(now - job.enqueued)
                live.append(part)
            if not live:
                with self._cond:
                    self._busy_until, self._running_clients = 0.0, frozenset()
                continue
            units = sum(part.units for part in live)
            if self.metrics is not None:
                self._m_batch.observe(sum(part.size for part in live))
            t0 = time.perf_counter()
            try:
                results = self.fn(live)
                error = None
            except BaseException as exc:  # resolve every waiter, never kill the worker
                log.error("the %s batch of %d jobs failed", self.name, len(live), exc_info=exc)
                results, error = None, exc
            cost = (time.perf_counter() - t0) / max(1, units)
            with self._cond:
                self._busy_until, self._running_clients = 0.0, frozenset()
                self.cost_per_unit = cost if not self.cost_per_unit else 0.8 * self.cost_per_unit + 0.2 * cost
            waiting = []
            for i, part in enumerate(live):
                job = part.job
                if error is not None:
                    job.failed = error
                    job.parts_left = 0
                else:
                    job.results[part.index] = results[i]
                    job.parts_left -= 1
                if job.parts_left:
                    continue
                if job.callback is not None:
                    if error is None:
                        try:
                            job.callback(self._joined(job))
                        except Exception:
                            log.exception("a background %s job's callback failed", self.name)
                elif job.failed is not None:
                    waiting.append((job.future, None, job.failed))
                else:
                    waiting.append((job.future, self._joined(job), None))
            if waiting:
                self._loop.call_soon_threadsafe(_resolve, waiting)

    def _joined(self, job: Job) -> Any:
        if len(job.results) == 1:
            return job.results[0]
        return self.join(job.results)


def _resolve(waiting: list) -> None:
    for future, result, error in waiting:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def token_counter(count: Callable[[Sequence[str]], list[int]], max_length: int) -> Callable[[Sequence[str]], list[int]]:
    """Tokens after truncation per text, cheap enough for the event loop.

    Exact (the encoder's own tokenizer) for texts of at most ``2 x max_length`` characters;
    longer ones count ``max_length`` without being tokenised: the tokenizer truncates only
    after tokenising the whole text (64 x 4,000 characters took 150 ms), and English runs
    ~4-5 characters a token, so such a text is at or near the limit anyway (an upper bound).
    """
    limit = 2 * max_length

    def tokens(texts: Sequence[str]) -> list[int]:
        short = [i for i, text in enumerate(texts) if len(text) <= limit]
        out = [max_length] * len(texts)
        if short:
            for i, n in zip(short, count([texts[i] for i in short])):
                out[i] = n
        return out

    return tokens


def split_texts(payload: Any, start: int, end: int) -> Any:
    """A part of a dataclass payload with a ``texts`` list: the same request for texts[start:end]."""
    return dataclasses.replace(payload, texts=payload.texts[start:end])


def join_answers(results: list) -> Any:
    """One answer from a job's parts, in order: lists and arrays concatenated, encoder and
    index times summed, the queue time of the first part, the largest batch."""
    first = results[0]
    values = {}
    for f in dataclasses.fields(first):
        items = [getattr(r, f.name) for r in results]
        head = items[0]
        if head is None:
            values[f.name] = None
        elif isinstance(head, list):
            values[f.name] = [x for item in items for x in item]
        elif isinstance(head, np.ndarray):
            values[f.name] = np.concatenate(items)
        elif f.name == "batch":
            values[f.name] = max(items)
        elif f.name.endswith("_s") and f.name != "queue_s":
            values[f.name] = sum(items)
        else:
            values[f.name] = head
    return type(first)(**values)
