"""Fixtures for the service tests: the real app in a subprocess (`hlm serve`) on loopback.

Servers are started with the `small_artifact` fixture by default (set HLM_TEST_ARTIFACT to
reuse a built one), with `static_artifact` (the product's static student, tests/conftest.py)
where the product is what is tested, and talked to through HTTP with httpx.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from http_helpers import REPO, Server, free_port, start_server  # noqa: F401 - fixtures and helpers shared with tests/reliability


@pytest.fixture(scope="session")
def server(start_server) -> Server:
    """The shared server: default settings, small artifact, ready."""
    # No time bound on the queues: these tests send bursts to check batching, not admission.
    srv = start_server(shadow_rate=0, max_queue_wait_ms=0, teacher_max_queue_wait_ms=0)
    srv.wait_for("/readyz")
    return srv


@pytest.fixture(scope="session")
def static_server(start_server, static_artifact) -> Server:
    """The shared server on the product's student (the tiny static build); settings as ``server``."""
    srv = start_server(static_artifact, shadow_rate=0, max_queue_wait_ms=0, teacher_max_queue_wait_ms=0)
    srv.wait_for("/readyz")
    return srv
