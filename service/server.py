"""Run the app under uvicorn in this process (what ``hlm serve`` does).

One worker process: the encoders' threads and the index live in it. uvicorn finishes
in-flight requests on SIGTERM/SIGINT before the lifespan drains the batch queues.
Returns the process exit code: 0 after a clean shut-down, 2 when start-up was refused.
(After a shut-down on SIGTERM uvicorn re-raises the signal, so the process then ends
the way the signal says, as without a handler.)
"""

from __future__ import annotations

import copy
import logging

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from service.main import create_app
from service.serving import Phase
from service.settings import Settings


def log_config(level: str) -> dict:
    config = copy.deepcopy(LOGGING_CONFIG)
    for name in ("service", "models"):
        config["loggers"][name] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def serve(settings: Settings) -> int:
    server: uvicorn.Server | None = None

    def on_fatal(reason: str) -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level.lower(),
        log_config=log_config(settings.log_level),
        timeout_graceful_shutdown=30,
        server_header=False,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit:  # uvicorn's own exit on a refused start-up; the reason is logged
        pass
    state = app.state.hlm.state
    if not server.started or state.phase is Phase.FAILED:
        logging.getLogger("service").error("hlm serve: not serving (%s).", state.detail or "start-up failed")
        return 2
    return 0
