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
- reserves the port (bound, never listening: an address in use fails at once) and starts
  the workers (``spawn``: a clean interpreter each);
- keeps ``/metrics`` adding up: prometheus_client's multiprocess mode, in a fresh folder per
  start (``service/metrics.py`` reads every worker's files on a scrape);
- restarts a worker that dies after it served; stops everything (exit 2) when a worker could
  not start (a bad artifact or a refused setting fails the same way in every worker);
- SIGHUP (or ``POST /admin/reload`` in any worker) rolls the workers one at a time onto the
  configured artifact folder: a new worker must be ready (loaded and warm) before the one it
  replaces is stopped; one that is not ready in time is stopped and the old ones keep serving;
- SIGTERM / SIGINT: every worker finishes its in-flight requests and drains (uvicorn's
  graceful shut-down), then the supervisor exits 0.

What stays per worker: admission (each worker's queue and budget), the result cache and
``GET /v1/stats``' window (computed from the summed histogram, so it covers all workers).
Live keyword writes need one process holding the index (``HLM_STATE_DIR`` with N > 1 is
refused at start-up); scale those out with the Milvus backend (docs/SCALE.md).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

from service.settings import Settings

log = logging.getLogger("service")

NOT_SERVING = 2  # the exit code of a worker (and of hlm serve) that refused to serve
READY_TIMEOUT_S = 600.0  # a worker loads and warms the artifact before it counts as started
STOP_TIMEOUT_S = 45.0  # uvicorn's graceful shut-down (30 s) and the queues' drain

_spawn = multiprocessing.get_context("spawn")


def worker_main(settings: Settings, ready) -> None:
    """One worker (in a spawned process): the single-process server on a socket of its own
    (``SO_REUSEPORT``, the port the supervisor reserved). It listens only once the artifact is
    loaded and warm (asyncio listens when uvicorn's start-up ends), so no connection waits on a
    loading worker. ``ready`` is set then; the exit code says whether it served."""
    from service.server import serve

    # SIGHUP belongs to the supervisor (a roll); a worker ignores one sent to the group.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _stop_with_parent()
    raise SystemExit(serve(settings, sockets=[bind(settings)], on_ready=ready.set))


def _stop_with_parent() -> None:
    """Linux: SIGTERM this worker when the supervisor dies, even by SIGKILL (else orphaned
    workers would go on answering on the port with nobody to stop or replace them)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's own shut-down still stops them
        pass
    if os.getppid() == 1:  # the supervisor died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Worker:
    process: multiprocessing.process.BaseProcess
    ready: object  # multiprocessing Event
    served: bool = False  # was ready at least once

    @property
    def pid(self) -> int:
        return self.process.pid or 0


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers: list[Worker] = []
        self.signals: list[int] = []
        self.code = 0

    # ---- start, stop, replace ----

    def start_worker(self) -> Worker:
        ready = _spawn.Event()
        process = _spawn.Process(target=worker_main, args=(self.worker_settings, ready),
                                 name="hlm-worker", daemon=False)
        process.start()
        log.info("worker %d started", process.pid)
        return Worker(process, ready)

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

    def wait_ready(self, worker: Worker) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not self.stopping():
            if worker.ready.wait(0.2):
                worker.served = True
                return True
            if worker.process.exitcode is not None:
                return False
        return False

    def roll(self) -> None:
        """Replace each worker by a new one, the new one ready before the old one stops."""
        log.info("SIGHUP: rolling %d workers onto %s", len(self.workers), self.settings.artifact_dir)
        for i, old in enumerate(list(self.workers)):
            new = self.start_worker()
            if not self.wait_ready(new):
                self.stop_worker(new, graceful=False)
                if not self.stopping():
                    log.error("roll stopped: a new worker was not ready (exit code %s); the old workers keep serving",
                              new.process.exitcode)
                return
            self.stop_worker(old)
            self.workers[i] = new
        log.info("roll done: %d workers on the artifact", len(self.workers))

    # ---- signals ----

    def on_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def stopping(self) -> bool:
        return any(s in (signal.SIGTERM, signal.SIGINT) for s in self.signals)

    # ---- the loop ----

    def run(self) -> int:
        n = self.settings.workers
        self.metrics_dir = tempfile.mkdtemp(prefix="hlm-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir  # inherited by every worker
        self.sock = bind(self.settings)  # the port reserved (and chosen, for port 0)
        self.worker_settings = self.settings.model_copy(
            update={"reload_on_sighup": False, "port": self.sock.getsockname()[1]})
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        log.info("supervisor %d: %d workers on http://%s:%d", os.getpid(), n, self.settings.host,
                 self.worker_settings.port)
        try:
            self.workers = [self.start_worker() for _ in range(n)]
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
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self.code

    def check_workers(self) -> None:
        for i, worker in enumerate(self.workers):
            if not worker.served and worker.ready.is_set():
                worker.served = True
            code = worker.process.exitcode
            if code is None:
                continue
            self.forget(worker)
            if not worker.served:
                # It stopped before serving: the artifact or a setting is refused (its log says
                # why in one sentence), and every other worker would fail the same way.
                log.error("hlm serve: worker %d stopped before serving (exit code %s); stopping all workers.",
                          worker.pid, code)
                self.code = NOT_SERVING
                return
            log.warning("worker %d died (exit code %s) after serving; starting another", worker.pid, code)
            self.workers[i] = self.start_worker()


def bind(settings: Settings) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT, not listening yet."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    return sock


def serve_workers(settings: Settings) -> int:
    """Run ``settings.workers`` workers until SIGTERM/SIGINT; the exit code of ``hlm serve``."""
    if settings.state_dir is not None:
        log.error("hlm serve: live keyword writes (HLM_STATE_DIR) need one worker, which holds the index they "
                  "change; serve them with --workers 1, or share the index through the Milvus backend.")
        return NOT_SERVING
    try:
        return Supervisor(settings).run()
    except OSError as exc:  # the address is taken, or not ours to bind
        log.error("hlm serve: cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        return NOT_SERVING


def supervisor_pid(settings: Settings) -> Optional[int]:
    """In a worker of ``hlm serve --workers N`` (N > 1): the supervisor's pid, else None."""
    return os.getppid() if settings.workers > 1 else None
