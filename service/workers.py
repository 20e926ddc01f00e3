"""``hlm serve --workers N``: N worker processes answering on one port.

Why processes: one Python process keeps one core busy (its event loop, the HTTP parsing and
the JSON all hold the GIL), so on a machine with several cores the student's served rate
grows with processes, not threads. Each worker is the whole service of ``service.server``:
it verifies, loads and warms the artifact itself, then listens on a socket of its own bound
to the same port with ``SO_REUSEPORT``: the kernel spreads new connections over the
listening workers by a hash of their addresses. (One shared listening socket would let the
worker whose ``accept`` loop wakes first take a whole burst of new connections: 16 opened
at once all landed on one worker, and an open-loop client's pool then sat on it.) The price
of SO_REUSEPORT: a connection still in a stopping worker's accept queue is reset, unless the
host sets ``net.ipv4.tcp_migrate_req=1`` (Linux 5.14+), which hands it to another worker.
The teacher gets the same workers, so a student-vs-teacher comparison stays on the same cores.

What the supervisor (this module, the parent process) does, and nothing more:
- reserves the port (bound, never listening: an address in use fails at once), claims it
  against a second ``hlm serve --workers`` (service/ports.py), and starts the workers
  (``spawn``: a clean interpreter each);
- keeps ``/metrics`` adding up: prometheus_client's multiprocess mode, in a fresh folder per
  start (``service/metrics.py`` reads every worker's files on a scrape);
- at the first start, stops everything (exit 2) when a worker could not start: a bad artifact
  or a refused setting fails the same way in every worker;
- replaces a worker that dies after it served with one pinned to what the dead one served
  (its resolved folder and ``artifact_sha256``; the folder may point elsewhere by now, and
  moving to it is a roll's job). A replacement that fails is retried with a growing delay
  while the other workers serve: it never takes the service down;
- SIGHUP (or ``POST /admin/reload`` in any worker) rolls the workers one at a time onto the
  configured artifact folder: a new worker must be ready (loaded and warm) before the one it
  replaces is stopped; one that is not ready in time is stopped and the old ones keep serving;
- SIGTERM / SIGINT: every worker finishes its in-flight requests and drains (uvicorn's
  graceful shut-down), then the supervisor exits 0.

Workers know their supervisor by the pid it passes them, never by ``getppid() == 1``: in a
container without an init the supervisor *is* pid 1 (the Dockerfile runs tini anyway).

What stays per worker: admission (each worker's queue and budget), the result cache and
``GET /v1/stats``' window (computed from the summed histogram, so it covers all workers).
Live keyword writes need one process holding the index (``HLM_STATE_DIR`` with N > 1 is
refused at start-up); scale those out with the Milvus backend (docs/SCALE.md).
"""

from __future__ import annotations

import logging
import logging.config
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from service.ports import PortTaken, bind_shared, claim, probe
from service.server import log_config, serve
from service.settings import Settings

log = logging.getLogger("service")

NOT_SERVING = 2  # the exit code of a worker (and of hlm serve) that refused to serve
READY_TIMEOUT_S = 600.0  # a worker loads and warms the artifact before it counts as started
STOP_TIMEOUT_S = 45.0  # uvicorn's graceful shut-down (30 s) and the queues' drain
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 300.0  # a failed replacement is tried again after 1, 2, 4 ... 300 s

_spawn = multiprocessing.get_context("spawn")


def run(settings: Settings) -> int:
    """``hlm serve``: one process, or ``settings.workers`` of them under a supervisor."""
    if settings.workers == 1:
        return serve(settings)
    logging.config.dictConfig(log_config(settings.log_level))
    return serve_workers(settings)


def worker_main(settings: Settings, report, supervisor: int) -> None:
    """One worker (in a spawned process): the single-process server on a socket of its own
    (``SO_REUSEPORT``, the port the supervisor reserved). It listens only once the artifact is
    loaded and warm (asyncio listens when uvicorn's start-up ends), so no connection waits on a
    loading worker. What it serves is sent on ``report`` then; the exit code says whether it served."""
    # SIGHUP belongs to the supervisor (a roll); a worker ignores one sent to the group.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _stop_with(supervisor)
    sock = bind_shared(settings.host, settings.port)
    raise SystemExit(serve(settings, sockets=[sock], on_ready=report.send, supervisor_pid=supervisor))


