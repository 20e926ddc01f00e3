"""Fixtures for the service tests: the real app in a subprocess (`hlm serve`) on loopback.

Servers are started with the `small_artifact` fixture (set HLM_TEST_ARTIFACT to reuse a
built one) and talked to through HTTP with httpx.
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
