"""Real loopback servers for the harness tests, each in its own process.

Separate processes matter: a server sharing the generator's interpreter would share its
GIL and event loop, and the test would measure the pair. Where the machine has 2+ cores
the servers are pinned away from the test process's last core.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import pytest

from loadtest.cpus import free_port, launch_server, plan_cpus

PLAN = plan_cpus()
SERVER_CPUS = PLAN.server if PLAN.pinned else None


@contextmanager
def fake_service(serial: bool = False, **delays: float) -> Iterator[str]:
    """Start tests/loadtest/fake_service.py; yield its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "tests.loadtest.fake_service", "--port", str(port)]
    for name, seconds in (delays or {"student": 0.0, "teacher": 0.0}).items():
        cmd += ["--delay", f"{name}={seconds}"]
    if serial:
        cmd.append("--serial")
    url = f"http://127.0.0.1:{port}"
    with launch_server(cmd, ready_url=url + "/readyz", cpus=SERVER_CPUS, ready_timeout_s=60):
        yield url


# Why a fake service here: these tests measure the load generator and its maths, which
# needs a server of known speed; the real `hlm serve` is loaded by test_promcheck.py.
@pytest.fixture
def slow_serial_service() -> Iterator[str]:
    """One worker, 100 ms per request: a saturated server whose queueing we can predict."""
    with fake_service(serial=True, student=0.1) as url:
        yield url


@pytest.fixture(scope="module")
def quick_service() -> Iterator[str]:
    """Student 2 ms, teacher 20 ms, one worker each: the teacher saturates near 50 rps."""
    with fake_service(serial=True, student=0.002, teacher=0.02) as url:
        yield url


# A trivial server, not the service: test_generator.py measures the generator alone.
@pytest.fixture(scope="module")
def trivial_server() -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with launch_server([sys.executable, "-m", "tests.loadtest.trivial_server", str(port)],
                       ready_url=url + "/readyz", cpus=SERVER_CPUS, ready_timeout_s=60):
        yield url