def _stop_with(supervisor: int) -> None:
    """Linux: SIGTERM this worker when the supervisor dies, even by SIGKILL (else orphaned
    workers would go on answering on the port with nobody to stop or replace them)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's own shut-down still stops them
        pass
    # The supervisor died before the call above: this worker has another parent by now. (Not
    # "getppid() == 1": a supervisor that is pid 1 itself, in a container, is alive.)
    if os.getppid() != supervisor:
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Worker:
    process: multiprocessing.process.BaseProcess
    report: object  # the supervisor's end of the worker's pipe: what it serves, once ready
    first: bool  # started with the service (its failure stops everything), not a replacement
    served: Optional[dict] = None  # {"artifact_dir", "artifact_sha256"} once it was ready

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def poll_ready(self, timeout: float = 0.0) -> bool:
        """Whether it has been ready (loaded, warm, listening) at least once."""
        if self.served is None:
            try:
                if self.report.poll(timeout):
                    self.served = self.report.recv()
            except (EOFError, OSError):  # it exited before it was ready (or was forgotten)
                return False
        return self.served is not None


@dataclass
class Slot:
    """One of the N places: its worker, and when a failed replacement is tried again."""

    worker: Optional[Worker]
    pin: Optional[dict] = None  # what a replacement must serve: what this place served last
    retry_at: float = 0.0
    delay: float = RETRY_FIRST_S


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slots: list[Slot] = []
        self.signals: list[int] = []
        self.code = 0

    @property
    def workers(self) -> list[Worker]:
        return [slot.worker for slot in self.slots if slot.worker is not None]

    # ---- start, stop, replace ----

    def start_worker(self, *, first: bool = False, pin: Optional[dict] = None) -> Worker:
        settings = self.worker_settings
        if pin is not None:  # the folder it served, resolved, and only the artifact it held then
            settings = settings.model_copy(update={"artifact_dir": Path(pin["artifact_dir"]),
                                                   "artifact_sha256": pin["artifact_sha256"]})
        ours, theirs = _spawn.Pipe(duplex=False)
        process = _spawn.Process(target=worker_main, args=(settings, theirs, os.getpid()),
                                 name="hlm-worker", daemon=False)
        process.start()
        theirs.close()  # only the worker writes: its exit then reads as EOF here
        log.info("worker %d started%s", process.pid, f" on artifact {pin['artifact_sha256'][:12]}" if pin else "")
        return Worker(process, ours, first)

    def stop_worker(self, worker: Worker, *, graceful: bool = True) -> None:
        if worker.process.exitcode is None:
            os.kill(worker.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        worker.process.join(STOP_TIMEOUT_S)
        if worker.process.exitcode is None:  # did not drain in time
            worker.process.kill()
            worker.process.join()
        self.forget(worker)

    def forget(self, worker: Worker) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, self.metrics_dir)  # its live gauges leave the sums
        worker.report.close()

    def wait_ready(self, worker: Worker) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not self.stopping():
            if worker.poll_ready(0.2):
                return True
            if worker.process.exitcode is not None:
                return worker.poll_ready()
        return False

    def roll(self) -> None:
        """Replace each worker by a new one on the configured folder, the new one ready before
        the old one stops."""
        log.info("SIGHUP: rolling %d workers onto %s", len(self.slots), self.settings.artifact_dir)
        for slot in self.slots:
            new = self.start_worker()
            if not self.wait_ready(new):
                self.stop_worker(new, graceful=False)
                if not self.stopping():
                    log.error("roll stopped: a new worker was not ready (exit code %s); the old workers keep serving",
                              new.process.exitcode)
                return
            if slot.worker is not None:
                self.stop_worker(slot.worker)
            slot.worker, slot.pin, slot.delay = new, new.served, RETRY_FIRST_S
        log.info("roll done: %d workers on the artifact", len(self.slots))

    # ---- signals ----

    def on_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def stopping(self) -> bool:
        return any(s in (signal.SIGTERM, signal.SIGINT) for s in self.signals)

    # ---- the loop ----

    def run(self) -> int:
        n = self.settings.workers
        self.sock = bind_shared(self.settings.host, self.settings.port)  # the port reserved (and chosen, for port 0)
        port = self.sock.getsockname()[1]
        self.claim = None
        try:
            self.claim = claim(self.settings.host, port)
            probe(self.settings.host, port)
        except PortTaken:
            for sock in (self.sock, self.claim):
                if sock is not None:
                    sock.close()
            raise
        self.metrics_dir = tempfile.mkdtemp(prefix="hlm-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir  # inherited by every worker
        self.worker_settings = self.settings.model_copy(update={"reload_on_sighup": False, "port": port})
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        log.info("supervisor %d: %d workers on http://%s:%d", os.getpid(), n, self.settings.host, port)
        try:
            self.slots = [Slot(self.start_worker(first=True)) for _ in range(n)]
            while not self.stopping():
                if signal.SIGHUP in self.signals:
                    self.signals = [s for s in self.signals if s != signal.SIGHUP]
                    self.roll()
                    continue
                self.check_workers()
                if self.code:
                    break
                time.sleep(0.2)
        finally:
            for worker in self.workers:
                if worker.process.exitcode is None:
                    os.kill(worker.pid, signal.SIGTERM)  # all drain at once
            for worker in self.workers:
                self.stop_worker(worker)
            self.sock.close()
            if self.claim is not None:
                self.claim.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self.code

    def check_workers(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            worker = slot.worker
            if worker is None:  # a replacement failed: try again once its delay is over
                if now >= slot.retry_at:
                    slot.worker = self.start_worker(pin=slot.pin)
                continue
            if worker.poll_ready():  # serving: what a replacement of it must serve, failures forgotten
                slot.pin, slot.delay = worker.served, RETRY_FIRST_S
            code = worker.process.exitcode
            if code is None:
                continue
            worker.poll_ready()  # a report sent just before it ended still counts
            self.forget(worker)
            if worker.served is None and worker.first:
                # It stopped before serving, at the first start: the artifact or a setting is
                # refused (its log says why in one sentence), and every other worker would fail
                # the same way.
                log.error("hlm serve: worker %d stopped before serving (exit code %s); stopping all workers.",
                          worker.pid, code)
                self.code = NOT_SERVING
                return
            if worker.served is None:  # a replacement that could not start: the others serve meanwhile
                slot.worker, slot.retry_at = None, now + slot.delay
                log.error("worker %d, a replacement, stopped before serving (exit code %s); %d of %d workers serve; "
                          "trying again in %.0f s (SIGHUP rolls every worker onto the configured folder)",
                          worker.pid, code, len(self.workers), len(self.slots), slot.delay)
                slot.delay = min(RETRY_MAX_S, slot.delay * 2)
                continue
            log.warning("worker %d died (exit code %s) after serving; starting another", worker.pid, code)
            slot.pin = worker.served
            slot.worker = self.start_worker(pin=slot.pin)


def serve_workers(settings: Settings) -> int:
    """Run ``settings.workers`` workers until SIGTERM/SIGINT; the exit code of ``hlm serve``."""
    if settings.state_dir is not None:
        log.error("hlm serve: live keyword writes (HLM_STATE_DIR) need one worker, which holds the index they "
                  "change; serve them with --workers 1, or share the index through the Milvus backend.")
        return NOT_SERVING
    try:
        return Supervisor(settings).run()
    except PortTaken as exc:
        log.error("hlm serve: cannot serve port %d: %s.", settings.port, exc)
        return NOT_SERVING
    except OSError as exc:  # the address is taken, or not ours to bind
        log.error("hlm serve: cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        return NOT_SERVING
