"""The live keyword set: recovery at start-up, the ingest thread, hand-over on an artifact swap.

Every change goes through two threads in order: the encoder thread encodes the new texts
with the artifact's teacher (at lower CPU priority, so the query workers keep the cores); the
writer thread, the only writer, checks the change against the index's rules, appends it to
the log and fsyncs, applies it to the index (one change no search sees half-done), then
answers. A 200 therefore means durable and visible; a change that fails before the fsync
leaves nothing behind (the log is cut back, the index untouched: ``not_applied``). After the
fsync the change stands whatever happens: it joins the live set and takes its sequence
number; if the index cannot take it now (Milvus down), it is kept in order and applied once
the index answers again, and the answer says so (``not_visible``, #28 finding 5). A snapshot
that fails (a full disk) is logged and retried later, never turned into an error for a
change that is already durable.

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
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from service.live import fsio
from service.live.liveset import LiveSet
from service.live.snapshot import TMP_PREFIX, latest_snapshot, read_snapshot, write_snapshot
from service.live.wal import Change, Wal

log = logging.getLogger(__name__)

# As service/reload.py: 10 nicer than the process. Encoding a keyword with the teacher costs
# ~20 ms of a core; at normal priority a stream of upserts takes that from the query workers.
INGEST_NICENESS = 10
ENCODE_BATCH = 16


RETRY_INDEX_S = 2.0  # how often changes the index could not take are tried again while idle


class LiveUnavailable(Exception):
    """The live keyword set cannot take this change now; nothing was applied; one sentence."""


class ChangeRefused(Exception):
    """The index's rules refuse the change (checked before it is logged); nothing was applied."""


class NotVisible(Exception):
    """The change is durable (logged, in the live set) but the index could not apply it yet."""


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


