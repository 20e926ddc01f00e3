"""The live keyword set: recovery at start-up, the ingest thread, hand-over on an artifact swap.

Every change goes through two threads in order: the encoder thread encodes the new texts
with the artifact's teacher (at lower CPU priority, so the query workers keep the cores); the
writer thread, the only writer, appends the change to the log and fsyncs, applies it to the
index (one change no search sees half-done), then answers. An answer therefore means durable and visible; a change that fails before the
fsync leaves nothing behind (the log is cut back, the index untouched).

State folder (``HLM_STATE_DIR``)::

    LOCK                   flock'ed while a process owns the folder (released by the kernel on kill -9)
    wal.log                changes since the snapshot (service/live/wal.py)
    snapshot-<sequence>/   the live set at that sequence (service/live/snapshot.py)
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from service.live.liveset import LiveSet
from service.live.snapshot import latest_snapshot, read_snapshot, write_snapshot
from service.live.wal import Change, Wal

log = logging.getLogger(__name__)

# As service/reload.py: 10 nicer than the process. Encoding a keyword with the teacher costs
# ~20 ms of a core; at normal priority a stream of upserts takes that from the query workers.
INGEST_NICENESS = 10
ENCODE_BATCH = 16


class LiveUnavailable(Exception):
    """The live keyword set cannot take this change now; one sentence."""


def lower_this_threads_priority(niceness: int = INGEST_NICENESS) -> None:
    if not niceness:
        return
    try:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + niceness))
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass


def encode_texts(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    """Teacher vectors of ``texts`` (fp32: batch-invariant, so batches of any size agree)."""
    parts = [encoder.encode(list(texts[i:i + ENCODE_BATCH])).vectors for i in range(0, len(texts), ENCODE_BATCH)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, encoder.dim), dtype=np.float32)


def apply_to_index(index: Any, change: Change, vectors: Optional[np.ndarray]) -> int:
    """One change onto a ``VectorIndex``: atomically where the backend can (hnswlib's ``apply``)."""
    if hasattr(index, "apply"):
        return index.apply(change.delete_ids, change.upsert_ids, vectors, change.texts, change.attributes)
    deleted = index.delete(change.delete_ids) if change.delete_ids else 0
    if change.upsert_ids:
        index.upsert(change.upsert_ids, vectors, change.texts, change.attributes)
    return deleted


class Target:
    """What changes are applied to and encoded with: one runtime's index and teacher."""

    def __init__(self, index: Any, encoder: Any, teacher: str):
        self.index, self.encoder, self.teacher = index, encoder, teacher


class LiveKeywords:
    def __init__(self, state_dir: Path, metrics: Any, *, queue_size: int = 64, snapshot_every: int = 1000,
                 snapshot_bytes: int = 64 << 20, niceness: int = INGEST_NICENESS):
        self.dir = Path(state_dir)
        self.metrics = metrics
        self.snapshot_every = snapshot_every
        self.snapshot_bytes = snapshot_bytes
        self.niceness = niceness
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.dir / "LOCK", "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise LiveUnavailable(f"The state folder {self.dir} is in use by another process.") from None
        for stale in self.dir.glob(".snapshot-tmp-*"):  # a snapshot a crash interrupted (never renamed in)
            shutil.rmtree(stale, ignore_errors=True)
        snap = latest_snapshot(self.dir)
        self.live = read_snapshot(snap) if snap else LiveSet()
        self.wal, changes = Wal.open(self.dir / "wal.log")
        self._replay = [c for c in changes if c.sequence > self.live.sequence]
        self._since_snapshot = len(self._replay)
        self.snapshot_at = time.time() if snap is None else snap.stat().st_mtime
        self.version = 0  # bumped after every applied change: result caches compare it
        self.target: Optional[Target] = None
        self._jobs: "queue.Queue[Optional[tuple]]" = queue.Queue(maxsize=queue_size)
        self._applies: "queue.Queue[Optional[tuple]]" = queue.Queue()  # encoded, bounded by _jobs upstream
        self._thread: Optional[threading.Thread] = None
        self._encoder_thread: Optional[threading.Thread] = None
        log.info("live keywords: %s: snapshot at sequence %d (%d upserts, %d deletes), %d changes to replay",
                 self.dir, self.live.sequence, len(self.live.upserts), len(self.live.deletes), len(self._replay))
        if metrics is not None:
            metrics.live_snapshot_age.set_function(lambda: time.time() - self.snapshot_at)
        self._gauges()

    # ---- start-up (blocking, before any query) ----

    def attach(self, index: Any, encoder: Any, teacher: str) -> None:
        """Bring the live set into ``teacher``'s space, replay the log, apply it all to ``index``."""
        t0 = time.perf_counter()
        reencoded = self._into_space(encoder, teacher)
        for change in self._replay:
            vectors = change.vectors if change.teacher == teacher else encode_texts(encoder, change.texts)
            reencoded |= change.teacher != teacher and bool(change.upsert_ids)
            self.live.apply(change, vectors)
        self._replay = []
        whole = self.live.as_change()
        apply_to_index(index, whole, whole.vectors)
        self.target = Target(index, encoder, teacher)
        if reencoded:  # the log's vectors are in another space now: fold them into a snapshot
            self._snapshot()
        log.info("live keywords: applied %d upserts and %d deletes (sequence %d) in %.1f s%s",
                 len(self.live.upserts), len(self.live.deletes), self.live.sequence, time.perf_counter() - t0,
                 ", re-encoded by this artifact's teacher" if reencoded else "")
        self._gauges()

    def _into_space(self, encoder: Any, teacher: str) -> bool:
        if self.live.teacher in (None, teacher) or not self.live.upserts:
            self.live.teacher = teacher
            return False
        ids = list(self.live.upserts)
        vectors = encode_texts(encoder, [self.live.upserts[k].text for k in ids])
        for kid, vector in zip(ids, vectors):
            self.live.upserts[kid].vector = vector
        self.live.teacher = teacher
        return True

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._thread is None:
            self._loop = loop
            self._thread = threading.Thread(target=self._work, name="hlm-ingest-write", daemon=True)
            self._encoder_thread = threading.Thread(target=self._encode_loop, name="hlm-ingest-encode", daemon=True)
            self._thread.start()
            self._encoder_thread.start()

    # ---- the request side (event loop) ----

    def get(self, keyword_id: str) -> Optional[dict]:
        target = self.target
        found = target.index.get(keyword_id) if target is not None and hasattr(target.index, "get") else None
        if found is None:
            entry = self.live.upserts.get(keyword_id)
            return None if entry is None else {"id": keyword_id, "text": entry.text, "attributes": dict(entry.attributes)}
        return {"id": keyword_id, "text": found[0], "attributes": found[1]}

    def submit(self, upsert_ids: list[str], texts: list[str], attributes: list[dict], delete_ids: list[str]
               ) -> asyncio.Future:
        """Queue a change; the future gives {"upserted", "deleted", "sequence"} once durable and visible."""
        future = self._loop.create_future()
        try:
            self._jobs.put_nowait(("change", (upsert_ids, texts, attributes, delete_ids), future))
        except queue.Full:
            raise LiveUnavailable("The ingest queue is full; retry later.") from None
        self._gauges()
        return future

    def _resolve(self, future: asyncio.Future, result: Any = None, error: Optional[BaseException] = None) -> None:
        def done() -> None:
            if future.done():  # the client left; the change stands all the same
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        self._loop.call_soon_threadsafe(done)

    # ---- the ingest threads ----
    #
    # Two, in a pipeline: the encoder thread (niced) turns texts into teacher vectors, the CPU
    # work; the writer thread (normal priority) logs, applies and answers, in order. The
    # writer's steps are short but hold the graph alone (each add) or the log: at lower
    # priority on a busy machine the scheduler would preempt it *inside* them and every query
    # would wait on a descheduled thread (priority inversion).

    def _encode_loop(self) -> None:
        lower_this_threads_priority(self.niceness)
        while True:
            job = self._jobs.get()
            if job is not None and job[0] == "change":
                kind, (upsert_ids, texts, attributes, delete_ids), future = job
                target = self.target
                try:
                    t0 = time.perf_counter()
                    vectors = encode_texts(target.encoder, texts) if texts else None
                    if texts:
                        self.metrics.ingest_encode.observe(time.perf_counter() - t0)
                except BaseException as exc:  # noqa: BLE001 - answered, nothing applied
                    log.error("live keywords: encoding failed", exc_info=exc)
                    self._resolve(future, error=exc)
                    continue
                job = (kind, (upsert_ids, texts, attributes, delete_ids, vectors, target.teacher), future)
            self._applies.put(job)  # in order, handovers included
            if job is None:
                return

    def _work(self) -> None:
        while True:
            job = self._applies.get()
            if job is None:
                return
            kind, args, future = job
            try:
                result = getattr(self, f"_do_{kind}")(*args)
            except BaseException as exc:  # noqa: BLE001 - answered to the waiting request, never lost
                if not isinstance(exc, LiveUnavailable):
                    log.error("live keywords: %s failed", kind, exc_info=exc)
                self._resolve(future, error=exc)
            else:
                self._resolve(future, result)
            finally:
                self._gauges()

    def _do_change(self, upsert_ids, texts, attributes, delete_ids, vectors, teacher) -> dict:
        target = self.target
        if texts and teacher != target.teacher:  # encoded just before a swap to another teacher
            vectors = encode_texts(target.encoder, texts)
        change = Change(self.live.sequence + 1, target.teacher, list(upsert_ids), list(texts), list(attributes),
                        vectors, list(delete_ids))
        try:
            self.wal.append(change)
        except OSError as exc:
            self._count(change, "failed")
            raise LiveUnavailable(f"The change could not be written to the log ({exc.strerror or exc}); "
                                  "nothing was applied.") from None
        # Durable from here: an index failure now is a bug, logged; a restart replays the change.
        deleted = apply_to_index(target.index, change, vectors)
        self.live.apply(change)
        self.version += 1
        self._since_snapshot += 1
        self._count(change, "ok")
        if self._since_snapshot >= self.snapshot_every or self.wal.size >= self.snapshot_bytes:
            self._snapshot()
        return {"upserted": len(upsert_ids), "deleted": deleted, "sequence": change.sequence}

    def _do_handover(self, index, encoder, teacher, decided: threading.Event, verdict: list,
                     future: asyncio.Future) -> None:
        """Apply the live set to a new runtime's index, then hold every later write until the
        swap is decided (``Handover.commit`` / ``abandon``), so the new index misses no change."""
        whole = self.live.as_change()
        same = teacher == self.live.teacher
        vectors = whole.vectors if same or not whole.texts else encode_texts(encoder, whole.texts)
        apply_to_index(index, whole, vectors)
        self._resolve(future, None)  # the reload goes on (warm-up, swap) while writes wait here
        if not decided.wait(Handover.TIMEOUT_S):
            log.error("live keywords: a reload held writes for %.0f s without deciding; they resume on the old index",
                      Handover.TIMEOUT_S)
            return
        if not verdict[0]:
            return
        if not same:  # the new teacher's vectors become the live set's
            for kid, vector in zip(whole.upsert_ids, vectors if vectors is not None else ()):
                self.live.upserts[kid].vector = vector
            self.live.teacher = teacher
            self._snapshot()
        self.target = Target(index, encoder, teacher)
        self.version += 1

    def _snapshot(self) -> None:
        write_snapshot(self.dir, self.live)
        self.wal.reset()  # only now: the snapshot in place holds every record the log held
        self._since_snapshot = 0
        self.snapshot_at = time.time()

    # ---- artifact swap (service/reload.py) ----

    async def handover(self, index: Any, encoder: Any, teacher: str) -> "Handover":
        """Carry the live set onto a new runtime's index (re-encoded when its teacher differs)."""
        decided, verdict = threading.Event(), []
        future = self._loop.create_future()
        job = ("handover", (index, encoder, teacher, decided, verdict, future), future)
        await asyncio.to_thread(self._jobs.put, job)  # a full queue waits here, off the loop
        await future
        return Handover(decided, verdict)

    # ---- shut-down ----

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)  # through the encoder thread to the writer: both end, in order
            self._thread.join(timeout=30)
        self.wal.close()
        self._lock_file.close()

    def _count(self, change: Change, outcome: str) -> None:
        if change.upsert_ids:
            self.metrics.keyword_changes.labels("upsert", outcome).inc(len(change.upsert_ids))
        if change.delete_ids:
            self.metrics.keyword_changes.labels("delete", outcome).inc(len(change.delete_ids))

    def _gauges(self) -> None:
        m = self.metrics
        if m is None:
            return
        m.ingest_queue_depth.set(self._jobs.qsize() + self._applies.qsize())
        m.live_log_bytes.set(self.wal.size)
        if self.target is not None:
            m.keywords_live.set(len(self.target.index))


class Handover:
    """Between ``LiveKeywords.handover`` and the swap: writes wait; ``commit`` or ``abandon`` ends it."""

    TIMEOUT_S = 600.0  # a reload that never decides (a bug) must not stop writes for ever

    def __init__(self, decided: threading.Event, verdict: list):
        self._decided, self._verdict = decided, verdict

    def commit(self) -> None:
        """Call on the event loop at the swap: later changes go to the new index."""
        self._decide(True)

    def abandon(self) -> None:
        self._decide(False)

    def _decide(self, ok: bool) -> None:
        if not self._decided.is_set():
            self._verdict.append(ok)
            self._decided.set()
