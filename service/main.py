"""The app factory: ``create_app(settings)`` wires settings, metrics, routes and lifespan.

Start-up, in the lifespan: verify the artifact (a bad one stops start-up with one
sentence in the log), then load both encoders and the index and warm them in the
background while /healthz already answers; /readyz turns green only after warm-up.
(A worker of ``--workers N`` loads before it listens: service/workers.py.)
Shut-down: the server first finishes in-flight requests, then the lifespan closes the
batch queues, computing what is still queued (shadow jobs included).

Run it with ``hlm serve`` or ``uvicorn --factory service.main:create_app``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from contextlib import asynccontextmanager
from typing import Callable, Optional

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from artifact.manifest import ArtifactError, FilePins
from service.api import routes_admin, routes_meta, routes_openai, routes_playground, routes_search
from service.errors import install_handlers
from service.metrics import Metrics
from service.middleware import EdgeMiddleware
from service.reload import Reloader, set_build_info
from service.loader import load_manifest, resolve_artifact
from service.runtime import Runtime
from service.serving import AppState, Phase, SearchService
from service.settings import Settings

log = logging.getLogger("service")

DESCRIPTION = """
Keyword retrieval for sponsored search. A small **student** query encoder, distilled into
the space of a large **teacher**, encodes the query; an HNSW index of teacher-encoded
keywords returns the nearest keywords. `encoder=teacher` serves the baseline from the same
process. Errors are JSON `{"error": {"code", "message"}}`.
"""


UNEXPECTED_FAILURE = "Start-up failed on an unexpected error; the server log says which."


class StartupAborted(Exception):
    """Start-up refused; the reason was logged as one sentence."""


def create_app(settings: Optional[Settings] = None, *, on_fatal: Optional[Callable[[str], None]] = None,
               on_ready: Optional[Callable[[dict], None]] = None, supervisor_pid: Optional[int] = None) -> FastAPI:
    """``on_ready(served)``: once loaded and warm, with the resolved folder and artifact_sha256;
    ``supervisor_pid``: in a worker of ``hlm serve --workers N``, whom a reload asks to roll."""
    settings = settings or Settings()
    metrics = Metrics()
    state = AppState()
    service = SearchService(settings, metrics, state)
    reloader = Reloader(settings, metrics, state, routes_meta.VERSION, supervisor_pid=supervisor_pid)

    async def load_in_background(runtime: Runtime, pins: FilePins) -> None:
        t0 = time.perf_counter()
        try:
            state.phase = Phase.LOADING
            await asyncio.to_thread(runtime.load)
            await asyncio.to_thread(pins.check, runtime.root)  # what was loaded is what was hashed
            if settings.warmup_delay_s:
                await asyncio.sleep(settings.warmup_delay_s)
            state.phase = Phase.WARMING
            await asyncio.to_thread(runtime.warm_up)
            runtime.start(asyncio.get_running_loop())
        except Exception as exc:  # noqa: BLE001 - any failure here means: do not serve
            reason = str(exc) if isinstance(exc, ArtifactError) else f"{exc.__class__.__name__}: {exc}"
            log.error("start-up stopped: %s", reason)
            log.debug("start-up failure", exc_info=exc)
            # /readyz answers anyone: our own sentence for a refused artifact, never the raw
            # text of an unexpected exception (it can carry paths and internals; the log has it).
            state.phase = Phase.FAILED
            state.detail = reason if isinstance(exc, ArtifactError) else UNEXPECTED_FAILURE
            if on_fatal is not None:
                on_fatal(reason)
            return
        state.phase, state.ready_at = Phase.READY, time.time()
        metrics.ready.set(1)
        metrics.artifact_loaded.set(time.time())
        log.info("ready: %s student, %s, %d keywords, warm in %.1f s", runtime.precision,
                 ", ".join(f"{n} on {s.encoder.provider}" for n, s in runtime.slots.items()),
                 len(runtime.index), time.perf_counter() - t0)
        if on_ready is not None:
            on_ready({"artifact_dir": str(runtime.root), "artifact_sha256": runtime.manifest.get("artifact_sha256")})

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.phase = Phase.VERIFYING
        root = resolve_artifact(settings)
        pins = FilePins()
        try:
            manifest = await asyncio.to_thread(load_manifest, settings, root, pins)
        except ArtifactError as exc:
            state.phase, state.detail = Phase.FAILED, str(exc)
            state.startup_error = f"Start-up stopped: {exc}"
            raise StartupAborted(str(exc)) from None
        runtime = Runtime(settings, manifest, metrics, root=root)
        state.runtime = runtime
        set_build_info(metrics, runtime, routes_meta.VERSION)
        log.info("artifact %s verified (sha256 %s)", settings.artifact_dir, str(manifest.get("artifact_sha256"))[:12])
        loader = asyncio.create_task(load_in_background(runtime, pins))
        # state.runtime is the one reference to what is served: this frame lives as long as
        # the app, so a local here would keep the first artifact in memory after every reload.
        del runtime, manifest
        if settings.workers > 1:
            # A worker of `hlm serve --workers N` takes connections only once it can answer
            # them (uvicorn listens after this start-up): a replacement or a rolled worker
            # never answers 503 while the others serve (each listens on its own SO_REUSEPORT socket).
            await loader
            if state.phase is Phase.FAILED:
                state.startup_error = f"Start-up stopped: {state.detail}"
                raise StartupAborted(state.detail)
        sighup = _install_sighup(settings, reloader)
        try:
            yield
        finally:
            if sighup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            if state.phase is not Phase.FAILED:
                state.phase = Phase.DRAINING
            metrics.ready.set(0)
            await loader  # a load in progress cannot be interrupted; let it end
            async with reloader.lock:  # a reload in progress ends (refused: shutting down) first
                pass
            await state.runtime.close()
            log.info("shut down: queues drained")

    app = EdgeFirstApp(
        title="HLM keyword retrieval",
        version=routes_meta.VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.hlm = service
    install_handlers(app)
    app.include_router(routes_search.build_router(service))
    app.include_router(routes_meta.build_router(service))
    app.include_router(routes_openai.build_router(service))
    app.include_router(routes_playground.build_router(service))
    if settings.admin_token is not None:  # no token configured: the admin routes do not exist (404)
        app.include_router(routes_admin.build_router(service, reloader))
    # Path templates for the metrics' route label of requests answered before routing (413,
    # 429 at the edge). Included routers do not list their routes in app.routes; the schema does.
    known = {getattr(route, "path", "") for route in app.routes} | set(app.openapi()["paths"])
    app.edge = dict(metrics=metrics, state=state, max_body_bytes=settings.max_body_bytes, known_paths=known,
                    service=service)
    app.cors_origins = settings.cors_origins
    return app


class EdgeFirstApp(FastAPI):
    """FastAPI with the edge (service/middleware.py) outside its whole middleware stack, and CORS,
    when configured, outside the edge (so the edge's own answers, 413 and 429, carry it too).

    Why not ``add_middleware``: user middleware runs inside FastAPI's own layers (its server-error,
    telemetry and body-limit middleware, each wrapping every send), and the edge answers most
    searches itself: profiled, those layers cost a search more than its index lookup on a small
    index (issue #29). The edge keeps its own last-resort 500 for what escapes below it."""

    edge: dict = {}
    cors_origins: list = []

    async def __call__(self, scope, receive, send) -> None:
        # Starlette's own entry, without FastAPI's per-request telemetry and root_path checks
        # (this app sets no root_path): most requests never reach FastAPI's routing anyway.
        scope["app"] = self
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        await self.middleware_stack(scope, receive, send)

    def build_middleware_stack(self):
        app = EdgeMiddleware(super().build_middleware_stack(), **self.edge)
        if self.cors_origins:
            app = CORSMiddleware(app, allow_origins=self.cors_origins, allow_methods=["GET", "POST"],
                                 allow_headers=["Content-Type", "Authorization"])
        return app


def _install_sighup(settings: Settings, reloader: Reloader) -> bool:
    """SIGHUP -> reload in the background (main thread, Unix only)."""
    if not settings.reload_on_sighup or not hasattr(signal, "SIGHUP"):
        return False
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    def on_hup() -> None:
        log.info("SIGHUP: reloading %s", settings.artifact_dir)
        task = loop.create_task(reloader.reload_logged("SIGHUP"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        return False
    return True