def check_change(index: Any, change: Change, vectors: Optional[np.ndarray]) -> None:
    """ValueError unless ``index`` would take the change: what its ``apply`` checks (lengths,
    repeated ids, finite vectors of its dimension) and, for a backend with rules of its own
    (Milvus: number ranges, key lengths), its ``check_rows``. Run before the change is logged,
    so the log never holds a change that the index then refuses (#28 finding 3)."""
    ids = change.upsert_ids
    if not len(ids) == len(change.texts) == len(change.attributes):
        raise ValueError("ids, texts and attributes differ in length")
    if len(set(ids)) != len(ids) or set(ids) & set(change.delete_ids):
        raise ValueError("an id appears twice in one change")
    if ids:
        vectors = np.asarray(vectors, dtype=np.float32)
        dim = getattr(index, "dim", vectors.shape[-1])
        if vectors.shape != (len(ids), dim):
            raise ValueError(f"the vectors are {list(vectors.shape)}, not [{len(ids)}, {dim}]")
        if not np.isfinite(vectors).all():
            raise ValueError("a vector is not finite")
        check_rows = getattr(index, "check_rows", None)
        if check_rows is not None:
            check_rows(ids, vectors, change.texts, change.attributes)


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
        self.queue_size = queue_size
        self.snapshot_every = snapshot_every
        self.snapshot_bytes = snapshot_bytes
        self.niceness = niceness
        fsio.make_dirs(self.dir)
        self._lock_file = open(self.dir / "LOCK", "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise LiveUnavailable(f"The state folder {self.dir} is in use by another process.") from None
        for stale in self.dir.glob(f"{TMP_PREFIX}*"):  # a snapshot a crash interrupted (never renamed in)
            try:
                fsio.remove_tree(stale)
            except OSError:
                pass
        snap = latest_snapshot(self.dir)
        self.live = read_snapshot(snap) if snap else LiveSet()
        self.wal, changes = Wal.open(self.dir / "wal.log")
        self._replay = [c for c in changes if c.sequence > self.live.sequence]
        self._since_snapshot = len(self._replay)
        self._due = (snapshot_every, snapshot_bytes)  # snapshot past this many changes or log bytes
        self.snapshot_at = time.time() if snap is None else snap.stat().st_mtime
        self.version = 0  # bumped after every change the index applied: result caches compare it
        self.target: Optional[Target] = None
        self._unindexed: list[Change] = []  # durable, in the live set, not yet in the index (in order)
        self._last_deleted = 0  # of the last change the index applied (the answer's "deleted")
        # Both queues are unbounded: the bound is ``_queued``, the changes accepted and not yet
        # answered, so a writer held by a reload fills it and ``submit`` answers "full" (#28
        # finding 14); control jobs (hand-over, adoption, stop) are never refused.
        self._jobs: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._applies: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._queued = 0
        self._queued_lock = threading.Lock()
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
            try:
                check_change(index, change, vectors)
            except ValueError as exc:
                # A change the index refuses was answered with an error when it was made (an older
                # version logged before checking): dropped with a line, not a refused start.
                log.error("live keywords: the logged change %d (%d upserts, %d deletes) is dropped: the index "
                          "refuses it (%s)", change.sequence, len(change.upsert_ids), len(change.delete_ids), exc)
                continue
            reencoded |= change.teacher != teacher and bool(change.upsert_ids)
            self.live.apply(change, vectors)
        self._replay = []
        self._drop_refused_rows(index)
        whole = self.live.as_change()
        apply_to_index(index, whole, whole.vectors)
        self.target = Target(index, encoder, teacher)
        if reencoded:  # the log's vectors are in another space now: fold them into a snapshot
            self._snapshot_or_log()
        log.info("live keywords: applied %d upserts and %d deletes (sequence %d) in %.1f s%s",
                 len(self.live.upserts), len(self.live.deletes), self.live.sequence, time.perf_counter() - t0,
                 ", re-encoded by this artifact's teacher" if reencoded else "")
        self._guarded(self._gauges, count=True)

    def _drop_refused_rows(self, index: Any) -> None:
        """Keywords of the snapshot this index refuses (another backend's rules) leave the live set."""
        if getattr(index, "check_rows", None) is None:
            return
        for kid in list(self.live.upserts):
            e = self.live.upserts[kid]
            try:
                index.check_rows([kid], e.vector[None, :], [e.text], [e.attributes])
            except ValueError as exc:
                log.error("live keywords: keyword %r is dropped from the live set: the index refuses it (%s)", kid, exc)
                del self.live.upserts[kid]

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
        """The live set decides for the ids it holds (even a change the index has not taken yet)."""
        if keyword_id in self.live.deletes:
            return None
        entry = self.live.upserts.get(keyword_id)
        if entry is not None:
            return {"id": keyword_id, "text": entry.text, "attributes": dict(entry.attributes)}
        target = self.target
        found = target.index.get(keyword_id) if target is not None and hasattr(target.index, "get") else None
        return None if found is None else {"id": keyword_id, "text": found[0], "attributes": found[1]}

    def submit(self, upsert_ids: list[str], texts: list[str], attributes: list[dict], delete_ids: list[str]
               ) -> asyncio.Future:
        """Queue a change; the future gives {"upserted", "deleted", "sequence"} once durable and visible.

        Never calls the index (a Milvus round trip on the event loop, which may raise after the
        change was queued: #28 finding 6)."""
        with self._queued_lock:
            if self._queued >= self.queue_size:
                raise LiveUnavailable("The ingest queue is full; retry later.")
            self._queued += 1
        future = self._loop.create_future()
        self._jobs.put(("change", (upsert_ids, texts, attributes, delete_ids), future))
        self._gauges()
        return future

    def _answered(self) -> None:
        with self._queued_lock:
            self._queued -= 1

    def _resolve(self, future: Optional[asyncio.Future], result: Any = None,
                 error: Optional[BaseException] = None) -> None:
        def done() -> None:
            if future.done():  # the client left; the change stands all the same
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        if future is None:
            return
        try:
            self._loop.call_soon_threadsafe(done)
        except RuntimeError:  # the loop is closed (shut-down): nobody is waiting any more
            pass

    # ---- the ingest threads ----
    #
    # Two, in a pipeline: the encoder thread (niced) turns texts into teacher vectors, the CPU
    # work; the writer thread (normal priority) logs, applies and answers, in order. The
    # writer's steps are short but hold the graph alone (each add) or the log: at lower
    # priority on a busy machine the scheduler would preempt it *inside* them and every query
    # would wait on a descheduled thread (priority inversion). Neither thread may end on an
    # error: every later change would wait for ever.

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
                    self._answered()
                    self._resolve(future, error=exc)
                    continue
                job = (kind, (upsert_ids, texts, attributes, delete_ids, vectors, target.teacher), future)
            self._applies.put(job)  # in order, handovers included
            if job is None:
                return

    def _work(self) -> None:
        while True:
            try:
                job = self._applies.get(timeout=RETRY_INDEX_S if self._unindexed else None)
            except queue.Empty:  # idle with changes the index has not taken: try again (quietly)
                self._guarded(self._catch_up, quiet=True)
                continue
            if job is None:
                return
            kind, args, future = job
            try:
                result = getattr(self, f"_do_{kind}")(*args)
            except BaseException as exc:  # noqa: BLE001 - answered to the waiting request, never lost
                if not isinstance(exc, (LiveUnavailable, ChangeRefused, NotVisible)):
                    log.error("live keywords: %s failed", kind, exc_info=exc)
                self._resolve(future, error=exc)
            else:
                self._resolve(future, result)
            finally:
                if kind == "change":
                    self._answered()
                self._guarded(self._gauges, count=True)

    def _guarded(self, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - bookkeeping must not end the writer thread
            log.warning("live keywords: %s failed (%s: %s)", getattr(fn, "__name__", fn), exc.__class__.__name__, exc)

    def _do_change(self, upsert_ids, texts, attributes, delete_ids, vectors, teacher) -> dict:
        target = self.target
        if texts and teacher != target.teacher:  # encoded just before a swap to another teacher
            vectors = encode_texts(target.encoder, texts)
        change = Change(self.live.sequence + 1, target.teacher, list(upsert_ids), list(texts), list(attributes),
                        vectors, list(delete_ids))
        try:
            check_change(target.index, change, vectors)
        except ValueError as exc:
            self._count(change, "refused")
            raise ChangeRefused(f"The keyword index refuses the change ({str(exc).rstrip('.')}); nothing was applied.") from None
        try:
            self.wal.append(change)
        except OSError as exc:
            self._count(change, "failed")
            cut = "" if self.wal.clean else "; the log refuses writes until its partial record is removed"
            raise LiveUnavailable(f"The change could not be written to the log ({exc.strerror or exc}); "
                                  f"nothing was applied{cut}.") from None
        # Durable from here: the change stands, in the live set with its sequence number (the next
        # change takes the next one), whatever the index or a snapshot does now.
        self.live.apply(change)
        self._since_snapshot += 1
        self._count(change, "ok")
        self._unindexed.append(change)
        failure = self._catch_up()  # earlier changes the index could not take first, in order
        self._maybe_snapshot()
        if failure is not None:
            raise NotVisible(f"The change is durable (sequence {change.sequence}) but the keyword index cannot apply "
                             f"it now ({failure}); it is applied as soon as the index answers again, and sending the "
                             "same change again is safe.")
        return {"upserted": len(upsert_ids), "deleted": self._last_deleted, "sequence": change.sequence}

    def _catch_up(self, quiet: bool = False) -> Optional[str]:
        """Apply the durable changes the index has not taken, oldest first; why it stopped, or None.
        ``quiet``: the idle retry, which would otherwise log a line every RETRY_INDEX_S."""
        self._last_deleted = 0
        while self._unindexed:
            change = self._unindexed[0]
            try:
                self._last_deleted = apply_to_index(self.target.index, change, change.vectors)
            except Exception as exc:  # noqa: BLE001 - Milvus down, or a bug: the change is durable either way
                reason = (str(getattr(exc, "message", None) or exc).strip().splitlines() or [""])[0][:200].rstrip(".")
                log.log(logging.DEBUG if quiet else logging.ERROR,
                        "live keywords: the index cannot apply change %d yet (%s: %s); %d changes wait",
                        change.sequence, exc.__class__.__name__, reason, len(self._unindexed))
                return reason or exc.__class__.__name__
            self._unindexed.pop(0)
            self.version += 1
        return None

    def _do_handover(self, index, encoder, teacher, pending: "_Decision", future: asyncio.Future) -> None:
        """Apply the live set to a new runtime's index, then hold every later write until the
        swap is decided (``Handover.commit`` / ``abandon``), so the new index misses no change."""
        vectors = self._carry(index, encoder, teacher)
        self._resolve(future, None)  # the reload goes on (warm-up, swap) while writes wait here
        if not pending.wait(Handover.TIMEOUT_S):
            log.error("live keywords: a reload held writes for %.0f s without deciding; they resume on the old "
                      "index (a commit after this carries them over)", Handover.TIMEOUT_S)
            return
        if pending.verdict:
            self._switch(index, encoder, teacher, vectors)

    def _do_adopt(self, index, encoder, teacher) -> None:
        """A commit that came after the hold timed out: the writes since went to the old index, so
        the live set is applied to the new one again (idempotent), then it becomes the target."""
        self._switch(index, encoder, teacher, self._carry(index, encoder, teacher))

    def _carry(self, index, encoder, teacher) -> Optional[np.ndarray]:
        whole = self.live.as_change()
        same = teacher == self.live.teacher
        vectors = whole.vectors if same or not whole.texts else encode_texts(encoder, whole.texts)
        apply_to_index(index, whole, vectors)
        return vectors

    def _switch(self, index, encoder, teacher, vectors) -> None:
        self._unindexed = []  # the new index holds the whole live set
        if teacher != self.live.teacher:  # the new teacher's vectors become the live set's
            for kid, vector in zip(list(self.live.upserts), vectors if vectors is not None else ()):
                self.live.upserts[kid].vector = vector
            self.live.teacher = teacher
            self._snapshot_or_log()
        self.target = Target(index, encoder, teacher)
        self.version += 1

    # ---- snapshots ----

    def _maybe_snapshot(self) -> None:
        if self._since_snapshot >= self._due[0] or self.wal.size >= self._due[1]:
            self._snapshot_or_log()

    def _snapshot(self) -> None:
        write_snapshot(self.dir, self.live)
        self._since_snapshot = 0
        self._due = (self.snapshot_every, self.snapshot_bytes)
        self.snapshot_at = time.time()
        self.wal.reset()  # only now: the snapshot in place holds every record the log held

    def _snapshot_or_log(self) -> None:
        """A snapshot, or one log line: the changes are durable in the log either way. The next
        try waits for as many changes (or log bytes) again, not the next write (#28 finding 5)."""
        try:
            self._snapshot()
        except OSError as exc:
            self._due = (self._since_snapshot + self.snapshot_every, self.wal.size + self.snapshot_bytes)
            log.error("live keywords: snapshot at sequence %d failed (%s); the log keeps every change, "
                      "next try after %d more changes", self.live.sequence, exc, self.snapshot_every)

    # ---- artifact swap (service/reload.py) ----

    async def handover(self, index: Any, encoder: Any, teacher: str) -> "Handover":
        """Carry the live set onto a new runtime's index (re-encoded when its teacher differs)."""
        pending = _Decision(lambda: self._jobs.put(("adopt", (index, encoder, teacher), None)))
        future = self._loop.create_future()
        self._jobs.put(("handover", (index, encoder, teacher, pending, future), future))
        await future
        return Handover(pending)

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

    def _gauges(self, count: bool = False) -> None:
        """Cheap gauges anywhere; the index's size (a round trip on Milvus) only from the writer."""
        m = self.metrics
        if m is None:
            return
        m.ingest_queue_depth.set(self._queued)
        m.live_log_bytes.set(self.wal.size)
        if count and self.target is not None:
            m.keywords_live.set(len(self.target.index))


class _Decision:
    """The verdict on a swap, shared by the writer (waiting) and the reload (deciding)."""

    def __init__(self, adopt):
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._adopt = adopt  # queues the late adoption when the writer stopped waiting
        self.verdict: Optional[bool] = None
        self.expired = False

    def wait(self, timeout: float) -> bool:
        """True once decided; False when the time ran out first (then a commit adopts late)."""
        if self._event.wait(timeout):
            return True
        with self._lock:
            if self.verdict is not None:
                return True
            self.expired = True
            return False

    def decide(self, ok: bool) -> None:
        with self._lock:
            if self.verdict is not None:
                return
            self.verdict = ok
            late = self.expired and ok
            self._event.set()
        if late:
            self._adopt()


class Handover:
    """Between ``LiveKeywords.handover`` and the swap: writes wait; ``commit`` or ``abandon`` ends it."""

    TIMEOUT_S = 600.0  # a reload that never decides (a bug) must not stop writes for ever

    def __init__(self, decision: _Decision):
        self._decision = decision

    def commit(self) -> None:
        """Call on the event loop at the swap: later changes go to the new index (even after the
        hold timed out: the changes made since are carried over first)."""
        self._decision.decide(True)

    def abandon(self) -> None:
        self._decision.decide(False)
