"""Micro-batching: a bounded queue per encoder and one worker thread that drains it.

Requests are ``Job``s. ``submit`` puts a job on the queue from the event loop (refusing
at once when the queue is full) and returns an asyncio future. The worker thread takes
the first job, then whatever else is queued up to ``max_batch`` queries (waiting at most
``max_wait_s`` for more), skips jobs whose requester has gone (cancelled futures), runs
the batch function off the event loop, and resolves every future of the batch with one
call back into the loop. Background jobs (shadow traffic) carry a callback instead of a
future and are never awaited by a request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from service.errors import NotReady, Overloaded

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    payload: Any
    size: int = 1  # queries in this job; a batch holds at most max_batch of them
    future: Optional[asyncio.Future] = None
    callback: Optional[Callable[[Any], None]] = None  # background jobs: called in the worker
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0  # when its batch began

    def gone(self) -> bool:
        return self.future is not None and self.future.cancelled()


BatchFn = Callable[[Sequence[Job]], Sequence[Any]]


class Batcher:
    def __init__(
        self,
        name: str,
        fn: BatchFn,
        *,
        max_batch: int,
        max_wait_s: float = 0.0,
        queue_size: int = 256,
        retry_after_s: int = 1,
        max_queue_wait_s: float = 0.0,
        metrics=None,
    ):
        self.name = name
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.retry_after = str(retry_after_s)
        self.max_queue_wait_s = max_queue_wait_s
        self.metrics = metrics
        self._queue: collections.deque[Job] = collections.deque()
        self._queued_queries = 0  # sum of the sizes of the queued jobs
        # Measured seconds per query of recent batches (EWMA); 0 until the first batch.
        self.cost_per_query = 0.0
        # When the batch now running should end (its queries x the cost per query); 0 when idle.
        self._busy_until = 0.0
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        if metrics is not None:
            metrics.queue_depth.labels(name).set_function(lambda: len(self._queue))
            self._m_wait = metrics.queue_wait.labels(name)
            self._m_batch = metrics.batch_size.labels(name)
            self._m_gone = metrics.rejected.labels(name, "client_gone")
            self._m_full = metrics.rejected.labels(name, "queue_full")
            self._m_closed = metrics.rejected.labels(name, "shutting_down")

    # ---- event-loop side ----

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=f"hlm-{self.name}", daemon=True)
        self._thread.start()

    def qsize(self) -> int:
        return len(self._queue)

    def submit(self, payload: Any, size: int = 1) -> asyncio.Future:
        """Queue a job; its future resolves with the batch function's result for it."""
        future = self._loop.create_future()
        self._put(Job(payload, size, future=future))
        return future

    def submit_background(self, payload: Any, size: int, callback: Callable[[Any], None], *, only_if_idle: bool) -> bool:
        """Queue a job nobody waits for; False (and nothing queued) if refused."""
        if only_if_idle and self._queue:
            return False
        try:
            self._put(Job(payload, size, callback=callback), count=False)
        except (Overloaded, NotReady):
            return False
        return True

    def expected_wait_s(self) -> float:
        """How long a request queued now should wait for its batch to start: the rest of
        the batch now running plus the work already queued, from the measured cost per query."""
        running = max(0.0, self._busy_until - time.perf_counter()) if self._busy_until else 0.0
        return running + self._queued_queries * self.cost_per_query

    def admit(self) -> None:
        """Raise the refusal a job would get now (counted in the metrics), queue nothing.

        The HTTP edge calls this before the body reaches the framework, so a request that
        would be refused costs a few microseconds instead of a full trip through routing."""
        with self._cond:
            refusal = self._refusal(count=True)
        if refusal is not None:
            raise refusal

    def _refusal(self, count: bool):
        """The error a new job gets now, or None; caller holds the lock."""
        if self._closed or self._thread is None:
            if count and self.metrics is not None:
                self._m_closed.inc()
            return NotReady(f"The {self.name} encoder is shutting down.", code="shutting_down",
                            headers={"Retry-After": self.retry_after})
        if len(self._queue) >= self.queue_size:
            if count and self.metrics is not None:
                self._m_full.inc()
            return Overloaded(
                f"The {self.name} encoder's queue is full ({self.queue_size} requests); retry shortly.",
                code="queue_full", headers={"Retry-After": self.retry_after},
            )
        # Time bound: refuse at once rather than accept a request that would wait past
        # the budget: the rest of the running batch and the work already queued. An idle
        # worker refuses nobody, so one request always runs.
        if self.max_queue_wait_s:
            queued = self.expected_wait_s()
            if queued > self.max_queue_wait_s:
                if count and self.metrics is not None:
                    self._m_full.inc()
                return Overloaded(
                    f"The {self.name} encoder is overloaded (about {queued * 1000:.0f} ms of work queued, more than "
                    f"the {self.max_queue_wait_s * 1000:.0f} ms limit); retry shortly.",
                    code="queue_full", headers={"Retry-After": self.retry_after},
                )
        return None

    def _put(self, job: Job, count: bool = True) -> None:
        with self._cond:
            refusal = self._refusal(count)
            if refusal is not None:
                raise refusal
            self._queue.append(job)
            self._queued_queries += job.size
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

    def _take(self) -> Optional[list[Job]]:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            size = batch[0].size
            self._queued_queries -= size
            deadline = time.perf_counter() + self.max_wait_s
            while size < self.max_batch:
                if self._queue:
                    if size + self._queue[0].size > self.max_batch:
                        break
                    job = self._queue.popleft()
                    batch.append(job)
                    size += job.size
                    self._queued_queries -= job.size
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            now = time.perf_counter()
            live = []
            for job in batch:
                if job.gone():
                    if self.metrics is not None:
                        self._m_gone.inc()
                    continue
                job.started = now
                live.append(job)
            if not live:
                continue
            if self.metrics is not None:
                for job in live:
                    if job.future is not None:
                        self._m_wait.observe(now - job.enqueued)
                self._m_batch.observe(sum(job.size for job in live))
            queries = sum(job.size for job in live)
            t0 = time.perf_counter()
            with self._cond:
                self._busy_until = t0 + queries * self.cost_per_query
            try:
                results = self.fn(live)
                error = None
            except BaseException as exc:  # resolve every waiter, never kill the worker
                log.error("the %s batch of %d jobs failed", self.name, len(live), exc_info=exc)
                results, error = None, exc
            cost = (time.perf_counter() - t0) / max(1, queries)
            with self._cond:
                self._busy_until = 0.0
                self.cost_per_query = cost if not self.cost_per_query else 0.8 * self.cost_per_query + 0.2 * cost
            waiting = []
            for i, job in enumerate(live):
                if job.callback is not None:
                    if error is None:
                        try:
                            job.callback(results[i])
                        except Exception:
                            log.exception("a background %s job's callback failed", self.name)
                else:
                    waiting.append((job.future, None if error else results[i]))
            if waiting:
                self._loop.call_soon_threadsafe(_resolve, waiting, error)


def _resolve(waiting: list, error: Optional[BaseException]) -> None:
    for future, result in waiting:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
