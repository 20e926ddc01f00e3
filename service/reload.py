"""Artifact swap with no downtime: ``POST /admin/reload`` and SIGHUP.

A reload re-reads the configured ``HLM_ARTIFACT_DIR`` (never a path from a request: an
operator re-points it by replacing the folder or the symlink), resolves it once, verifies
it like a start-up (checksums, dimensions, tokenizer against model, index sanity), loads
and warms the new encoders and index in threads while the old runtime keeps serving, then
swaps ``state.runtime`` in one assignment on the event loop. Requests that already hold
the old runtime finish on it (its batch workers drain their queues before they stop); new
requests see only the new one, so no answer mixes the two. A new artifact that fails any
check is refused with one sentence and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from artifact.manifest import ArtifactError, FilePins, read_manifest
from service.errors import ServiceError
from service.metrics import Metrics
from service.loader import load_manifest, resolve_artifact
from service.runtime import Runtime
from service.serving import Phase
from service.settings import Settings

log = logging.getLogger("service")


class ReloadRefused(ServiceError):
    status = 409
    code = "reload_refused"


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ArtifactError) else f"{exc.__class__.__name__}: {exc}"


def set_build_info(metrics: Metrics, runtime: Runtime, version: str) -> None:
    enc = runtime.manifest["encoders"]
    metrics.build_info.info({
        "version": version,
        "student_model": str(enc["student"].get("model")),
        "teacher_model": str(enc["teacher"].get("model")),
        "artifact_sha256": str(runtime.manifest.get("artifact_sha256")),
        "student_precision": runtime.precision,
    })


class Reloader:
    def __init__(self, settings: Settings, metrics: Metrics, state, version: str, supervisor_pid: Optional[int] = None):
        self.settings = settings
        # In a worker of `hlm serve --workers N`: one worker must not swap alone, a reload asks
        # the supervisor (this pid, passed down by it) to roll them all.
        self.supervisor_pid = supervisor_pid
        self.metrics = metrics
        self.state = state
        self.version = version
        self.lock = asyncio.Lock()
        self.last: Optional[dict[str, Any]] = None

    def _refuse(self, message: str, code: str = "reload_refused") -> ReloadRefused:
        self.metrics.reloads.labels("refused").inc()
        self.last = {"result": "refused", "reason": message, "at": time.time()}
        return ReloadRefused(message, code=code)

    async def reload(self, trigger: str) -> dict[str, Any]:
        """Load, check, warm and swap in the configured artifact; ReloadRefused if not."""
        if self.lock.locked():
            raise self._refuse("A reload is already running; wait for it to finish.", "reload_in_progress")
        async with self.lock:
            state = self.state
            old: Optional[Runtime] = state.runtime
            if state.phase is not Phase.READY or old is None:
                raise self._refuse(f"The service is not serving ({state.phase}); nothing to reload into.", "not_ready")
            old_sha = old.manifest.get("artifact_sha256")
            t0 = time.perf_counter()
            log.info("reload (%s): loading %s", trigger, self.settings.artifact_dir)
            runtime: Optional[Runtime] = None
            handover = None  # live keyword changes carried onto the new index (writes wait meanwhile)
            try:
                try:
                    root = await asyncio.to_thread(resolve_artifact, self.settings)
                    pins = FilePins()
                    manifest = await in_low_priority_thread(load_manifest, self.settings, root, pins)
                    runtime = Runtime(self.settings, manifest, self.metrics, root=root)
                    runtime.live = old.live  # the open state folder goes along; load() does not reopen it
                    await in_low_priority_thread(runtime.load)
                    await asyncio.to_thread(pins.check, root)  # what was loaded is what was hashed
                    if old.live is not None:  # replayed onto the new index, re-encoded if its teacher differs
                        handover = await old.live.handover(runtime.index, runtime.slots["teacher"].encoder,
                                                           runtime.teacher_sha256)
                    await in_low_priority_thread(runtime.warm_up)
                    await asyncio.to_thread(_still_same, root, manifest)
                except Exception as exc:  # noqa: BLE001 - any failure: keep serving the old artifact
                    reason = describe(exc)
                    log.error("reload refused, still serving %s: %s", str(old_sha)[:12], reason)
                    raise self._refuse(f"Reload refused, still serving artifact {str(old_sha)[:12]}: {reason}") from None
                if state.phase is not Phase.READY:  # shutting down meanwhile: never start the new one
                    raise self._refuse("The service began shutting down during the reload.", "shutting_down")
                runtime.start(asyncio.get_running_loop())
                # The swap: one reference assignment on the event loop. A request reads
                # state.runtime once and submits to that runtime's batcher without yielding.
                state.runtime = runtime
                if handover is not None:
                    handover.commit()  # later keyword changes go to the new index
            finally:
                if handover is not None:
                    handover.abandon()  # no-op after commit; else writes resume on the old index
            set_build_info(self.metrics, runtime, self.version)
            self.metrics.artifact_loaded.set(time.time())
            new_sha = manifest.get("artifact_sha256")
            seconds = time.perf_counter() - t0
            self.last = {"result": "ok", "artifact_sha256": new_sha, "previous_sha256": old_sha,
                         "seconds": round(seconds, 3), "at": time.time()}
            log.info("reload (%s): now serving artifact %s from %s (was %s), swapped in %.1f s",
                     trigger, str(new_sha)[:12], root, str(old_sha)[:12], seconds)
        await old.close()  # finish what was queued on the old runtime, then stop its workers
        del old  # the last reference: its sessions and index are freed here (Runtime.close cut its cycles)
        await asyncio.to_thread(return_freed_memory)
        # Counted once the old artifact is released, not at the swap: a SIGHUP's caller sees the
        # reload only here, and memory read at that moment must not still hold two artifacts
        # (counted at the swap, the full artifact's RSS read 1.117x the first reload's after a SIGHUP;
        # counted here, at most 1.044x over ten reloads).
        self.metrics.reloads.labels("ok").inc()
        return {"status": "reloaded", "artifact_sha256": new_sha, "previous_sha256": old_sha,
                "path": str(self.settings.artifact_dir), "resolved": str(root), "seconds": round(seconds, 3)}

    async def reload_logged(self, trigger: str) -> None:
        """For SIGHUP: nobody waits for the answer; the outcome goes to the log and metrics."""
        try:
            await self.reload(trigger)
        except ReloadRefused as exc:
            if exc.code == "reload_in_progress" or exc.code == "not_ready":
                log.warning("reload (%s) not started: %s", trigger, exc.message)


# How much nicer than the process a reload's thread runs: checksumming, loading and
# warming a new artifact must not take CPU from the requests the old one is serving (on
# 2 cores, a reload at normal priority made the student's admission budget shed some of
# a steady 100/s load: 1-3 of ~300 requests per swap, against 0-1 at this niceness).
RELOAD_NICENESS = 10


def _lower_this_threads_priority() -> None:
    try:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + RELOAD_NICENESS))
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass


async def in_low_priority_thread(fn, *args):
    """``fn(*args)`` in a fresh thread at lower CPU priority (Linux: niceness is per thread)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hlm-reload", initializer=_lower_this_threads_priority)
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    finally:
        pool.shutdown(wait=False)  # never block the loop; the thread ends with its work


def return_freed_memory() -> None:
    """Hand the old artifact's freed heap back to the system (glibc only; a no-op elsewhere).

    The ONNX sessions and the index were allocated by the reload's loading threads, in
    malloc arenas that glibc keeps after ``free`` unless asked: without this, RSS stays up by
    a good part of an artifact after each reload although nothing references it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _still_same(root: Path, manifest: dict[str, Any]) -> None:
    """The folder was not replaced while it was being loaded (else what was loaded is unverified)."""
    now = read_manifest(root)
    if now.get("artifact_sha256") != manifest.get("artifact_sha256"):
        raise ArtifactError(f"The artifact in {root} changed while it was being loaded; reload again.")
